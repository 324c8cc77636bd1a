"""The region QA table the DualDSynthesis logic builds (slicer-core, real MRML): its numbers equal a direct numpy
computation and duald-evaluate's, for MRI and for CT (HU, body row, labelmap regions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from bundles import spec as bundle_spec  # noqa: E402
from DualDSynthesisLib.model.intensity import foreground_mask  # noqa: E402
from DualDSynthesisLib.model.metrics import ssim  # noqa: E402
from DualDSynthesisLib.scene import mrml_io, qa  # noqa: E402
from DualDSynthesisLib.scene.logic import QAOptions  # noqa: E402
from DualDTrainingLib.evaluation import evaluate_arrays  # noqa: E402
from test_slicer_logic import (  # noqa: E402
    SHAPE,
    TUMOUR,
    FakeEngine,
    _column,
    _segmentation_from_labels,
    loaded_scene,
    source_array,
    source_image,
)


@pytest.fixture
def loaded():
    return loaded_scene()


def test_qa_table_matches_direct_numpy(loaded):
    app, logic, node = loaded
    labels = np.zeros(SHAPE, np.int16)
    labels[TUMOUR] = 1
    labels[2:5, 25:32, 10:20] = 2
    segmentation, _ = _segmentation_from_labels(app.scene, labels, source_image(), ["tumour", "oedema"])
    rng = np.random.default_rng(1)
    source = source_array()
    reference = FakeEngine.synthetic_array(source) + rng.normal(0, 3, SHAPE).astype(np.float32)
    reference_image = sitk.GetImageFromArray(reference)
    reference_image.CopyInformation(source_image())
    reference_node = mrml_io.new_volume_node_from_image(app.scene, reference_image, "real T2")

    options = QAOptions(region_node=segmentation, reference_node=reference_node)
    out = logic.synthesize(node, FakeEngine(), qa_options=options)

    table = out.qa_table_node
    assert _column(table, qa.COLUMN_NAME) == ["foreground", "tumour", "oedema"]
    spec = FakeEngine().spec
    raw_synthetic = FakeEngine.synthetic_array(source)
    heat = FakeEngine.heatmap_array(SHAPE)
    # duald-evaluate's units: the synthetic ÷ the bundle's reference scale, the real T2 ÷ its own 99.5th
    # percentile in the source's foreground, both clipped to [0, 2]; PSNR over a data range of 1
    fg = foreground_mask(source, "mri_percentile")
    scale = float(np.percentile(reference[fg & (reference > 0)], 99.5))
    synthetic = np.clip(raw_synthetic / spec.target.reference_scale, 0, 2)
    normalised_reference = np.clip(reference / scale, 0, 2)
    data_range = 1.0
    masks = [fg, labels == 1, labels == 2]
    for row, mask in enumerate(masks):
        diff = synthetic[mask].astype(np.float64) - normalised_reference[mask]
        assert _column(table, qa.COLUMN_VOXELS)[row] == mask.sum()
        assert _column(table, "Mean difficulty (0-1)")[row] == pytest.approx(heat[mask].mean(), rel=1e-6)
        assert _column(table, "P95 difficulty (0-1)")[row] == pytest.approx(np.percentile(heat[mask], 95), rel=1e-6)
        assert _column(table, "MAE (normalised)")[row] == pytest.approx(np.abs(diff).mean(), rel=1e-5)
        psnr = 10 * math.log10(data_range**2 / (diff**2).mean())
        assert _column(table, qa.COLUMN_PSNR)[row] == pytest.approx(psnr, rel=1e-5)
        assert _column(table, qa.COLUMN_SSIM)[row] == pytest.approx(
            ssim(synthetic, normalised_reference, data_range, mask), rel=1e-4)
    # the same volumes give duald-evaluate's numbers (one definition of foreground, units and range)
    evaluated = evaluate_arrays("s", raw_synthetic, reference, source, spec, (1.0, 1.0, 1.0), labels=labels)
    assert _column(table, qa.COLUMN_PSNR)[0] == pytest.approx(evaluated.regions["foreground"]["psnr"], rel=1e-6)
    assert _column(table, qa.COLUMN_PSNR)[1] == pytest.approx(evaluated.regions["label 1"]["psnr"], rel=1e-6)
    assert _column(table, qa.COLUMN_SSIM)[0] == pytest.approx(evaluated.regions["foreground"]["ssim"], rel=1e-6)
    np.testing.assert_allclose(
        mrml_io.array_from_volume_node(out.difference_node), np.abs(raw_synthetic - reference), atol=1e-4
    )


def test_qa_for_ct_reports_hu_mae_in_body_and_labelmap_regions(loaded):
    app, logic, node = loaded
    labels = np.zeros(SHAPE, np.int16)
    labels[TUMOUR] = 7
    _, labelmap = _segmentation_from_labels(app.scene, labels, source_image(), ["x"])
    source = source_array()
    reference = np.where(source > 0, 40.0, -1000.0).astype(np.float32)  # HU: body vs air
    reference_image = sitk.GetImageFromArray(reference)
    reference_image.CopyInformation(source_image())
    reference_node = mrml_io.new_volume_node_from_image(app.scene, reference_image, "real CT")

    out = logic.synthesize(
        node,
        FakeEngine(spec=bundle_spec("ct")),
        qa_options=QAOptions(region_node=labelmap, reference_node=reference_node, target_modality="CT"),
    )
    names = _column(out.qa_table_node, qa.COLUMN_NAME)
    assert names[:2] == ["foreground", qa.BODY_ROW] and len(names) == 3
    body = reference > -500
    synthetic = FakeEngine.synthetic_array(source)
    assert _column(out.qa_table_node, "MAE (HU)")[1] == pytest.approx(
        np.abs(synthetic[body] - reference[body]).mean(), rel=1e-5
    )
    assert _column(out.qa_table_node, "MAE (HU)")[2] == pytest.approx(
        np.abs(synthetic[labels == 7] - reference[labels == 7]).mean(), rel=1e-5
    )
