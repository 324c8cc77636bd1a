"""The expected-error calibration: the held-out ratio, the factor, its bundle record and its use."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from bundles import TINY, make_bundle
from DualDSynthesisLib.imaging.bundle import (
    FORMAT_VERSION,
    BundleError,
    BundleMetadata,
    load_bundle,
    read_metadata,
    save_bundle,
)
from DualDSynthesisLib.imaging.calibration import CalibrationError, ErrorCalibration, error_ratio
from DualDSynthesisLib.inference.engine import SynthesisEngine
from DualDTrainingLib.validation import held_out_calibration


def test_error_ratio_against_hand_values() -> None:
    expected = np.array([[1.0, 3.0], [5.0, 100.0]])
    actual = np.array([[2.0, 2.0], [2.0, 0.0]])
    mask = np.array([[True, True], [True, False]])
    assert error_ratio(expected, actual, mask) == pytest.approx(3.0 / 2.0)  # mean 3 against mean 2
    assert math.isnan(error_ratio(expected, np.zeros_like(actual), mask))  # a perfect prediction says nothing
    with pytest.raises(CalibrationError, match="shapes differ"):
        error_ratio(expected, actual[:1], mask)


def test_factor_is_the_geometric_mean_of_the_inverse_ratios() -> None:
    cal = ErrorCalibration.from_ratios({"a": 4.0, "b": 1.0, "c": float("nan")}, "test")
    assert cal.scale == pytest.approx(0.5)  # 1 / sqrt(4 · 1); the NaN subject is left out
    assert cal.held_out_ratios == {"a": 4.0, "b": 1.0} and cal.calibrated
    assert "×0.5 on 2 held-out subject(s) (test)" in cal.describe() and "2.00" in cal.describe()
    assert not ErrorCalibration().calibrated and "uncalibrated" in ErrorCalibration().describe()
    with pytest.raises(CalibrationError, match="no held-out subject"):
        ErrorCalibration.from_ratios({"a": float("nan")}, "test")


@pytest.mark.parametrize("bad, match", [
    ({"scale": -1.0}, "must be positive"),
    ({"scale": "x"}, "must be a number"),
    ({"held_out_ratios": {"a": 0.0}}, "positive numbers"),
    ({"scale": 1.0, "bins": 3}, "unknown setting"),
])
def test_bad_calibration_metadata_is_refused(bad: dict, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        ErrorCalibration.from_dict(bad)


def test_validation_record_gives_the_calibration() -> None:
    record = {"step": 7, "per_subject": {"a": {"expected_error_ratio": 2.0}, "b": {"expected_error_ratio": 8.0},
                                         "c": {"expected_error_ratio": "nan"}, "d": {"psnr_volume": 20.0}}}
    cal = held_out_calibration(record)
    assert cal.scale == pytest.approx(0.25) and set(cal.held_out_ratios) == {"a", "b"} and "step 7" in cal.evidence
    assert held_out_calibration(None) == ErrorCalibration() == held_out_calibration({"step": 1, "per_subject": {}})


def test_engine_multiplies_the_map_by_the_bundle_factor(tmp_path: Path) -> None:
    arch = dataclasses.replace(TINY, g_error_head=True)
    plain = load_bundle(make_bundle(tmp_path / "plain.safetensors", arch, with_d2=False))
    assert plain.metadata.error_calibration == ErrorCalibration()  # a bundle without the record: uncalibrated
    cal = ErrorCalibration(2.5, "test", {"x": 0.4})
    meta = dataclasses.replace(plain.metadata, error_calibration=cal)
    path = save_bundle(tmp_path / "calibrated.safetensors", plain.generator, None, meta)
    assert read_metadata(path).error_calibration == cal  # round trip through the header
    assert read_metadata(path).format_version == FORMAT_VERSION  # written by this code: its format
    vol = np.zeros((3, 48, 48), np.float32)
    vol[:, 10:38, 12:36] = np.linspace(100, 400, 24, dtype=np.float32)
    heat = {name: sitk.GetArrayFromImage(SynthesisEngine(p, "cpu").run_array(vol).heatmap)
            for name, p in (("plain", tmp_path / "plain.safetensors"), ("calibrated", path))}
    fg = heat["plain"] > 0
    assert fg.any()
    np.testing.assert_allclose(heat["calibrated"][fg], 2.5 * heat["plain"][fg], rtol=1e-5)
    synthetic = [sitk.GetArrayFromImage(SynthesisEngine(p, "cpu").run_array(vol).synthetic)
                 for p in (tmp_path / "plain.safetensors", path)]
    np.testing.assert_array_equal(*synthetic)  # the image itself is untouched


def test_bundle_with_a_broken_calibration_is_refused(tmp_path: Path) -> None:
    meta = read_metadata(make_bundle(tmp_path / "m.safetensors"))
    data = meta.to_dict()
    data["error_calibration"] = {"scale": 0}
    with pytest.raises(BundleError, match="must be positive"):
        BundleMetadata(**data)


@pytest.mark.parametrize("factor", [1.0, 3.0])
def test_duald_evaluate_reports_expected_over_real_mae(factor: float) -> None:
    from DualDSynthesisLib.imaging.preprocess import PreprocessingSpec
    from DualDSynthesisLib.imaging.scoring import comparable
    from DualDSynthesisLib.model.intensity import PercentileScale
    from DualDTrainingLib.evaluation import evaluate_arrays, format_table, summarise

    rng = np.random.default_rng(0)
    spec = PreprocessingSpec(source=PercentileScale(), target=PercentileScale(reference_scale=200.0))
    _, yy, xx = np.mgrid[0:6, 0:24, 0:24]
    head = ((yy - 12) ** 2 + (xx - 12) ** 2) < 9**2
    source = np.where(head, 100 + 20 * np.sin(xx / 3.0), 0).astype(np.float32)
    real = np.where(head, 300 + 50 * np.cos(yy / 4.0), 0).astype(np.float32)
    synthetic = np.where(head, real * 0.6 + rng.normal(0, 20, real.shape), 0).astype(np.float32)
    pred, ref, *_ = comparable(synthetic, real, source, spec)
    honest = np.abs(pred - ref) * 200.0  # the true |error| in target units: expected = real everywhere
    res = evaluate_arrays("s", synthetic, real, source, spec, (1.0, 1.0, 1.0),
                          maps={"expected_error": factor * honest})
    assert res.maps["expected_error"]["mae_ratio"] == pytest.approx(factor, rel=1e-4)
    assert "mae_ratio" not in res.maps["edge"]
    assert f"{factor:.3f}" in format_table(summarise([res])).splitlines()[-2]  # the expected_error row


def test_model_summary_names_the_heatmaps_and_the_calibration(tmp_path: Path) -> None:
    arch = dataclasses.replace(TINY, g_error_head=True)
    error_only = read_metadata(make_bundle(tmp_path / "e.safetensors", arch, with_d2=False))
    assert error_only.heatmap_sources == ("expected_error",)
    assert "(unet, expected error heatmap); expected error uncalibrated" in error_only.summary()
    both = read_metadata(make_bundle(tmp_path / "b.safetensors", arch))
    assert "expected error heatmap and D2 difficulty heatmap" in both.summary()
    d2_only = read_metadata(make_bundle(tmp_path / "d.safetensors"))
    assert d2_only.heatmap_sources == ("d2",) and "calibrat" not in d2_only.summary()
    calibrated = dataclasses.replace(error_only, error_calibration=ErrorCalibration(0.5, "folds", {"a": 2.0}))
    assert "calibrated ×0.5 on 1 held-out subject(s) (folds)" in calibrated.summary()
