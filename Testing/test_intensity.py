"""The intensity mappings' registry and the z-score scheme (model.intensity), on numpy and on torch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from DualDSynthesisLib.imaging.device_prepare import TORCH_OPS
from DualDSynthesisLib.model.intensity import (
    SOURCE_NORMS,
    ForegroundRank,
    HounsfieldWindow,
    IntensityMapping,
    PeakScale,
    PercentileScale,
    PreprocessError,
    ScaleParams,
    ZScore,
    ZScoreParams,
    foreground_mask,
    mapping_class,
    source_mapping,
)

ALL = [PercentileScale(99.5, (0.0, 2.0), 812.5), PeakScale(50.0, (0.0, 3.0)), HounsfieldWindow(),
       ZScore(), ZScore(4.0, (0.0, 2.5), ZScoreParams(250.0, 110.0, 20.0)), ForegroundRank(), ForegroundRank(5, 0.2)]


def _toy() -> np.ndarray:
    """Zeros around a 2×4×4 block holding 100, 200, 300 and 400 (8 voxels each)."""
    arr = np.zeros((4, 8, 8), np.float32)
    arr[1:3, 2:6, 2:6] = np.array([100.0, 200.0, 300.0, 400.0], np.float32)[None, :, None]
    return arr


@pytest.mark.parametrize("mapping", ALL, ids=lambda m: m.kind)
def test_every_kind_round_trips_through_json(mapping: IntensityMapping) -> None:
    d = json.loads(json.dumps(mapping.to_dict()))
    assert d["kind"] == mapping.kind and mapping_class(mapping.kind) is type(mapping)
    assert IntensityMapping.from_dict(d) == mapping


def test_unknown_kinds_settings_and_parameters_are_refused_in_one_sentence() -> None:
    with pytest.raises(PreprocessError, match=r"^unknown intensity kind 'pet'; expected one of .*mri_zscore"):
        IntensityMapping.from_dict({"kind": "pet"})
    with pytest.raises(PreprocessError, match=r"unknown setting\(s\) percentile;"):
        IntensityMapping.from_dict({"kind": "mri_zscore", "percentile": 99.5})
    with pytest.raises(PreprocessError, match="mean, std and threshold"):
        IntensityMapping.from_dict({"kind": "mri_zscore", "reference": {"mean": 1.0, "std": 2.0}})
    with pytest.raises(PreprocessError, match="standard deviation must be a positive finite number"):
        ZScoreParams(1.0, 0.0, 0.0)
    with pytest.raises(PreprocessError, match="must start at 0"):
        ZScore(clip=(0.5, 3.0))
    with pytest.raises(PreprocessError, match="needs ZScoreParams parameters, got ScaleParams"):
        ZScore().forward(_toy(), ScaleParams(3.0))
    with pytest.raises(PreprocessError, match="no reference"):
        ZScore().reference_params  # noqa: B018


def test_zscore_by_hand_on_a_toy_volume() -> None:
    arr = _toy()
    z = source_mapping("zscore")
    assert z == ZScore(3.0, (0.0, 3.0))
    fg = z.foreground(arr)
    assert fg.sum() == 32 and np.array_equal(fg, foreground_mask(arr, "mri_zscore"))
    p = z.fit(arr, fg)
    std = math.sqrt(((150**2) + (50**2)) / 2)  # population std of 100, 200, 300, 400
    # threshold: 5 % of the 99th percentile of the positive voxels (400)
    assert (p.mean, p.std, p.threshold) == pytest.approx((250.0, std, 20.0))
    out = z.forward(arr, p)
    assert out.dtype == np.float32
    for raw in (100.0, 200.0, 300.0, 400.0):
        assert out[arr == raw] == pytest.approx(1 + (raw - 250.0) / (3 * std), abs=1e-6)
    assert np.all(out[arr == 0] == 0.0)  # background exactly 0 (an affine map alone gives 1 − 250/(3·std) > 0)
    assert 1 - 250.0 / (3 * std) > 0.2
    assert z.units_per_normalised(p) == pytest.approx(3 * std)
    np.testing.assert_allclose(z.inverse(out, p), arr, rtol=1e-6, atol=1e-4)  # foreground back, background 0


def test_zscore_clips_and_keeps_the_background_at_zero_through_the_inverse() -> None:
    z, p = ZScore(), ZScoreParams(500.0, 100.0, 40.0)
    raw = np.array([0.0, 30.0, 50.0, 500.0, 800.0, 1400.0, 5000.0], np.float32)
    out = z.forward(raw, p)
    # 30 ≤ threshold; 50 < mean − 3 std; 1400 > mean + 6 std
    np.testing.assert_allclose(out, [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 3.0], atol=1e-6)
    back = z.inverse(np.float32(2.0), p)  # a scalar, as the engine's blank response
    assert float(back) == pytest.approx(800.0) and float(z.inverse(np.float32(-0.3), p)) == 0.0
    np.testing.assert_allclose(z.inverse(out, p), [0, 0, 0, 500, 800, 1100, 1100], atol=1e-3)  # 3 = mean + 6 std


def test_zscore_reference_is_the_median_of_the_training_targets() -> None:
    fitted = [ZScoreParams(100.0, 10.0, 5.0), ZScoreParams(300.0, 30.0, 15.0), ZScoreParams(200.0, 50.0, 9.0)]
    ref = ZScore().with_reference(fitted)
    assert ref.reference_params == ZScoreParams(200.0, 30.0, 9.0)
    scales = [ScaleParams(4.0), ScaleParams(1.0), ScaleParams(2.0)]
    assert PercentileScale().with_reference(scales).reference_scale == 2.0
    assert HounsfieldWindow().with_reference([]) == HounsfieldWindow()


@pytest.mark.parametrize("mapping", [m for m in ALL if m.kind != "ct_hu"] + [HounsfieldWindow()],
                         ids=lambda m: m.kind)
def test_the_same_methods_run_on_tensors(mapping: IntensityMapping) -> None:
    """One definition for both backends: foreground, fit and forward on a tensor equal numpy's."""
    rng = np.random.default_rng(0)
    arr = _toy() * rng.uniform(0.9, 1.1, _toy().shape).astype(np.float32)
    if mapping.kind == "ct_hu":
        arr = arr * 4 - 1000
    t = torch.from_numpy(arr.copy())
    fg = mapping.foreground(arr)
    assert np.array_equal(mapping.foreground(t, TORCH_OPS), fg)
    p_np, p_t = mapping.fit(arr, fg), mapping.fit(t, torch.from_numpy(fg), TORCH_OPS)
    for name, value in vars(p_np).items():
        assert getattr(p_t, name) == pytest.approx(value, rel=1e-6)
    out = mapping.forward(t, p_np)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), mapping.forward(arr, p_np), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mapping.inverse(out, p_np).numpy(), mapping.inverse(out.numpy(), p_np), rtol=1e-6)


def test_source_norm_names_keep_their_mappings() -> None:
    assert list(SOURCE_NORMS) == ["p99.5", "median", "peak", "zscore", "rank"]
    assert SOURCE_NORMS["p99.5"].to_dict() == {"kind": "mri_percentile", "percentile": 99.5, "clip": [0.0, 2.0],
                                               "reference_scale": None}
    assert SOURCE_NORMS["median"].to_dict() == {"kind": "mri_percentile", "percentile": 50.0, "clip": [0.0, 4.0],
                                                "reference_scale": None}
    assert SOURCE_NORMS["peak"].to_dict() == {"kind": "mri_peak", "percentile": 50.0, "clip": [0.0, 3.0],
                                              "reference_scale": None}


def test_rank_by_hand_on_a_toy_volume() -> None:
    """Five landmarks (0/25/50/75/100th percentiles of 8×100, 8×200, 8×300, 8×400: 100, 175, 250, 325, 400)
    map to 0.1, 0.325, 0.55, 0.775, 1; values between them linearly; background exactly 0."""
    m = ForegroundRank(points=5)
    arr = _toy()
    params = m.fit(arr)
    np.testing.assert_allclose(params.landmarks, [100, 175, 250, 325, 400], atol=1e-2)
    y = m.forward(arr, params)
    block = y[1, 2:6, 2]
    np.testing.assert_allclose(block, [0.1, 0.325 + 25 / 75 * 0.225, 0.55 + 50 / 75 * 0.225, 1.0], atol=1e-5)
    assert (y[arr == 0] == 0).all()
    np.testing.assert_allclose(m.inverse(y, params)[arr > 0], arr[arr > 0], rtol=1e-4)
    assert (m.inverse(y, params)[arr == 0] == 0).all()


def test_rank_is_nearly_blind_to_a_monotone_contrast_change() -> None:
    rng = np.random.default_rng(0)
    arr = np.zeros((6, 40, 40), np.float32)
    arr[:, 8:32, 8:32] = rng.gamma(4.0, 100.0, (6, 24, 24))
    m = ForegroundRank()
    y = m.forward(arr, m.fit(arr))
    for other in (arr**0.5 * 30.0, arr**2 / 500.0, arr * 7.0):  # another scanner's gamma, contrast, gain
        z = m.forward(other, m.fit(other))
        fg = (y > 0) & (z > 0)
        # not exactly 0: the foreground threshold (5 % of the robust maximum) is not monotone-invariant
        assert np.abs(z[fg] - y[fg]).mean() < 0.03
    scaled = PercentileScale(99.5)
    assert np.abs(scaled.forward(arr**2 / 500.0, scaled.fit(arr**2 / 500.0))[fg]
                  - scaled.forward(arr, scaled.fit(arr))[fg]).mean() > 0.1  # a scale mapping is not


def test_rank_is_a_source_normalisation_only() -> None:
    m = ForegroundRank()
    with pytest.raises(PreprocessError, match="source normalisation"):
        m.reference_params  # noqa: B018
    with pytest.raises(PreprocessError, match="source normalisation"):
        m.with_reference([m.fit(_toy())])
    with pytest.raises(PreprocessError, match="strictly increasing"):
        IntensityMapping.from_dict({"kind": "mri_rank"}).forward(_toy(), type(m.fit(_toy()))((1.0, 1.0), 0.0))
    with pytest.raises(PreprocessError, match="unknown setting"):
        IntensityMapping.from_dict({"kind": "mri_rank", "percentile": 3})


def test_normalised_output_is_what_the_written_volume_holds() -> None:
    """Validation and LOSO score a prediction as the product writes it: the target mapping's inverse clips a
    linear output's overshoot (−31 on an unseen site once), so scores see the clipped values."""
    m = PercentileScale(99.5, (0.0, 2.0), 812.5)
    got = m.normalised_output(np.array([-31.0, -0.1, 0.0, 0.5, 1.5, 2.0, 7.0], np.float32), ScaleParams(300.0))
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, 0.5, 1.5, 2.0, 2.0], rtol=1e-6)
    hu = HounsfieldWindow()
    got = hu.normalised_output(np.array([-0.4, 0.25, 1.3], np.float32), hu.reference_params)
    np.testing.assert_allclose(got, [0.0, 0.25, 1.0], rtol=1e-6)


def test_validation_scores_the_clipped_prediction() -> None:
    from DualDSynthesisLib.imaging.preprocess import Grid, RestoreContext
    from DualDTrainingLib.dataset import PreparedSubject
    from DualDTrainingLib.validation import validate

    class Overshoot(torch.nn.Module):  # a generator whose linear output lies far below the valid range
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x[:, :1], -30.0)

    k, h, w = 4, 16, 16
    target = np.zeros((k, h, w), np.float32)
    target[:, 4:12, 4:12] = 0.5
    grid = Grid((w, h, k), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    subject = PreparedSubject("toy", target.copy(), target, target > 0, None, ScaleParams(100.0),
                              ScaleParams(300.0), RestoreContext(grid, "LPS", "float", grid, grid, (False,) * 3,
                                                                 (0, 1, 2), (0, h, 0, w), (k, h, w)))
    mapping = PercentileScale(99.5, (0.0, 2.0), 300.0)
    raw = validate(Overshoot(), None, [subject], torch.device("cpu"), 2)[0]
    clipped = validate(Overshoot(), None, [subject], torch.device("cpu"), 2, target=mapping)[0]
    assert raw["mae_foreground"] == pytest.approx(30.5)
    assert clipped["mae_foreground"] == pytest.approx(0.5)  # the written volume holds 0 there, not −30
