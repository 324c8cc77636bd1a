"""The detail measures of issue 24 (metrics.py): gradient ratio and lesion contrast ratio, on toy arrays whose
values are worked out by hand."""

import numpy as np
import pytest
from DualDSynthesisLib.model import metrics


def _ramp(slope_j: float, slope_i: float, shape: tuple[int, int, int] = (3, 5, 6)) -> np.ndarray:
    _k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    return (slope_j * j + slope_i * i).astype(np.float32)


def test_gradient_magnitude_of_a_plane_is_its_slope_per_mm() -> None:
    # 3 per voxel along j and 4 along i: |∇| = 5 everywhere (central and one-sided differences are exact on a plane)
    np.testing.assert_allclose(metrics.in_plane_gradient_magnitude(_ramp(3, 4)), 5.0)
    # the same plane on 0.5 mm columns: 4 per voxel along i is 8 per mm, so sqrt(3² + 8²)
    np.testing.assert_allclose(metrics.in_plane_gradient_magnitude(_ramp(3, 4), (1.0, 0.5)), np.sqrt(73.0))


def test_gradient_ratio_hand_values() -> None:
    real, mask = _ramp(0, 2), np.ones((3, 5, 6), bool)
    assert metrics.gradient_ratio(_ramp(0, 1), real, mask) == pytest.approx(0.5)
    assert metrics.gradient_ratio(np.zeros_like(real), real, mask) == 0.0
    # a through-plane offset per slice (G's slice-to-slice jitter) is no in-plane detail
    jitter = _ramp(0, 2) + 10.0 * np.arange(3, dtype=np.float32)[:, None, None]
    assert metrics.gradient_ratio(jitter, real, mask) == pytest.approx(1.0)


def test_gradient_ratio_is_taken_inside_the_mask() -> None:
    # one row [0, 0, 1, 1] (repeated along j): gradients [0, .5, .5, 0]; synthetic [0, .5, .5, 1]: [.5, .25, .25, .5]
    real = np.tile(np.array([0, 0, 1, 1], np.float32), (1, 2, 1))
    synthetic = np.tile(np.array([0, 0.5, 0.5, 1], np.float32), (1, 2, 1))
    everywhere = np.ones_like(real, bool)
    assert metrics.gradient_ratio(synthetic, real, everywhere) == pytest.approx(0.375 / 0.25)
    middle = np.zeros_like(everywhere)
    middle[..., 1:3] = True
    assert metrics.gradient_ratio(synthetic, real, middle) == pytest.approx(0.25 / 0.5)
    with pytest.raises(ValueError, match="no gradient inside the mask"):
        metrics.gradient_ratio(synthetic, np.ones_like(real), everywhere)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.gradient_ratio(synthetic[:, :1], real, everywhere)


def test_lesion_contrast_ratio_hand_values() -> None:
    brain = np.ones((1, 2, 4), bool)
    brain[0, 1, 3] = False  # outside the brain: 100 in both, must not count
    lesion = np.zeros_like(brain)
    lesion[0, 0, 0] = True
    real = np.ones((1, 2, 4), np.float32)
    real[0, 0, 0], real[0, 1, 3] = 3.0, 100.0  # lesion 3 / brain 1 = 3
    synthetic = np.full((1, 2, 4), 2.0, np.float32)
    synthetic[0, 0, 0], synthetic[0, 1, 3] = 4.0, 100.0  # lesion 4 / brain 2 = 2
    assert metrics.lesion_contrast(real, lesion, brain) == pytest.approx(3.0)
    assert metrics.lesion_contrast(synthetic, lesion, brain) == pytest.approx(2.0)
    assert metrics.lesion_contrast_ratio(synthetic, real, lesion, brain) == pytest.approx(2.0 / 3.0)
    assert metrics.lesion_contrast_ratio(real, real, lesion, brain) == pytest.approx(1.0)


def test_lesion_contrast_refuses_undefined_cases() -> None:
    brain = np.ones((1, 2, 2), bool)
    values = np.ones((1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="no voxel outside the lesion"):
        metrics.lesion_contrast(values, brain, brain)
    with pytest.raises(ValueError, match="mask is empty"):
        metrics.lesion_contrast(values, np.zeros_like(brain), brain)
    lesion = np.zeros_like(brain)
    lesion[0, 0, 0] = True
    zero_outside = np.zeros_like(values)
    zero_outside[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="mean 0"):
        metrics.lesion_contrast(zero_outside, lesion, brain)
