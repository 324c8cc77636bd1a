"""Fault campaign (issue 21), DICOM: a series with missing slices (D9) or a duplicated slice position (D10)
is refused with the positions named instead of being stacked at one spacing; --patient-id/--patient-name
are checked against their value representations before anything is written (D12)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from DualDSynthesisLib.cli import synthesize as cli
from DualDSynthesisLib.imaging import dicom_export, io
from DualDSynthesisLib.imaging.dicom_slices import place_slices
from test_dicom_export import DCIODVFY, assert_valid
from test_engine import _oblique, head
from test_synthesize_cli import _write_dicom_series

SLICES = 20



def _series(folder: Path, spacing: float = 2.0, direction: tuple[float, ...] | None = None) -> sitk.Image:
    image = head(size=(48, 48, SLICES), spacing=(0.9, 0.9, spacing), direction=direction, origin=(-20.0, 5.0, 30.0))
    _write_dicom_series(image, folder, "MR")
    return image


def _z(image: sitk.Image, k: int) -> float:
    """Slice k's position along the slice normal (the image's third direction column), as the error says it."""
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    return float(np.dot(image.TransformIndexToPhysicalPoint((0, 0, k)), normal))


def _mm(z: float) -> str:
    return f"{round(z, 3):g}"


def _synthesize(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(["-q", "--device", "cpu", *argv])
    return code, capsys.readouterr().err.strip().splitlines()


# ----------------------------------------------------------------------------- D9: missing slices


@pytest.mark.parametrize("direction", [None, _oblique()], ids=["axial", "oblique"])
def test_missing_slices_are_refused_with_their_positions(model, tmp_path, capsys, direction) -> None:
    image = _series(tmp_path / "series", direction=direction)
    for k in (8, 9, 10):
        (tmp_path / "series" / f"slice{k:03d}.dcm").unlink()
    out = tmp_path / "out.nii.gz"
    code, err = _synthesize(capsys, str(tmp_path / "series"), "-o", str(out), "--model", str(model))
    assert code == 2 and len(err) == 1, err
    low, high = sorted((_z(image, 7), _z(image, 11)))
    assert f"slices missing between z={_mm(low)} and z={_mm(high)} mm (spacing 8 mm where the series has 2 mm)" \
        in err[0]
    assert not out.exists()


def test_an_uneven_step_is_refused_and_named(tmp_path) -> None:
    image = _series(tmp_path / "series")
    moved = tmp_path / "series" / "slice012.dcm"
    ds = pydicom.dcmread(moved)
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.5]
    ds.save_as(moved)
    with pytest.raises(io.VolumeReadError) as caught:
        io.read_volume(tmp_path / "series")
    assert f"uneven slice spacing between z={_mm(_z(image, 11))} and z={_mm(_z(image, 12) + 0.5)} mm" \
        in str(caught.value)


# ----------------------------------------------------------------------------- D10: a duplicated position


def test_a_duplicated_position_with_a_new_uid_is_refused(model, tmp_path, capsys) -> None:
    image = _series(tmp_path / "series")
    ds = pydicom.dcmread(tmp_path / "series" / "slice005.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "series" / "slice005b.dcm")
    out = tmp_path / "out.nii.gz"
    code, err = _synthesize(capsys, str(tmp_path / "series"), "-o", str(out), "--model", str(model))
    assert code == 2 and len(err) == 1, err
    assert f"two slices lie at the same position z={_mm(_z(image, 5))} mm" in err[0]
    assert "slice005.dcm" in err[0] and "slice005b.dcm" in err[0] and not out.exists()


def test_a_dicom_export_from_a_gapped_series_is_refused_too(model, tmp_path, capsys) -> None:
    _series(tmp_path / "series")
    (tmp_path / "series" / "slice004.dcm").unlink()
    code, err = _synthesize(capsys, str(tmp_path / "series"), "--dicom-out", str(tmp_path / "dicom"),
                            "--model", str(model))
    assert code == 2 and "slices missing" in err[-1] and not (tmp_path / "dicom").exists()


# ----------------------------------------------------------------------------- valid series are unchanged


@pytest.mark.parametrize("direction", [None, _oblique()], ids=["axial", "oblique"])
def test_an_evenly_spaced_series_reads_onto_its_own_grid(tmp_path, direction) -> None:
    image = _series(tmp_path / "series", spacing=1.25, direction=direction)
    volume = io.read_volume(tmp_path / "series")
    assert volume.GetSize() == image.GetSize()
    assert volume.GetSpacing() == pytest.approx(image.GetSpacing(), abs=1e-4)
    assert volume.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-3)
    assert volume.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-4)
    written = sitk.Cast(image, sitk.sitkInt16)
    assert np.array_equal(sitk.GetArrayViewFromImage(volume), sitk.GetArrayViewFromImage(written))


def test_files_listed_out_of_order_are_put_in_slice_order(tmp_path) -> None:
    image = _series(tmp_path / "series")
    files = sorted(str(p) for p in (tmp_path / "series").iterdir())
    shuffled = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    placement = place_slices(shuffled)
    assert placement.problem is None and placement.files == files
    assert placement.positions == pytest.approx([_z(image, k) for k in range(SLICES)], abs=1e-3)


def test_one_file_or_files_without_positions_are_not_judged(tmp_path) -> None:
    _series(tmp_path / "series")
    files = sorted(str(p) for p in (tmp_path / "series").iterdir())
    assert place_slices(files[:1]).problem is None
    for name in files[5:7]:
        ds = pydicom.dcmread(name)
        del ds.ImagePositionPatient
        ds.save_as(name)
    assert place_slices(files).problem is None  # nothing to check them by; ITK's reader decides


# ----------------------------------------------------------------------------- D12: patient fields


BAD_FIELDS = [
    ("--patient-id", "P\\X", "a backslash separates values"),
    ("--patient-id", "a\tb", "control character"),
    ("--patient-id", "é" * 41, "length in UTF-8 bytes (82) exceeds the maximum length of 64"),
    ("--patient-name", "A" * 200, "component length in UTF-8 bytes (200) exceeds the maximum allowed length of 64"),
    ("--patient-name", "a^b^c^d^e^f", "at most 5 ^-separated components"),
    ("--patient-name", "Doe^Jane=Y^T=x=y", "the number of PN groups (4) exceeds the maximum allowed number of 3"),
]


@pytest.mark.parametrize(("option", "value", "rule"), BAD_FIELDS)
def test_an_invalid_patient_field_is_refused_before_writing(model, tmp_path, capsys, option, value, rule) -> None:
    source = tmp_path / "t1.nii.gz"
    sitk.WriteImage(head(), str(source))
    code, err = _synthesize(capsys, str(source), "--model", str(model), "--dicom-out", str(tmp_path / "dicom"),
                            option, value)
    assert code == 2 and len(err) == 1, err
    vr = "Long String (LO)" if option == "--patient-id" else "Person Name (PN)"
    assert f"{option} " in err[0] and f"is not a valid DICOM {vr} value: " in err[0] and rule in err[0]
    assert not (tmp_path / "dicom").exists()


@pytest.mark.parametrize(("patient_id", "patient_name"), [
    ("P-0042", "Doe^Jane"), ("I" * 64, "Müller^Jörg^^Dr."), ("", ""), ("ID 7", "山田^太郎=ヤマダ^タロウ"),
])
def test_valid_patient_fields_pass_the_check_and_dciodvfy(model, tmp_path, capsys, patient_id, patient_name) -> None:
    source = tmp_path / "t1.nii.gz"
    sitk.WriteImage(head(), str(source))
    code, err = _synthesize(capsys, str(source), "--model", str(model), "--dicom-out", str(tmp_path / "dicom"),
                            "--patient-id", patient_id, "--patient-name", patient_name)
    assert code == 0, err
    files = sorted((tmp_path / "dicom" / dicom_export.SYNTHETIC_FOLDER).iterdir())
    ds = pydicom.dcmread(files[0])
    assert ds.PatientID == patient_id and str(ds.PatientName) == patient_name
    assert_valid(files[:1])


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not found: install Debian's dicom3tools")
@pytest.mark.filterwarnings("ignore:The PN component length")  # pydicom's own warning for the value we write anyway
@pytest.mark.parametrize(("option", "value", "rule"), [f for f in BAD_FIELDS if "PN groups" not in f[2]])
def test_the_refused_values_are_the_ones_dciodvfy_rejects(tmp_path, option, value, rule) -> None:
    """Without the check (the datasets built directly), each refused value is an error for dciodvfy."""
    field = {"--patient-id": "patient_id", "--patient-name": "patient_name"}[option]
    marking = dicom_export.DicomMarking("t1->t2", "m.safetensors", "bundle format 1", False, **{field: value})
    ds = dicom_export.image_series(head(size=(8, 8, 1)), marking)[0]
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    # dciodvfy echoes the UTF-8 value: decoded as such whatever the locale
    run = subprocess.run([DCIODVFY, str(tmp_path / "x.dcm")], capture_output=True, check=False)
    errors = [ln for ln in (run.stdout + run.stderr).decode("utf-8", "replace").splitlines() if ln.startswith("Error")]
    keyword = "<PatientID>" if field == "patient_id" else "<PatientName>"
    named = "Patient ID" if field == "patient_id" else "Patient's Name"
    assert any(keyword in e or named in e for e in errors), errors
