"""Shape tables for G, D1 and D2, and their argument / size validation."""

import pytest
import torch
from DualDSynthesisLib.model.networks import ArchitectureConfig, GlobalCritic, LocalDiscriminator, UNetGenerator


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize(
    ("channels", "base", "depth", "h", "w"),
    [
        (1, 8, 4, 64, 64),
        (1, 8, 4, 240, 240),
        (3, 8, 4, 48, 80),
        (5, 4, 3, 40, 24),
        (1, 4, 1, 6, 10),
        (2, 4, 2, 32, 16),
    ],
)
def test_generator_shapes(channels: int, base: int, depth: int, h: int, w: int) -> None:
    g = UNetGenerator(channels, base, depth).eval()
    assert g(torch.zeros(2, channels, h, w)).shape == (2, 1, h, w)


@pytest.mark.parametrize(("h", "w"), [(16, 16), (16, 24), (64, 64), (240, 240), (100, 37)])
@pytest.mark.parametrize("norm", ["batch", "layer", "instance", "none"])
def test_global_critic_shapes(h: int, w: int, norm: str) -> None:
    d1 = GlobalCritic(1, norm).eval()
    assert d1(torch.zeros(3, 1, h, w)).shape == (3, 1)


@pytest.mark.parametrize(("h", "w", "oh", "ow"), [(16, 16, 2, 2), (64, 64, 8, 8), (240, 240, 30, 30), (64, 32, 8, 4)])
def test_local_discriminator_shapes(h: int, w: int, oh: int, ow: int) -> None:
    d2 = LocalDiscriminator(1, 8).eval()
    assert d2(torch.zeros(2, 1, h, w)).shape == (2, 1, oh, ow)


def test_critic_has_the_papers_layout() -> None:
    d1 = GlobalCritic()
    convs = [m.out_channels for m in d1.features if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in d1.features if isinstance(m, torch.nn.MaxPool2d)]
    fcs = [(m.in_features, m.out_features) for m in d1.classifier if isinstance(m, torch.nn.Linear)]
    assert convs == [32, 64, 128, 256]
    assert len(pools) == 3
    assert [o for _, o in fcs] == [512, 128, 1]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in GlobalCritic(norm="batch").features) == 4


def test_local_discriminator_downsamples_three_times() -> None:
    strided = [m for m in LocalDiscriminator().net if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 3


@pytest.mark.parametrize(
    ("net", "x", "match"),
    [
        (UNetGenerator(1, 4, 4), torch.zeros(1, 1, 40, 40), "divisible by 16"),
        (UNetGenerator(1, 4, 4), torch.zeros(1, 1, 8, 8), "at least 16"),
        (UNetGenerator(2, 4, 2), torch.zeros(1, 1, 16, 16), "2 input channel"),
        (UNetGenerator(1, 4, 2), torch.zeros(1, 16, 16), "batch, channels"),
        (GlobalCritic(), torch.zeros(1, 1, 8, 16), "at least 16"),
        (LocalDiscriminator(1, 4), torch.zeros(1, 1, 15, 15), "at least 16"),
    ],
)
def test_sizes_the_nets_cannot_take(net: torch.nn.Module, x: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        net(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_width": 0}, "base_width"),
        ({"depth": 0}, "depth"),
        ({"depth": 9}, "at most 7"),
        ({"in_channels": -1}, "in_channels"),
        ({"norm": "group"}, "unknown normalisation"),
    ],
)
def test_generator_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNetGenerator(**kwargs)


def test_architecture_config_round_trip_and_validation() -> None:
    cfg = ArchitectureConfig(in_channels=3, g_base_width=8, g_depth=3, d2_base_width=8)
    assert ArchitectureConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.size_multiple == 8
    with pytest.raises(ValueError, match="unknown architecture setting"):
        ArchitectureConfig.from_dict({**cfg.to_dict(), "dropout": 0.5})
    with pytest.raises(ValueError, match="d1_norm"):
        ArchitectureConfig(d1_norm="spectral")
