"""Shared fixtures: tiny generated data so the core suite needs nothing from ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def toy_pair(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Source slices of blobs on a background, and a target that is a nonlinear function of the
    source plus a 'lesion' whose contrast is inverted (bright in the target, dark in the source)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    src, tgt = [], []
    for _ in range(n):
        cx, cy, r = (torch.rand(3, generator=gen) * torch.tensor([0.4, 0.4, 0.3]) + torch.tensor([-0.2, -0.2, 0.5]))
        head = (((xx - cx * 0.2) ** 2 + (yy - cy * 0.2) ** 2) < r**2).float()
        tissue = head * (0.5 + 0.3 * torch.sin(3 * xx + 2 * yy + cx * 5))
        lx, ly = cx * 0.8, cy * 0.8
        lesion = (((xx - lx) ** 2 + (yy - ly) ** 2) < 0.04).float() * head
        s = tissue * (1 - 0.6 * lesion)
        t = head * (1.0 - tissue) ** 2 + 0.8 * lesion
        src.append(s)
        tgt.append(t)
    return torch.stack(src)[:, None], torch.stack(tgt)[:, None]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the shared/ folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained T1→T2 bundle (``bundles.make_bundle``), one per test module that asks for it."""
    from bundles import make_bundle

    return make_bundle(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fine-tuning tests' site: one generated subject (finetune_helpers.make_site)."""
    from finetune_helpers import make_site

    return make_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fine-tuning tests' parent bundle (finetune_helpers.make_parent)."""
    from finetune_helpers import make_parent

    return make_parent(tmp_path_factory.mktemp("parent"))
