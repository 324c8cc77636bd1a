"""The heatmap-kind registry (imaging/heatmap_kinds.py): a toy third kind, registered here and nowhere else,
reaches the CLI's choices, the heatmap file's header, the legend, the QA columns and the DICOM label; files keep
their kind (written and read back) and files of older versions are still recognised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from bundles import spec as bundle_spec
from DualDSynthesisLib.cli import synthesize as cli
from DualDSynthesisLib.imaging import heatmap_file, heatmap_kinds
from DualDSynthesisLib.imaging.heatmap_kinds import HeatmapKind


@pytest.fixture
def toy(monkeypatch) -> HeatmapKind:
    """A third kind, as a new map source would add it (e.g. an ensemble's spread), gone after the test."""
    monkeypatch.setattr(heatmap_kinds, "_KINDS", dict(heatmap_kinds._KINDS))

    @heatmap_kinds.register
    class ToySpread(HeatmapKind):
        name = "toy_spread"
        title = "toy spread"
        file_stem = "toy_spread"
        help = "the toy ensemble's spread in target units"
        in_target_units = True
        qa_columns = (("Mean spread", "mean_difficulty"), ("P95 spread", "p95_difficulty"))
        dicom_label = "TOY SPREAD"
        legacy_units_prefix = "toy spread"

        def units(self, target_units: str) -> str:
            return f"toy spread ({target_units})"

    return heatmap_kinds.kind("toy_spread")


def _heat() -> sitk.Image:
    values = np.linspace(0.0, 40.0, 3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


def test_a_toy_kind_reaches_the_cli_choices_and_its_help(toy: HeatmapKind) -> None:
    action = next(a for a in cli._parser()._actions if "--heatmap-source" in a.option_strings)
    assert action.choices == ("expected_error", "d2", "toy_spread")
    assert "toy_spread: toy spread, the toy ensemble's spread in target units" in action.help


@pytest.mark.parametrize("name", ["toy.nii.gz", "toy.nii", "toy.nrrd", "toy.mha"])
def test_a_toy_kind_is_recorded_in_the_file_header_and_read_back(toy: HeatmapKind, tmp_path: Path, name: str) -> None:
    units = toy.units("HU")
    heatmap_file.write_heatmap_file(_heat(), tmp_path / name, units, toy.name)
    back = sitk.ReadImage(str(tmp_path / name))
    assert heatmap_file.stored_kind(back) is toy and heatmap_file.stored_units(back) == units


def test_the_legend_and_the_overview_caption_come_from_the_kind(toy: HeatmapKind) -> None:
    from DualDSynthesisLib.imaging.overview import heatmap_caption

    assert heatmap_caption("", toy.name) == "heatmap: toy spread (target units)"
    assert heatmap_caption("toy spread (HU)", toy.name) == "heatmap: toy spread (HU)"
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    from DualDSynthesisLib.imaging.heatmap_file import SOURCE_ATTRIBUTE
    from DualDSynthesisLib.scene import display, mrml_io

    app = display.create_headless_slicer()
    node = mrml_io.new_volume_node_from_image(app.scene, _heat(), "heat")
    node.SetAttribute(SOURCE_ATTRIBUTE, toy.name)
    display.apply_heatmap_display(node)
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node)
    assert legend.GetTitleText() == "toy spread (target units)"
    high = display.heatmap_window(node)[1]  # unbounded: the 99th percentile of the non-zero values
    values = sitk.GetArrayFromImage(_heat())
    assert high == pytest.approx(np.percentile(values[values > 0], heatmap_kinds.DISPLAY_PERCENTILE))
    assert node.GetDisplayNode().GetLowerThreshold() == pytest.approx(toy.display.threshold * high)


def test_the_qa_columns_come_from_the_kind_with_units(toy: HeatmapKind) -> None:
    from DualDSynthesisLib.scene import qa

    titles = [t for t, _ in qa.table_columns(toy.name, bundle_spec(), "t2")]
    assert titles == ["Region", "Voxels", "Mean spread (t2 intensity units)", "P95 spread (t2 intensity units)",
                      "PSNR (dB)", "MAE (normalised)", "SSIM"]
    rows = qa.compute_qa(np.full((1, 2, 2), 100.0, np.float32), bundle_spec(), np.array([[[1.0, 3.0], [5.0, 7.0]]]),
                         heatmap_source=toy.name)
    assert rows[0].expected_mae == pytest.approx(4.0)  # in target units, so an expected MAE


def test_the_dicom_parametric_map_takes_the_kinds_label_and_units(toy: HeatmapKind) -> None:
    from DualDSynthesisLib.imaging.dicom_export import DicomMarking, heatmap_map, image_series

    synthetic = sitk.Cast(_heat(), sitk.sitkFloat32)
    marking = DicomMarking("toy model", "toy.safetensors", "bundle format 3", ct_valued=True)
    pm = heatmap_map(_heat(), image_series(synthetic, marking, None), marking, toy.units("HU"), toy.name)
    assert pm.ContentLabel == "TOY_SPREAD" and pm.ContentDescription == "toy spread (HU)"
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "TOY SPREAD"
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]"  # in target units, a CT target: HU


def test_every_registered_kind_is_complete_and_names_are_unique() -> None:
    assert heatmap_kinds.names()[0] == heatmap_kinds.EXPECTED_ERROR  # the preferred (the CLI's default) first
    for kind in heatmap_kinds.kinds():
        assert len(kind.columns("HU")) == 2 and kind.dicom_label and kind.units("HU") and kind.title
        assert kind.file_suffix.endswith(".nii.gz") and heatmap_kinds.kind(kind.name) is kind
    with pytest.raises(ValueError, match="registered twice"):
        heatmap_kinds.register(type(heatmap_kinds.kind("d2")))
    with pytest.raises(heatmap_kinds.HeatmapKindError, match="unknown heatmap kind 'nope'; choose one of"):
        heatmap_kinds.kind("nope")
    assert heatmap_kinds.kind(None).name == heatmap_kinds.D2  # nothing recorded: D2's, as older files hold


def test_files_of_older_versions_are_recognised_by_their_units(tmp_path: Path) -> None:
    """Before the kind was recorded, only the units sentence was (NIfTI's descrip): such files keep their kind."""
    for kind in heatmap_kinds.kinds():
        path = tmp_path / f"old{kind.file_suffix}"
        heatmap_file.write_heatmap_file(_heat(), path, kind.units("t2 intensity units"))  # no kind recorded
        back = sitk.ReadImage(str(path))
        assert back.GetMetaData("intent_name").strip("\0 ") == ""
        assert heatmap_file.stored_kind(back) is kind
    heatmap_file.write_heatmap_file(_heat(), tmp_path / "bare.nrrd")
    assert heatmap_file.stored_kind(sitk.ReadImage(str(tmp_path / "bare.nrrd"))).name == heatmap_kinds.D2
