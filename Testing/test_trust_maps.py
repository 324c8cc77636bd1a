"""The trust maps: per-pixel D2, error-aware D2 labels, the expected-error head, and the scores that
decide between maps (AUROC for the worst errors, Spearman correlation)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bundles import TINY, make_bundle
from conftest import toy_pair
from DualDSynthesisLib.imaging.preprocess import foreground_mask
from DualDSynthesisLib.imaging.scoring import auroc, map_scores, spearman
from DualDSynthesisLib.inference.engine import SynthesisEngine
from DualDSynthesisLib.model import losses
from DualDSynthesisLib.model.networks import ArchitectureConfig, LocalDiscriminator
from DualDTrainingLib.step import DualDTrainer, TrainingConfig


@pytest.mark.parametrize(
    ("head", "size", "expected"),
    [("patch", (64, 48), (2, 1, 8, 6)), ("pixel", (64, 48), (2, 1, 64, 48)), ("pixel", (32, 40), (2, 1, 32, 40))],
)
def test_d2_output_shapes(head: str, size: tuple[int, int], expected: tuple[int, ...]) -> None:
    d2 = LocalDiscriminator(1, 8, "batch", head)
    assert tuple(d2(torch.rand(2, 1, *size)).shape) == expected
    assert d2.downsampling == (8 if head == "patch" else 1)
    assert d2.receptive_field >= 54


def test_pixel_d2_needs_sizes_divisible_by_eight() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        LocalDiscriminator(1, 8, "batch", "pixel")(torch.rand(1, 1, 36, 36))


def test_error_aware_labels_equal_the_hand_value() -> None:
    real = torch.zeros(1, 1, 4, 4)
    fake = torch.zeros(1, 1, 4, 4)
    fake[0, 0, :2, :2] = 0.05  # top-left cell: mean |error| 0.05
    fake[0, 0, 2:, 2:] = 0.30  # bottom-right cell: beyond tau
    labels = losses.error_aware_labels(fake, real, (2, 2), tau=0.1)
    # 1 − clip(mean |error| / tau, 0, 1) per 2×2 cell
    torch.testing.assert_close(labels, torch.tensor([[[[0.5, 1.0], [1.0, 0.0]]]]))
    assert not labels.requires_grad


def test_laplace_nll_optimum_is_the_mean_absolute_error() -> None:
    # for a fixed prediction, the scale minimising |y − μ|/b + log b is b = |y − μ|
    real, pred = torch.tensor([[[[0.3]]]]), torch.tensor([[[[0.1]]]])
    scales = torch.linspace(-4, 0, 401)
    nll = torch.stack([losses.laplace_nll(pred, s.view(1, 1, 1, 1), real) for s in scales])
    best = float(torch.exp(scales[int(nll.argmin())]))
    assert math.isclose(best, 0.2, rel_tol=0.02)


@pytest.mark.slow
def test_expected_error_head_learns_the_true_error_on_a_toy_problem() -> None:
    """Train G (with its error head) on the toy pair; its expected error must track the real |error|: its
    mean within the spread that seeds and CPU kernels give, and clearly higher where the errors are."""
    torch.manual_seed(0)
    arch = ArchitectureConfig(g_base_width=8, g_depth=2, d2_base_width=4, g_error_head=True)
    trainer = DualDTrainer(arch, TrainingConfig(variant="unet", lr_g=2e-3, error_weight=1.0), "cpu")
    src, tgt = toy_pair(48, size=32, seed=1)
    for i in range(150):
        j = (i * 8) % 48
        trainer.step(src[j : j + 8], tgt[j : j + 8])
    trainer.generator.eval()
    with torch.no_grad():
        out = trainer.generator(src[:16])
    err = (out[:, :1] - tgt[:16]).abs()
    expected = losses.expected_error(out[:, 1:])
    ratio = float(expected.mean() / err.mean())
    # Measured (issue 21) over seeds 0-4 on this AVX512 CPU's kernels and on torch's (ATEN_CPU_CAPABILITY)
    # and oneDNN's (ONEDNN_MAX_CPU_ISA) AVX2 and default/SSE4.1 ones, 1 and 2 threads: ratio 1.16-2.42
    # (the head overestimates: it learned the larger errors of earlier steps), seed 0 alone 1.69-1.90;
    # a user's AVX2 EPYC gave 2.04 against the old bound 2. A head that learned nothing (error weight 0)
    # gives 5.2-5.9. The bound 3.5 sits midway (geometric) between: 1.45x above the worst trained ratio.
    assert 0.5 < ratio < 3.5, ratio
    worst = err >= err.quantile(0.9)
    # the same runs: AUROC 0.867-0.995 trained, 0.30-0.68 for the head that learned nothing; 0.77 between
    assert auroc(expected.numpy(), worst.numpy()) > 0.77


def test_auroc_and_spearman_against_hand_values() -> None:
    # scores 1..4, positives {3, 4} → every positive outranks every negative
    assert auroc(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 0, 1, 1], bool)) == 1.0
    # one swap: positives {2, 4} → pairs (2>1 yes, 2>3 no, 4>1, 4>3) = 3/4
    assert auroc(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 0, 1], bool)) == 0.75
    # ties count one half
    assert auroc(np.array([1.0, 1.0]), np.array([0, 1], bool)) == 0.5
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ranks (1, 3, 2) vs (1, 2, 3): 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/24 = 0.5
    assert spearman(np.array([1.0, 3.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.5)
    assert math.isnan(spearman(np.ones(4), np.arange(4.0)))


def test_map_scores_rank_a_perfect_map_first() -> None:
    rng = np.random.default_rng(0)
    err = rng.random((4, 8, 8))
    fg = np.ones_like(err, bool)
    scores = map_scores({"perfect": err, "noise": rng.random(err.shape)}, err, fg)
    assert scores["perfect"]["auroc"] == 1.0 and scores["perfect"]["spearman"] == pytest.approx(1.0)
    assert abs(scores["noise"]["auroc"] - 0.5) < 0.15


def test_expected_error_heatmap_is_zero_outside_the_foreground_and_in_target_units(tmp_path: Path) -> None:
    arch = ArchitectureConfig(**{**TINY.to_dict(), "g_error_head": True})
    engine = SynthesisEngine(make_bundle(tmp_path / "err.safetensors", arch, with_d2=False), "cpu")
    assert engine.heatmap_sources == ("expected_error",) and "expected absolute error" in engine.heatmap_units
    vol = np.zeros((4, 48, 48), np.float32)
    vol[:, 10:38, 12:36] = np.linspace(100, 400, 24, dtype=np.float32)
    result = engine.run_array(vol)
    heat = sitk.GetArrayFromImage(result.heatmap)
    fg = foreground_mask(vol, "mri_percentile")
    assert result.heatmap_source == "expected_error"
    assert (heat[~fg] == 0).all() and (heat[fg] > 0).all()
    with pytest.raises(Exception, match="no d2 map"):
        SynthesisEngine(make_bundle(tmp_path / "e2.safetensors", arch, with_d2=False), "cpu", heatmap_source="d2")
