"""The heatmap in Slicer (slicer-core, no Qt): which map a node holds, its colour legend and window, the QA
table's expected MAE per segment without a reference image, and the logic passing --heatmap-source through."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from bundles import spec as bundle_spec  # noqa: E402
from DualDSynthesisLib.core.resources import MODELS_DIR  # noqa: E402
from DualDSynthesisLib.imaging import heatmap_kinds  # noqa: E402
from DualDSynthesisLib.imaging.bundle import read_metadata  # noqa: E402
from DualDSynthesisLib.imaging.calibration import ErrorCalibration  # noqa: E402
from DualDSynthesisLib.imaging.heatmap_file import SOURCE_ATTRIBUTE, UNITS_ATTRIBUTE  # noqa: E402
from DualDSynthesisLib.imaging.heatmap_kinds import DISPLAY_PERCENTILE  # noqa: E402
from DualDSynthesisLib.model.intensity import foreground_mask  # noqa: E402
from DualDSynthesisLib.scene import mrml_io, qa  # noqa: E402
from DualDSynthesisLib.scene.logic import DisplayOptions, DualDSynthesisLogic, QAOptions  # noqa: E402
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

UNITS = "expected absolute error (T2 intensity units)"


class ExpectedErrorEngine(FakeEngine):
    """The fake engine's heatmap ×100 read as an expected-error map in T2 units, with one extreme corner voxel
    (as the head gives at sharp edges)."""

    def run(self, image, progress=None, cancel=None, *, mask=None, skull="auto"):
        result = super().run(image, progress, cancel, mask=mask, skull=skull)
        scaled = result.heatmap * 100.0
        scaled[0, 0, 0] = 5000.0  # a corner, outside the head
        return dataclasses.replace(result, heatmap=scaled, heatmap_source="expected_error", heatmap_units=UNITS,
                                   target_modality="T2")


@pytest.fixture
def loaded():
    return loaded_scene()


def _legend(node):
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node)
    assert legend is not None, "no colour legend"
    return legend


def test_expected_error_node_has_units_legend_and_robust_window(loaded) -> None:
    _app, logic, node = loaded
    out = logic.synthesize(node, ExpectedErrorEngine(), display_options=DisplayOptions(lower_threshold=0.25))
    heat = out.heatmap_node
    assert heat.GetName() == "T1 expected error"
    assert heat.GetAttribute(SOURCE_ATTRIBUTE) == "expected_error" and heat.GetAttribute(UNITS_ATTRIBUTE) == UNITS
    legend = _legend(heat)
    assert legend.GetTitleText() == UNITS and legend.GetVisibility()
    values = mrml_io.array_from_volume_node(heat)
    high = np.percentile(values[values > 0], DISPLAY_PERCENTILE)
    assert high < 1000  # the outliers do not set the window
    disp = heat.GetDisplayNode()
    assert (disp.GetWindowLevelMin(), disp.GetWindowLevelMax()) == pytest.approx((0.0, high), rel=1e-5)
    assert disp.GetLowerThreshold() == pytest.approx(0.25 * high, rel=1e-5)
    logic.set_heatmap_threshold(heat, 0.5)  # the panel's slider: a fraction of the window
    assert disp.GetLowerThreshold() == pytest.approx(0.5 * high, rel=1e-5)


def test_d2_node_keeps_the_fixed_window_and_says_relative_difficulty(loaded) -> None:
    _app, logic, node = loaded
    out = logic.synthesize(node, FakeEngine(), display_options=DisplayOptions(lower_threshold=0.3))
    assert out.heatmap_node.GetName() == "T1 D2 difficulty"
    assert _legend(out.heatmap_node).GetTitleText() == "relative difficulty (1 - D2 confidence, 0-1)"
    disp = out.heatmap_node.GetDisplayNode()
    assert (disp.GetWindowLevelMin(), disp.GetWindowLevelMax()) == pytest.approx((0.0, 1.0))
    assert disp.GetLowerThreshold() == pytest.approx(0.3)


def test_qa_table_has_expected_mae_per_segment_without_reference(loaded) -> None:
    app, logic, node = loaded
    labels = np.zeros(SHAPE, np.int16)
    labels[TUMOUR] = 1
    labels[2:5, 25:32, 10:20] = 2
    segmentation, _ = _segmentation_from_labels(app.scene, labels, source_image(), ["tumour", "oedema"])
    out = logic.synthesize(node, ExpectedErrorEngine(), qa_options=QAOptions(region_node=segmentation))
    table = out.qa_table_node
    assert _column(table, qa.COLUMN_NAME) == ["foreground", "tumour", "oedema"]
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == [  # the units in every title
        "Region", "Voxels", "Expected MAE (T2 intensity units)", "P95 expected |error| (T2 intensity units)"]
    heat = mrml_io.array_from_volume_node(out.heatmap_node)
    masks = [foreground_mask(source_array(), "mri_percentile"), labels == 1, labels == 2]
    expected = [float(heat[m].mean()) for m in masks]
    assert _column(table, "Expected MAE (T2 intensity units)") == pytest.approx(expected, rel=1e-6)
    assert expected[1] == pytest.approx(90.0, rel=1e-6)  # the tumour's expected error, by construction
    assert [r.expected_mae for r in out.qa_rows] == pytest.approx(expected, rel=1e-6)


def test_qa_table_says_how_its_expected_error_is_calibrated(loaded) -> None:
    """A site-recalibrated bundle: the expected-error columns' descriptions (Slicer's tooltip) and the viewer's
    caption name the factor, the site and the method; a relative map's columns get none."""
    _app, logic, node = loaded
    site = ErrorCalibration.from_ratios({"a": 2.0, "b": 0.5}, "site recalibration on 2 scan(s) of Testville: "
                                        "leave-one-subject-out over 2 site subjects")
    engine = ExpectedErrorEngine()
    engine.metadata = dataclasses.replace(read_metadata(MODELS_DIR / "t1_to_t2.safetensors"), error_calibration=site)
    out = logic.synthesize(node, engine, qa_options=QAOptions())
    heat_fields = {field for _title, field in heatmap_kinds.kind("expected_error").qa_columns}
    for title, field in out.qa_columns:
        wanted = site.describe() if field in heat_fields else ""
        assert out.qa_table_node.GetColumnDescription(title) == wanted, title
    assert "of Testville: leave-one-subject-out over 2 site subjects" in site.describe()
    assert qa.calibration_caption(out.qa_notes) == site.describe()  # the viewer's caption
    relative = FakeEngine()
    relative.metadata = engine.metadata
    out = logic.synthesize(node, relative, qa_options=QAOptions())
    assert out.qa_notes == {} and qa.calibration_caption(out.qa_notes) == ""
    assert all(out.qa_table_node.GetColumnDescription(t) == "" for t, _ in out.qa_columns)


def test_qa_expected_mae_hand_values_and_ct_units() -> None:
    heat = np.array([[[1.0, 3.0], [10.0, 20.0]]])
    labels = np.array([[[1, 1], [2, 0]]])
    source = np.full(heat.shape, 100.0, np.float32)  # every voxel is foreground
    rows = qa.compute_qa(source, bundle_spec(), heat, labels, {1: "a", 2: "b"}, heatmap_source="expected_error")
    assert [r.expected_mae for r in rows] == pytest.approx([8.5, 2.0, 10.0])
    d2_rows = qa.compute_qa(source, bundle_spec(), heat / 20, labels, {1: "a", 2: "b"}, heatmap_source="d2")
    assert all(np.isnan(r.expected_mae) for r in d2_rows)
    scene = slicer.vtkMRMLScene()
    table = qa.write_qa_table(scene, rows, qa.table_columns("expected_error", None, "CT", with_reference=False))
    assert _column(table, "Expected MAE (HU)") == pytest.approx([8.5, 2.0, 10.0])
    with_spec = qa.table_columns("expected_error", bundle_spec(target="ct"), "CT")
    assert [t for t, _ in with_spec][2:] == ["Expected MAE (HU)", "P95 expected |error| (HU)", "PSNR (dB)", "MAE (HU)",
                                              "SSIM"]


def test_load_engine_passes_the_heatmap_source(tmp_path: Path) -> None:
    bundle = tmp_path / "m.safetensors"
    bundle.write_bytes(b"x")
    calls = []
    logic = DualDSynthesisLogic(scene=slicer.vtkMRMLScene(),
                                engine_factory=lambda *args: calls.append(args) or object())
    first = logic.load_engine(bundle, "cpu")
    assert logic.load_engine(bundle, "cpu") is first  # cached
    logic.load_engine(bundle, "cpu", "d2")
    assert calls == [(bundle, "cpu"), (bundle, "cpu", "d2")]
