"""``duald-synthesize --dicom-out``: synthetic CT series a planning system accepts, read back and validated.

The series are read back with SimpleITK (geometry, HU) and pydicom (UIDs, marking) and every file is
checked with ``dciodvfy`` (Debian's dicom3tools; `.ci/run` installs it, the check skips only where it
is missing). dciodvfy lines starting with "Error" fail the test; its warnings are allowed and listed in
``ALLOWED_WARNINGS`` so a new kind of warning is noticed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from bundles import make_bundle
from DualDSynthesisLib.cli import synthesize as cli
from DualDSynthesisLib.cli.demo import mni152_t1
from DualDSynthesisLib.core.resources import MODELS_DIR
from DualDSynthesisLib.imaging import dicom_export
from test_engine import head
from test_synthesize_cli import _write_dicom_series

CT_MODEL = MODELS_DIR / "mri_to_ct_demo.safetensors"
DCIODVFY = shutil.which("dciodvfy")
# What dciodvfy warns about in our files, and why it is acceptable:
ALLOWED_WARNINGS = (
    # a volume-file source has no patient: the IDs stay empty rather than invented
    "needed to build DICOMDIR - Patient ID",
    "needed to build DICOMDIR - Study ID",
    # Laterality (type 2C) is left empty: a synthetic image does not know the body part's side
    "attribute <Laterality>",
    # highdicom's Parametric Map uses QUANTITY, defined for it by the standard since dicom3tools' tables
    "Unrecognized defined term <QUANTITY>",
)


def dciodvfy_report(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dciodvfy for one file."""
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines()]
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def assert_valid(files: list[Path]) -> None:
    if DCIODVFY is None:
        pytest.skip("dciodvfy not found: install Debian's dicom3tools (apt-get install dicom3tools)")
    for path in files:
        errors, warnings = dciodvfy_report(path)
        assert not errors, f"{path.name}: {errors}"
        unexpected = [w for w in warnings if not any(a in w for a in ALLOWED_WARNINGS)]
        assert not unexpected, f"{path.name}: {unexpected}"


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["-q", "--device", "cpu", *argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory) -> tuple[Path, Path]:
    """The demo: MNI152 T1 → synthetic CT with the shipped MRI→CT model, as NIfTI and as DICOM."""
    out = tmp_path_factory.mktemp("demo")
    code = cli.main(["-q", "--device", "cpu", str(mni152_t1()), "--model", str(CT_MODEL),
                     "-o", str(out / "sct.nii.gz"), "--dicom-out", str(out / "dicom")])
    assert code == 0
    return out / "sct.nii.gz", out / "dicom"


@pytest.mark.slow
def test_demo_sct_geometry_hu_and_uids(demo_export) -> None:
    nifti, folder = demo_export
    assert sorted(p.name for p in folder.iterdir()) == ["DIFFICULTY", "SYNTHETIC"]
    expected = sitk.ReadImage(str(nifti))
    files = sorted((folder / "SYNTHETIC").iterdir())
    assert len(files) == expected.GetDepth()  # one file per slice
    back = read_series(folder / "SYNTHETIC")
    assert back.GetSize() == expected.GetSize()
    assert back.GetSpacing() == pytest.approx(expected.GetSpacing(), abs=1e-6)
    assert back.GetOrigin() == pytest.approx(expected.GetOrigin(), abs=1e-6)
    assert back.GetDirection() == pytest.approx(expected.GetDirection(), abs=1e-6)
    hu, want = sitk.GetArrayFromImage(back).astype(np.float64), sitk.GetArrayFromImage(expected)
    assert np.abs(hu - want).max() <= 0.5 + 1e-3  # int16 rounding only
    assert want.min() < -900 and want.max() > 100  # a CT-valued result, not a trivial one

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    first = headers[0]
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
    assert len({h.SOPInstanceUID for h in headers}) == len(headers)
    assert {h.SeriesInstanceUID for h in headers} == {first.SeriesInstanceUID}
    assert {h.FrameOfReferenceUID for h in headers} == {first.FrameOfReferenceUID}
    assert {h.StudyInstanceUID for h in headers} == {first.StudyInstanceUID}
    assert first.StudyInstanceUID != first.SeriesInstanceUID != first.FrameOfReferenceUID
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert first.SeriesDescription.startswith("SYNTHETIC CT DualD t1->ct")
    assert "mri_to_ct_demo.safetensors" in first.DerivationDescription
    assert "bundle format 1" in first.DerivationDescription and "duald-synthesis" in first.DerivationDescription
    assert first.BurnedInAnnotation == "NO" and "NOT FOR DIAGNOSTIC USE" in first.ImageComments
    assert first.PatientID == "" and str(first.PatientName) == ""  # a NIfTI source: nothing invented
    assert pydicom.dcmread(files[0]).pixel_array.dtype == np.int16
    assert (first.RescaleSlope, first.RescaleIntercept) == (1, 0)

    pm = pydicom.dcmread(folder / "DIFFICULTY" / "PM00001.dcm")
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and pm.NumberOfFrames == expected.GetDepth()
    assert pm.FrameOfReferenceUID == first.FrameOfReferenceUID and pm.StudyInstanceUID == first.StudyInstanceUID
    assert pm.SeriesInstanceUID != first.SeriesInstanceUID
    assert pm.SeriesDescription.startswith("SYNTHETIC CT DIFFICULTY") and pm.BurnedInAnnotation == "NO"
    assert pm.pixel_array.min() >= 0.0 and pm.pixel_array.max() <= 1.0


@pytest.mark.slow
def test_demo_sct_passes_dciodvfy(demo_export) -> None:
    _nifti, folder = demo_export
    assert_valid([*sorted((folder / "SYNTHETIC").iterdir()), folder / "DIFFICULTY" / "PM00001.dcm"])


def _mr_series(folder: Path, uid_root: str | None = None, **tags: str) -> Path:
    """A small DICOM MR series (the CLI test's writer) with patient, study and frame-of-reference tags;
    ``uid_root`` gives it its own series and instance UIDs."""
    _write_dicom_series(head(spacing=(0.8, 0.8, 3.0), origin=(-19.0, -20.0, 40.0)), folder, "MR")
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        if uid_root is not None:
            ds.SeriesInstanceUID = uid_root
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{uid_root}.{ds.InstanceNumber}"
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return folder


SOURCE_TAGS = {"PatientID": "PAT-0042", "PatientName": "Doe^Jane", "StudyID": "S17", "AccessionNumber": "ACC9",
               "FrameOfReferenceUID": "1.2.826.0.1.3680043.2.1125.9.1", "PatientPosition": "HFS"}


def test_dicom_mr_in_dicom_ct_out_keeps_frame_of_reference_and_ids(tmp_path: Path, capsys) -> None:
    source = _mr_series(tmp_path / "mr", **SOURCE_TAGS)
    src = pydicom.dcmread(next(source.iterdir()), stop_before_pixels=True)
    code, err = _run(capsys, str(source), "--model", str(CT_MODEL), "--dicom-out", str(tmp_path / "out"))
    assert code == 0, err
    files = sorted((tmp_path / "out" / "SYNTHETIC").iterdir())
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword, value in SOURCE_TAGS.items():
            assert str(ds[keyword].value) == value, keyword
        assert ds.StudyInstanceUID == src.StudyInstanceUID  # the sCT joins the MR's study
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.Modality == "CT"
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID.startswith(src.SeriesInstanceUID)
    pm = pydicom.dcmread(tmp_path / "out" / "DIFFICULTY" / "PM00001.dcm", stop_before_pixels=True)
    assert pm.FrameOfReferenceUID == SOURCE_TAGS["FrameOfReferenceUID"] and pm.PatientID == "PAT-0042"
    back, mr = read_series(tmp_path / "out" / "SYNTHETIC"), read_series(source)
    assert back.GetOrigin() == pytest.approx(mr.GetOrigin(), abs=1e-4)
    assert back.GetSpacing() == pytest.approx(mr.GetSpacing(), abs=1e-4)
    assert_valid([*files, tmp_path / "out" / "DIFFICULTY" / "PM00001.dcm"])


def test_mri_to_mri_model_writes_mr_storage_with_the_marking(tmp_path: Path, capsys) -> None:
    model = make_bundle(tmp_path / "t1_t2.safetensors", target="t2")
    source = tmp_path / "t1.nii.gz"
    sitk.WriteImage(head(), str(source))
    code, err = _run(capsys, str(source), "--model", str(model), "--dicom-out", str(tmp_path / "out"),
                     "--patient-id", "P1", "--patient-name", "Roe^Rich")
    assert code == 0, err
    files = sorted((tmp_path / "out" / "SYNTHETIC").iterdir())
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.Modality == "MR"
    assert ds.SeriesDescription.startswith("SYNTHETIC MR") and "t1_t2.safetensors" in ds.DerivationDescription
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "NOT FOR DIAGNOSTIC USE" in ds.ImageComments
    assert (ds.PatientID, str(ds.PatientName)) == ("P1", "Roe^Rich")
    assert_valid(files)


def test_non_empty_folder_is_refused_and_overwrite_replaces_only_an_export(tmp_path: Path, capsys) -> None:
    model = make_bundle(tmp_path / "ct.safetensors", target="ct")
    source = tmp_path / "t1.nii.gz"
    sitk.WriteImage(head(), str(source))
    out = tmp_path / "out"
    out.mkdir()
    (out / "plan.txt").write_text("the user's")
    args = (str(source), "--model", str(model), "--dicom-out", str(out))
    code, err = _run(capsys, *args)
    assert code == 2 and "is not empty; pass --overwrite" in err
    code, err = _run(capsys, *args, "--overwrite")
    assert code == 2 and "'plan.txt'" in err and (out / "plan.txt").read_text() == "the user's"
    (out / "plan.txt").unlink()
    assert _run(capsys, *args)[0] == 0
    first = pydicom.dcmread(next((out / "SYNTHETIC").iterdir())).SeriesInstanceUID
    assert _run(capsys, *args)[0] == 2  # now holds an export
    assert _run(capsys, *args, "--overwrite")[0] == 0
    files = list((out / "SYNTHETIC").iterdir())
    assert len(files) == 6 and pydicom.dcmread(files[0]).SeriesInstanceUID != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.safetensors", "out", "t1.nii.gz"]  # no leftovers


def test_a_failed_export_leaves_no_half_series(tmp_path: Path, capsys, monkeypatch) -> None:
    model = make_bundle(tmp_path / "ct.safetensors", target="ct")
    source = tmp_path / "t1.nii.gz"
    sitk.WriteImage(head(), str(source))
    real = dicom_export.heatmap_map

    def broken(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(dicom_export, "heatmap_map", broken)
    code, err = _run(capsys, str(source), "--model", str(model), "--dicom-out", str(tmp_path / "out"),
                     "-o", str(tmp_path / "sct.nii.gz"))
    assert code == 2 and "disk full" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.safetensors", "t1.nii.gz"]


def test_several_series_are_listed_and_one_is_chosen_by_uid(tmp_path: Path, capsys) -> None:
    model = make_bundle(tmp_path / "ct.safetensors", target="ct")
    folder = _mr_series(tmp_path / "mr", SeriesDescription="T1 MPRAGE")
    second = tmp_path / "other"
    _mr_series(second, uid_root="1.2.826.0.1.3680043.2.1125.7")
    for path in second.iterdir():
        shutil.move(path, folder / f"b_{path.name}")
    code, err = _run(capsys, str(folder), "--model", str(model), "--dicom-out", str(tmp_path / "out"))
    assert code == 2 and "holds 2 DICOM series, choose one with --series-uid" in err
    assert "'T1 MPRAGE', 6 files" in err and "1.2.826.0.1.3680043.2.1125.7 (MR, 6 files)" in err
    assert not (tmp_path / "out").exists()
    code, err = _run(capsys, str(folder), "--model", str(model), "--dicom-out", str(tmp_path / "out"),
                     "--series-uid", "1.2.826.0.1.3680043.2.1125.7")
    assert code == 0, err
    ref = pydicom.dcmread(next((tmp_path / "out" / "SYNTHETIC").iterdir())).SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID.startswith("1.2.826.0.1.3680043.2.1125.7.")


def test_bad_requests_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    source = tmp_path / "t1.nii.gz"
    sitk.WriteImage(head(), str(source))
    code, err = _run(capsys, str(source), "--model", str(CT_MODEL))
    assert code == 2 and "give an output with -o and/or a DICOM export folder" in err
    code, err = _run(capsys, str(source), "-o", str(tmp_path / "o.nii.gz"), "--patient-id", "X")
    assert code == 2 and "add --dicom-out" in err
    mr = _mr_series(tmp_path / "mr")
    code, err = _run(capsys, str(mr), "--model", str(CT_MODEL), "--dicom-out", str(tmp_path / "d"),
                     "--patient-id", "X")
    assert code == 2 and "brings its own patient identity" in err and not (tmp_path / "d").exists()
    export = tmp_path / "export"
    (export / "SYNTHETIC").mkdir(parents=True)
    shutil.copytree(mr, export / "SYNTHETIC", dirs_exist_ok=True)  # a previous export used as the input
    code, err = _run(capsys, str(export / "SYNTHETIC"), "--model", str(CT_MODEL), "--dicom-out", str(export),
                     "--overwrite")
    assert code == 2 and "lies inside the DICOM output folder" in err
    assert len(list((export / "SYNTHETIC").iterdir())) == 6
