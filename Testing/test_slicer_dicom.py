"""The module's DICOM side on slicer-core: the synthetic node carries the marking, "Export to DICOM" writes it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from bundles import make_bundle  # noqa: E402
from DualDSynthesisLib.inference.engine import SynthesisEngine  # noqa: E402
from DualDSynthesisLib.scene import display, mrml_io  # noqa: E402
from DualDSynthesisLib.scene.dicom_marking import MARKING_ATTRIBUTE  # noqa: E402
from DualDSynthesisLib.scene.logic import DualDSynthesisLogic  # noqa: E402
from test_dicom_export import SOURCE_TAGS, _mr_series, assert_valid, read_series  # noqa: E402
from test_engine import head  # noqa: E402


@pytest.fixture
def synthesized(tmp_path: Path):
    app = display.create_headless_slicer()
    source = mrml_io.new_volume_node_from_image(app.scene, head(spacing=(0.8, 0.8, 3.0), origin=(-19, -20, 40)), "MR")
    logic = DualDSynthesisLogic(scene=app.scene, application_logic=app.application_logic)
    engine = SynthesisEngine(make_bundle(tmp_path / "ct.safetensors", target="ct"), device="cpu")
    outputs = logic.synthesize(source, engine)
    return logic, source, outputs


def test_the_synthetic_node_carries_the_marking(synthesized) -> None:
    _logic, source, outputs = synthesized
    node = outputs.synthetic_node
    assert node.GetAttribute("DICOM.Modality") == "CT"
    assert node.GetAttribute("DICOM.SeriesDescription").startswith("SYNTHETIC CT")
    assert node.GetAttribute("DICOM.ImageType").startswith("DERIVED\\SECONDARY")
    assert "ct.safetensors" in node.GetAttribute("DICOM.DerivationDescription")
    assert node.GetAttribute("DICOM.BurnedInAnnotation") == "NO"
    assert "NOT FOR DIAGNOSTIC USE" in node.GetAttribute("DICOM.ImageComments")
    assert source.GetAttribute(MARKING_ATTRIBUTE) is None  # the input node is never modified


def test_export_to_dicom_writes_the_marked_series_on_the_node_grid(synthesized, tmp_path: Path) -> None:
    logic, source, outputs = synthesized
    node = outputs.synthetic_node
    status = logic.export_dicom(node, tmp_path / "exports")
    target = tmp_path / "exports" / f"{node.GetName().replace(' ', '_')}_DICOM"
    assert str(target) in status
    files = sorted((target / "SYNTHETIC").iterdir())
    expected = mrml_io.image_from_volume_node(node)
    back = read_series(target / "SYNTHETIC")
    assert back.GetOrigin() == pytest.approx(expected.GetOrigin(), abs=1e-4)
    assert back.GetSpacing() == pytest.approx(expected.GetSpacing(), abs=1e-6)
    diff = sitk.GetArrayFromImage(back).astype(np.float64) - sitk.GetArrayFromImage(expected)
    assert np.abs(diff).max() <= 0.5 + 1e-3
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.SeriesDescription == node.GetAttribute("DICOM.SeriesDescription") and ds.Modality == "CT"
    assert ds.PatientID == ""  # the source node did not come from DICOM: nothing invented
    assert_valid(files)
    with pytest.raises(FileExistsError, match="is not empty"):
        logic.export_dicom(node, tmp_path / "exports")  # nothing is replaced from the GUI
    with pytest.raises(ValueError, match="not a synthetic volume made by this module"):
        logic.export_dicom(source, tmp_path / "exports")


def test_export_of_a_dicom_sourced_node_keeps_patient_and_frame_of_reference(
        synthesized, tmp_path: Path, monkeypatch) -> None:
    logic, source, outputs = synthesized
    series = _mr_series(tmp_path / "mr", **SOURCE_TAGS)
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: str(p) for p in series.iterdir()}
    source.SetAttribute("DICOM.instanceUIDs", " ".join(by_uid))  # as Slicer's DICOM loader sets it
    monkeypatch.setattr(slicer, "dicomDatabase", SimpleNamespace(fileForInstance=by_uid.get), raising=False)
    logic.export_dicom(outputs.synthetic_node, tmp_path / "exports")
    files = sorted(next((tmp_path / "exports").iterdir()).joinpath("SYNTHETIC").iterdir())
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert (ds.PatientID, ds.FrameOfReferenceUID) == (SOURCE_TAGS["PatientID"], SOURCE_TAGS["FrameOfReferenceUID"])
    assert_valid(files)
