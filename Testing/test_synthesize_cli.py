"""``duald-synthesize``: single file, cohort folder, glob, PNG overview, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from bundles import make_bundle
from DualDSynthesisLib.cli import synthesize as cli
from DualDSynthesisLib.inference import engine as engine_module
from test_engine import head


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_single_file_with_heatmap_and_png(model: Path, tmp_path: Path, capsys) -> None:
    source = _write(head(spacing=(0.9, 0.9, 5.5)), tmp_path / "sub01_t1.nii.gz")
    out, heat, png = tmp_path / "syn.nii.gz", tmp_path / "heat.nrrd", tmp_path / "overview.png"
    code, stdout, err = _run(capsys, str(source), "-o", str(out), "--heatmap", str(heat), "--png", str(png),
                             "--model", str(model), "--device", "cpu")
    assert code == 0, err
    assert "sub01_t1.nii.gz" in stdout
    for path in (out, heat):
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == (48, 48, 6) and image.GetSpacing() == pytest.approx((0.9, 0.9, 5.5))
    figure = sitk.ReadImage(str(png))
    assert figure.GetNumberOfComponentsPerPixel() == 3 and figure.GetPixelID() == sitk.sitkVectorUInt8
    # a caption strip, the axial, coronal and sagittal rows, then the heatmap's colour bar
    assert figure.GetSize()[1] == 14 + 3 * 256 + 2 * 4 + 24
    assert sitk.GetArrayViewFromImage(figure).max() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.nrrd", "overview.png", "sub01_t1.nii.gz",
                                                          "syn.nii.gz"]


def test_folder_of_two_volumes_loads_the_model_once(model: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    inputs = tmp_path / "in"
    _write(head(), inputs / "a_t1.nii.gz")
    _write(head(size=(40, 44, 5), direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)), inputs / "b_t1.nrrd")
    (inputs / "notes.txt").write_text("not a volume")
    loads = []
    real = engine_module.load_bundle
    monkeypatch.setattr(engine_module, "load_bundle", lambda *a, **k: loads.append(a) or real(*a, **k))
    out = tmp_path / "out"
    code, _stdout, err = _run(capsys, str(inputs), "-o", str(out), "--heatmap", str(out), "--png", str(out),
                              "--model", str(model))
    assert code == 0, err
    assert len(loads) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "a_t1_difficulty.nii.gz", "a_t1_overview.png", "a_t1_synthetic.nii.gz",
        "b_t1_difficulty.nii.gz", "b_t1_overview.png", "b_t1_synthetic.nii.gz",
    ]
    b = sitk.ReadImage(str(out / "b_t1_synthetic.nii.gz"))
    assert b.GetSize() == (40, 44, 5) and b.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))


def test_glob_and_mask_folder(model: Path, tmp_path: Path, capsys) -> None:
    for name in ("x", "y"):
        _write(head(), tmp_path / "in" / f"{name}.nii.gz")
        mask = sitk.Image([48, 48, 6], sitk.sitkUInt8)
        mask[:24, :, :] = 1
        _write(mask, tmp_path / "masks" / f"{name}_mask.nii.gz")
    code, _out, err = _run(capsys, str(tmp_path / "in" / "*.nii.gz"), "-o", str(tmp_path / "out"),
                           "--mask", str(tmp_path / "masks"), "--model", str(model))
    assert code == 0, err
    syn = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "y_synthetic.nii.gz")))
    assert (syn[:, :, 24:] == 0).all() and syn[:, :, :24].max() > 0


def test_bad_input_is_one_line_with_exit_code_2(model: Path, tmp_path: Path, capsys) -> None:
    flat = _write(sitk.Image([40, 40], sitk.sitkFloat32) + 1, tmp_path / "flat.nii.gz")
    code, _out, err = _run(capsys, str(flat), "-o", str(tmp_path / "o.nii.gz"), "--model", str(model))
    assert code == 2
    lines = err.strip().splitlines()
    assert "2-D image; a 3-D volume is needed" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_existing_output_needs_overwrite(model: Path, tmp_path: Path, capsys) -> None:
    source = _write(head(), tmp_path / "in.nii.gz")
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"old")
    code, _out, err = _run(capsys, str(source), "-o", str(out), "--model", str(model))
    assert code == 2 and "already exists; pass --overwrite" in err and out.read_bytes() == b"old"
    code, _out, err = _run(capsys, str(source), "-o", str(out), "--model", str(model), "--overwrite")
    assert code == 0, err
    assert sitk.ReadImage(str(out)).GetSize() == (48, 48, 6)


def test_missing_default_model_points_at_model_option(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli, "DEFAULT_MODEL", tmp_path / "Models" / "t1_to_t2.safetensors")
    source = _write(head(), tmp_path / "in.nii.gz")
    code, _out, err = _run(capsys, str(source), "-o", str(tmp_path / "o.nii.gz"))
    assert code == 2 and "t1_to_t2.safetensors is not installed" in err and "--model" in err
    assert len(err.strip().splitlines()) == 1


def test_model_errors(model: Path, tmp_path: Path, capsys) -> None:
    source = _write(head(), tmp_path / "in.nii.gz")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"PK\x03\x04 this is a zip")
    code, _out, err = _run(capsys, str(source), "-o", str(tmp_path / "o.nii.gz"), "--model", str(broken))
    assert code == 2 and "could not be loaded" in err and "pickle" in err
    unet = make_bundle(tmp_path / "unet.safetensors", with_d2=False)
    code, _out, err = _run(capsys, str(source), "-o", str(tmp_path / "o.nii.gz"), "--heatmap",
                           str(tmp_path / "h.nii.gz"), "--model", str(unet))
    assert code == 2 and "neither an expected-error head nor a trained local discriminator" in err
    code, _out, err = _run(capsys, str(tmp_path / "nothing*.nii"), "-o", str(tmp_path / "o"), "--model", str(model))
    assert code == 2 and "no volume matches" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.safetensors", "in.nii.gz", "unet.safetensors"]


def test_cohort_continues_after_a_bad_volume(model: Path, tmp_path: Path, capsys) -> None:
    _write(head(), tmp_path / "in" / "good.nii.gz")
    (tmp_path / "in" / "bad.nii").write_bytes(b"\x00" * 100)
    code, _stdout, err = _run(capsys, str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(model),
                              "--source-modality", "t2")
    assert code == 2
    assert "error: bad.nii could not be read as an image" in err and "1 of 2 input(s) failed" in err
    assert err.count("bad.nii") == 1  # the file is named once
    assert "warning: good.nii.gz: the input is t2 but this model was trained on t1" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good_synthetic.nii.gz"]


def test_console_script_runs_without_traceback(model: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("duald-synthesize")
    if not script.exists():
        pytest.skip("the duald-synthesize console script is not installed in this environment")
    source = _write(head(), tmp_path / "in.nii.gz")
    out = tmp_path / "out.nii.gz"
    done = subprocess.run([str(script), str(source), "-o", str(out), "--model", str(model)],
                          capture_output=True, text=True, encoding="utf-8", check=False)
    assert done.returncode == 0, done.stderr
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))).all()
    bad = subprocess.run([str(script), str(tmp_path / "missing.nii.gz"), "-o", str(out), "--model", str(model)],
                         capture_output=True, text=True, encoding="utf-8", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr


def _write_dicom_series(image: sitk.Image, folder: Path, modality: str) -> None:
    """One file per slice with the tags GDCM needs to rebuild the series geometry."""
    folder.mkdir(parents=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        tags = {
            "0008|0060": modality, "0020|000e": series_uid, "0020|000d": series_uid + ".1",
            "0008|0018": f"{series_uid}.2.{k}", "0020|0013": str(k),
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0037": "\\".join(map(str, (*direction[0:7:3], *direction[1:8:3]))),
            "0018|0050": str(image.GetSpacing()[2]), "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


def test_dicom_series_folder_with_modality_tag(model: Path, tmp_path: Path, capsys) -> None:
    source = head(spacing=(0.8, 0.8, 3.0), origin=(-19.0, -20.0, 40.0))
    _write_dicom_series(source, tmp_path / "series", "CT")
    out = tmp_path / "out.nii.gz"
    code, _stdout, err = _run(capsys, str(tmp_path / "series"), "-o", str(out), "--model", str(model))
    assert code == 0, err
    assert "warning: series: the input is CT but this model was trained on t1" in err
    result = sitk.ReadImage(str(out))
    assert result.GetSize() == source.GetSize()
    assert result.GetSpacing() == pytest.approx(source.GetSpacing(), abs=1e-4)
    assert result.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-3)
