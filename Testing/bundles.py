"""Tiny random model bundles for tests and benchmarks (no training: weights are seeded random)."""

from __future__ import annotations

from pathlib import Path

import torch
from DualDSynthesisLib.imaging.bundle import BundleMetadata, save_bundle
from DualDSynthesisLib.imaging.preprocess import PreprocessingSpec, source_mapping
from DualDSynthesisLib.model.intensity import HounsfieldWindow, PercentileScale
from DualDSynthesisLib.model.networks import ArchitectureConfig

TINY = ArchitectureConfig(g_base_width=4, g_depth=2, d2_base_width=4)
T2_REFERENCE_SCALE = 800.0


def spec(target: str = "t2", spacing: tuple[float, float] | None = (1.0, 1.0), size_multiple: int = 16,
         min_size: int = 32, source_norm: str = "p99.5", context_slices: int = 0) -> PreprocessingSpec:
    target_map = (HounsfieldWindow() if target == "ct"
                  else PercentileScale(reference_scale=T2_REFERENCE_SCALE))
    return PreprocessingSpec(source=source_mapping(source_norm), target=target_map, spacing=spacing,
                             size_multiple=size_multiple, min_size=min_size, context_slices=context_slices)


def make_bundle(
    path: str | Path,
    arch: ArchitectureConfig = TINY,
    *,
    with_d2: bool = True,
    constant_d2_logit: float | None = None,
    source: str = "t1",
    target: str = "t2",
    spacing: tuple[float, float] | None = (1.0, 1.0),
    seed: int = 0,
    source_norm: str = "p99.5",
    context_slices: int = 0,
) -> Path:
    """Save a random-weight bundle. ``constant_d2_logit``: D2's last conv outputs exactly that logit
    everywhere (weights 0, bias = logit), so the heatmap must be ``1 − sigmoid(logit)`` everywhere."""
    torch.manual_seed(seed)
    g = arch.generator()
    d2 = arch.local_discriminator() if with_d2 else None
    with torch.no_grad():
        g.head.bias.fill_(0.3)  # a visible, non-zero output level
        if d2 is not None and constant_d2_logit is not None:
            last = d2.net[-1]
            last.weight.zero_()
            last.bias.fill_(constant_d2_logit)
    meta = BundleMetadata(
        architecture=arch.to_dict(),
        variant="dual_attention" if with_d2 else "unet",
        source_modality=source,
        target_modality=target,
        preprocessing=spec(target, spacing, max(16, arch.size_multiple), source_norm=source_norm,
                           context_slices=context_slices).to_dict(),
        has_local_discriminator=with_d2,
        provenance={"test": True, "seed": seed},
    )
    return save_bundle(path, g.eval(), None if d2 is None else d2.eval(), meta, overwrite=True)
