"""The training step: which networks each variant updates, and that training learns."""

import pytest
import torch
from conftest import toy_pair
from DualDSynthesisLib.networks import ArchitectureConfig
from DualDTrainingLib.step import DualDTrainer, NonFiniteLossError, TrainingConfig, Variant

ARCH = ArchitectureConfig(g_base_width=8, g_depth=2, d2_base_width=8)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize(
    ("variant", "d1_moves", "d2_moves"),
    [
        ("unet", False, False),
        ("global", True, False),
        ("local", False, True),
        ("dual", True, True),
        ("dual_attention", True, True),
    ],
)
def test_each_variant_updates_only_its_networks(variant: str, d1_moves: bool, d2_moves: bool) -> None:
    torch.manual_seed(0)
    trainer = DualDTrainer(ARCH, TrainingConfig(variant=variant))
    g0, d10, d20 = _snapshot(trainer.generator), _snapshot(trainer.critic), _snapshot(trainer.local)
    src, tgt = toy_pair(4, 32)
    for _ in range(2):
        terms = trainer.step(src, tgt)
    assert _changed(g0, trainer.generator)
    assert _changed(d10, trainer.critic) is d1_moves
    assert _changed(d20, trainer.local) is d2_moves
    assert ("d1" in terms) is d1_moves and ("d2" in terms) is d2_moves
    assert trainer.step_count == 2


def test_dual_attention_lowers_l1_in_50_steps() -> None:
    torch.manual_seed(0)
    src, tgt = toy_pair(8, 32, seed=1)
    trainer = DualDTrainer(ARCH, TrainingConfig(variant="dual_attention", lr_g=2e-3))
    with torch.no_grad():
        trainer.generator.eval()
        before = (trainer.generator(src) - tgt).abs().mean().item()
    for _ in range(50):
        trainer.step(src, tgt)
    with torch.no_grad():
        trainer.generator.eval()
        after = (trainer.generator(src) - tgt).abs().mean().item()
    assert after < 0.5 * before, (before, after)


def test_n_critic_runs_several_critic_updates() -> None:
    calls = []
    trainer = DualDTrainer(ARCH, TrainingConfig(variant="global", n_critic=3))
    trainer.critic.register_forward_hook(lambda *a: calls.append(1))
    trainer.step(*toy_pair(2, 32))
    # per critic update: fake, real, interpolate (3 forwards); plus one for G's adversarial term
    assert len(calls) == 3 * 3 + 1


def test_non_finite_loss_stops_before_the_update() -> None:
    trainer = DualDTrainer(ARCH, TrainingConfig(variant="unet"))
    g0 = _snapshot(trainer.generator)
    src, tgt = toy_pair(2, 32)
    tgt[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="loss term G became nan at step 1"):
        trainer.step(src, tgt)
    params = dict(trainer.generator.named_parameters())
    assert all(torch.equal(g0[k], p) for k, p in params.items())


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown variant 'triple'"):
        TrainingConfig(variant="triple")
    with pytest.raises(ValueError, match="n_critic"):
        TrainingConfig(n_critic=0)
    cfg = TrainingConfig(variant="local", beta=2.0)
    assert TrainingConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown training setting.*lambda3"):  # refused, never dropped
        TrainingConfig.from_dict({**cfg.to_dict(), "lambda3": 1.0})
    assert cfg.variant is Variant.LOCAL
