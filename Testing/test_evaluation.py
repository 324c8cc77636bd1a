"""Evaluation numbers against direct computations."""

import numpy as np
import pytest
from DualDSynthesisLib.imaging.preprocess import PreprocessingSpec
from DualDSynthesisLib.imaging.scoring import auroc
from DualDSynthesisLib.model.intensity import HounsfieldWindow, PercentileScale
from DualDSynthesisLib.model.metrics import mae, psnr
from DualDTrainingLib.evaluation import evaluate_arrays, format_table, hu_report, summarise
from sklearn.metrics import roc_auc_score

MRI = PreprocessingSpec(
    source=PercentileScale(), target=PercentileScale(reference_scale=200.0)
)


def test_auroc_matches_sklearn_with_ties(rng: np.random.Generator) -> None:
    scores = rng.integers(0, 5, 500).astype(float)  # many ties
    labels = rng.random(500) < 0.3
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(auroc(scores, np.zeros(500, bool)))


def _phantom(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    _, yy, xx = np.mgrid[0:12, 0:32, 0:32]
    head = ((yy - 16) ** 2 + (xx - 16) ** 2) < 12**2
    source = np.where(head, 100 + 20 * np.sin(xx / 3.0), 0).astype(np.float32)
    real = np.where(head, 300 + 50 * np.cos(yy / 4.0), 0).astype(np.float32)
    labels = np.zeros(real.shape, np.int32)
    labels[4:8, 12:18, 12:18] = 1
    labels[4:8, 18:20, 12:18] = 2
    return source, real, labels, head


def _noisy_synthesis(rng: np.random.Generator) -> tuple:
    """(source, real, labels, head, the real image's scale, synthetic, |error| in normalised units): a synthetic
    image equal to the real one once both are normalised, up to random errors of up to 20 %."""
    source, real, labels, head = _phantom(rng)
    scale_real = MRI.target.fit(real, head).scale
    synthetic = real / scale_real * MRI.target.reference_scale
    synthetic *= 1 + 0.2 * rng.random(synthetic.shape).astype(np.float32)
    err = np.abs(synthetic / MRI.target.reference_scale - real / scale_real)
    return source, real, labels, head, scale_real, synthetic, err


def test_perfect_synthesis_and_a_perfect_heatmap(rng: np.random.Generator) -> None:
    source, real, labels, head, scale_real, synthetic, err = _noisy_synthesis(rng)
    res = evaluate_arrays("s", synthetic, real, source, MRI, (1.0, 1.0, 1.0), heatmap=err / err.max(), labels=labels)
    fg = res.regions["foreground"]
    ref_n, pred_n = np.clip(real / scale_real, 0, 2), np.clip(synthetic / 200.0, 0, 2)
    assert fg["mae"] == pytest.approx(mae(pred_n, ref_n, head), rel=1e-4)
    assert fg["psnr"] == pytest.approx(psnr(pred_n, ref_n, 1.0, head), rel=1e-4)
    assert set(res.regions) == {"whole", "foreground", "tumour", "label 1", "label 2"}
    assert res.regions["label 2"]["voxels"] == int((labels == 2).sum())
    assert res.heatmap_auroc == pytest.approx(1.0, abs=0.02)
    text = format_table(summarise([res, res]))
    assert "foreground" in text and "AUROC" in text


def test_ct_metrics_are_in_hounsfield_units(rng: np.random.Generator) -> None:
    spec = PreprocessingSpec(source=PercentileScale(), target=HounsfieldWindow())
    source, _, _, head = _phantom(rng)
    real = np.where(head, 40.0, -1000.0).astype(np.float32)
    synthetic = real + np.where(head, 10.0, 0.0)
    res = evaluate_arrays("ct", synthetic, real, source, spec, (2.0, 2.0, 2.0))
    assert res.regions["body"]["mae"] == pytest.approx(10.0)
    assert res.heatmap_auroc is None


def test_ct_hu_report_splits_the_body_into_air_soft_tissue_and_bone(rng: np.random.Generator) -> None:
    spec = PreprocessingSpec(source=PercentileScale(), target=HounsfieldWindow())
    source, _, _, head = _phantom(rng)
    real = np.where(head, 40.0, -1000.0).astype(np.float32)
    real[:, 14:18, 14:18] = -800.0  # a sinus: air enclosed by the body
    real[:, 6:9, 10:22] = 1000.0  # bone
    air, bone = real == -800.0, real == 1000.0
    soft = head & ~air & ~bone
    synthetic = real + np.select([air, bone, soft], [100.0, -300.0, -10.0], 0.0).astype(np.float32)
    res = evaluate_arrays("ct", synthetic, real, source, spec, (1.0, 1.0, 1.0))
    for tissue, mask, error in (("air", air, 100.0), ("bone", bone, -300.0), ("soft tissue", soft, -10.0)):
        assert res.regions[tissue]["voxels"] == int(mask.sum())
        assert res.regions[tissue]["mae"] == pytest.approx(abs(error))
        assert res.regions[tissue]["me"] == pytest.approx(error)
    expected_bias = (100.0 * air.sum() - 300.0 * bone.sum() - 10.0 * soft.sum()) / head.sum()
    assert res.regions["body"]["me"] == pytest.approx(expected_bias)
    report = hu_report(summarise([res]))
    assert f"ME (bias) {expected_bias:+.1f}" in report and "bone" in report and "MAE 300.0 HU, ME -300.0 HU" in report


def test_every_map_and_the_edge_baseline_are_scored(rng: np.random.Generator) -> None:
    source, real, _labels, _head, _scale, synthetic, err = _noisy_synthesis(rng)
    maps = {"expected_error": err * 300.0, "d2": 1.0 - err / err.max(), "noise": rng.random(err.shape)}
    res = evaluate_arrays("s", synthetic, real, source, MRI, (1.0, 1.0, 1.0), heatmap=maps["expected_error"],
                          maps=maps)
    assert list(res.maps) == ["expected_error", "d2", "noise", "edge"]
    assert res.maps["expected_error"]["auroc"] == pytest.approx(1.0, abs=0.02)  # units do not matter: ranks
    assert res.maps["expected_error"]["spearman"] == pytest.approx(1.0, abs=0.02)
    assert res.maps["d2"]["auroc"] == pytest.approx(0.0, abs=0.02)  # the reversed map ranks them backwards
    assert res.maps["d2"]["spearman"] == pytest.approx(-1.0, abs=0.02)
    assert abs(res.maps["noise"]["auroc"] - 0.5) < 0.1
    assert res.maps["edge"]["auroc"] == res.gradient_auroc
    summary = summarise([res, res])
    assert summary["map d2"]["spearman"]["n"] == 2
    assert summary["map expected_error"]["auroc"]["mean"] == pytest.approx(res.maps["expected_error"]["auroc"])
    text = format_table(summary)
    assert "Spearman with |error|" in text
    row = next(line for line in text.splitlines() if line.startswith("d2 "))
    assert f"{res.maps['d2']['auroc']:.3f}" in row and f"{res.maps['d2']['spearman']:.3f}" in row
