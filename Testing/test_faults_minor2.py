"""The fault campaign's minor rows (issue 21, item 4): the overview's background is one colour, a full disk is one
line (the NIfTI library's own complaint held back), a killed DICOM export's staged folder is swept, an output
onto the input is refused as such, a cohort run into its own folder skips its earlier outputs, ``make
view-demo`` reuses the demo's files, and the README says to activate the venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from _cli import run_quiet
from DualDSynthesisLib.cli import demo
from DualDSynthesisLib.cli import synthesize as cli
from DualDSynthesisLib.core.errors import OutputWriteError
from DualDSynthesisLib.imaging import atomic, heatmap_kinds
from DualDSynthesisLib.imaging.output_names import SYNTHETIC_SUFFIX, heatmap_suffix, is_derived_output
from DualDSynthesisLib.imaging.overview import BLACK_LEVEL_CAP, CAPTION_HEIGHT, GAP, PANEL_HEIGHT, overview_image
from test_engine import head
from test_faults_outputs import _fill, _small_tmpfs

ROOT = Path(__file__).resolve().parents[1]
NIFTI_COMPLAINT = b"** ERROR: NWAD: wrote only 0 of 1000 bytes to file\n"  # what the C library prints





def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- the overview's background


def _ball_volumes(background_high: float) -> tuple[sitk.Image, sitk.Image]:
    """A source (a bright ball on 0) and a synthetic whose background is 0 in the lower half of the slices and
    ``background_high`` in the upper half, as the engine leaves it (G's clipped output inside the processed
    slices, its blank response in the skipped ones)."""
    k, j, i = np.mgrid[:24, :64, :64]
    ball = (k - 12) ** 2 + (j - 32) ** 2 + (i - 32) ** 2 < 9**2
    src = np.where(ball, 100.0, 0.0).astype(np.float32)
    syn = np.where(k < 12, 0.0, background_high).astype(np.float32)
    syn[ball] = 1000.0
    return sitk.GetImageFromArray(src), sitk.GetImageFromArray(syn)


def _synthetic_where_source_is_black(figure: sitk.Image) -> np.ndarray:
    """The synthetic column's pixels (red channel) wherever the source column beside it is pure black."""
    rgb = sitk.GetArrayFromImage(figure)[CAPTION_HEIGHT:]
    cell = (rgb.shape[1] - 2 * GAP) // 3
    values = []
    for row in range(3):
        band = rgb[row * (PANEL_HEIGHT + GAP):row * (PANEL_HEIGHT + GAP) + PANEL_HEIGHT]
        source, synthetic = band[:, :cell], band[:, cell + GAP:2 * cell + GAP]
        values.append(synthetic[source.max(axis=-1) == 0][:, 0])
    return np.concatenate(values)


def test_the_overview_background_is_one_colour() -> None:
    src, syn = _ball_volumes(12.93)
    background = _synthetic_where_source_is_black(overview_image(src, syn, None))
    assert background.size > 1000
    assert np.unique(background).tolist() == [0]


def test_the_overview_never_blackens_more_than_the_cap() -> None:
    # A synthetic that is bright where the source is empty (a real structure, not G's background noise) stays
    # visible: the black level rises at most BLACK_LEVEL_CAP of the window.
    src, syn = _ball_volumes(500.0)
    background = _synthetic_where_source_is_black(overview_image(src, syn, None))
    shown = (500.0 - BLACK_LEVEL_CAP * 1000.0) / ((1 - BLACK_LEVEL_CAP) * 1000.0) * 255
    assert background.max() >= shown - 2


# ----------------------------------------------------------------------------- a full disk: one line


def _complaining_writer(good: bool):
    def write(tmp: Path) -> None:
        os.write(2, NIFTI_COMPLAINT)  # at the file-descriptor level, as a C library does
        tmp.write_bytes(b"x" * (1000 if good else 10))
    return write


def test_a_failed_write_holds_back_what_the_writer_printed(tmp_path: Path, capfd) -> None:
    with pytest.raises(OutputWriteError, match="incomplete"):
        atomic.atomic_write(tmp_path / "a.bin", _complaining_writer(good=False),
                            verify=lambda p: None if p.stat().st_size == 1000 else "short")
    assert capfd.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []


def test_a_good_write_passes_on_what_the_writer_printed(tmp_path: Path, capfd) -> None:
    atomic.atomic_write(tmp_path / "a.bin", _complaining_writer(good=True))
    assert capfd.readouterr().err.encode() == NIFTI_COMPLAINT
    os.write(2, b"after\n")  # fd 2 is back where it was
    assert capfd.readouterr().err == "after\n"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_disk_full_on_a_real_tmpfs_prints_one_line_at_the_descriptor_level(model, tmp_path, capfd, suffix) -> None:
    source = tmp_path / "in" / "sub01_t1.nii.gz"
    source.parent.mkdir()
    sitk.WriteImage(head(), str(source))
    with _small_tmpfs(tmp_path / "full") as out:
        _fill(out, 8 * 1024)
        code = cli.main(["-q", str(source), "-o", str(out / f"syn{suffix}"), "--model", str(model),
                         "--device", "cpu"])
        err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "disk full" in err[0] and "** ERROR" not in err[0]


# ----------------------------------------------------------------------------- a killed DICOM export


def test_a_killed_exports_staged_folder_is_swept_by_the_next_run(model, tmp_path, capsys) -> None:
    source = tmp_path / "in" / "sub01_t1.nii.gz"
    source.parent.mkdir()
    sitk.WriteImage(head(), str(source))
    staged = atomic.temporary_name(tmp_path / "out" / "dicom")  # as io.AtomicOutputs.stage_folder names it
    staged = staged.with_name(staged.name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-"))
    (staged / "SYNTHETIC").mkdir(parents=True)
    (staged / "SYNTHETIC" / "0001.dcm").write_bytes(b"\0" * 2048)
    code, err = run_quiet(capsys, str(source), "--dicom-out", str(tmp_path / "out" / "dicom"), "--model", str(model),
                     "--device", "cpu", "--overwrite")
    assert code == 0, err
    assert not staged.exists()
    assert any("removed 1 unfinished file(s)" in line for line in err)


def test_a_live_writers_staged_folder_is_left_alone(tmp_path: Path) -> None:
    staged = atomic.temporary_name(tmp_path / "dicom")  # this process is alive
    staged.mkdir()
    assert atomic.remove_stale_partials(tmp_path) == []
    assert staged.is_dir()


# ----------------------------------------------------------------------------- an output onto the input


@pytest.mark.parametrize("option", ["-o", "--heatmap", "--png"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_onto_the_input_is_refused_as_such(model, tmp_path, capsys, option, overwrite) -> None:
    source = tmp_path / "t1.nii.gz"
    sitk.WriteImage(head(), str(source))
    before = source.read_bytes()
    extra = ["-o", str(tmp_path / "syn.nii.gz")] if option != "-o" else []
    code, err = run_quiet(capsys, str(source), option, str(source), *extra, "--model", str(model), "--device", "cpu",
                     *(["--overwrite"] if overwrite else []))
    assert code == 2 and len(err) == 1, err
    assert "is the input file itself" in err[0] and "pass --overwrite" not in err[0]
    assert source.read_bytes() == before


def test_a_link_to_the_input_is_the_input(model, tmp_path, capsys) -> None:
    source = tmp_path / "t1.nii.gz"
    sitk.WriteImage(head(), str(source))
    link = tmp_path / "link.nii.gz"
    try:
        link.symlink_to(source)
    except OSError:
        pytest.skip("no symbolic links here")
    code, err = run_quiet(capsys, str(source), "-o", str(link), "--model", str(model), "--device", "cpu")
    assert code == 2 and "is the input file itself" in err[0]


def test_an_output_onto_the_brain_mask_is_refused(model, tmp_path, capsys) -> None:
    # found by the evaluation fault campaign: `-o mask.nii.gz --mask mask.nii.gz --overwrite` replaced the mask
    source, mask = tmp_path / "t1.nii.gz", tmp_path / "mask.nii.gz"
    image = head()
    sitk.WriteImage(image, str(source))
    sitk.WriteImage(sitk.Cast(image > 0, sitk.sitkUInt8), str(mask))
    before = mask.read_bytes()
    code, err = run_quiet(capsys, str(source), "--mask", str(mask), "-o", str(mask), "--model", str(model),
                     "--device", "cpu", "--overwrite")
    assert code == 2 and len(err) == 1, err
    assert "is the --mask file itself" in err[0]
    assert mask.read_bytes() == before


# ----------------------------------------------------------------------------- a cohort into its own folder


def test_a_cohort_run_into_its_own_folder_twice_skips_its_outputs(model, tmp_path, capsys) -> None:
    folder = tmp_path / "cohort"
    folder.mkdir()
    for name in ("a_t1.nii.gz", "b_t1.nii.gz"):
        sitk.WriteImage(head(), str(folder / name))
    argv = (str(folder), "-o", str(folder), "--heatmap", str(folder), "--model", str(model), "--device", "cpu")
    assert run_quiet(capsys, *argv)[0] == 0
    first = sorted(p.name for p in folder.iterdir())
    code, err = run_quiet(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == first  # no a_t1_synthetic_synthetic.nii.gz
    assert any("skipped 4 file(s) named as this program names its outputs" in line for line in err)


def test_a_folder_of_outputs_only_is_refused(model, tmp_path, capsys) -> None:
    sitk.WriteImage(head(), str(tmp_path / f"a{SYNTHETIC_SUFFIX}"))
    code, err = run_quiet(capsys, str(tmp_path), "-o", str(tmp_path / "out"), "--model", str(model), "--device", "cpu")
    assert code == 2 and len(err) == 1 and "only outputs of an earlier run" in err[0]


def test_our_output_names_are_recognised_and_nothing_else() -> None:
    assert is_derived_output(Path(f"x{SYNTHETIC_SUFFIX}"))
    for kind in heatmap_kinds.names():  # every kind's heatmap name, whatever the case
        assert is_derived_output(Path(f"X{heatmap_suffix(kind).upper()}"))
    assert not is_derived_output(Path("t1.nii.gz")) and not is_derived_output(Path("synthetic.nii.gz"))
    assert not is_derived_output(Path(SYNTHETIC_SUFFIX))  # no stem: not a name we derive


# ----------------------------------------------------------------------------- make view-demo


def _fake_project(tmp_path: Path) -> Path:
    """The Makefile in a folder with a stand-in venv whose python and duald-view only echo."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "duald-view"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\"\n")
        (bin_dir / tool).chmod(0o755)
    model = tmp_path / "DualDSynthesis" / "Resources" / "Models" / "t1_to_t2.safetensors"
    model.parent.mkdir(parents=True)
    for path in (tmp_path / "pyproject.toml", tmp_path / ".venv" / ".installed", model):
        path.write_text("")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    return model


def _view_demo_runs_the_demo(folder: Path) -> bool:
    done = subprocess.run(["make", "-n", "view-demo"], cwd=folder, capture_output=True, text=True, check=True)
    assert "duald-view" in done.stdout
    return "DualDSynthesisLib.cli.demo --output" in done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_view_demo_reuses_the_demos_files_until_the_model_is_newer(tmp_path: Path) -> None:
    model = _fake_project(tmp_path)
    assert _view_demo_runs_the_demo(tmp_path)  # nothing there yet
    out = tmp_path / "demo-output"
    out.mkdir()
    half_an_hour_ago = time.time() - 1800  # explicit times: the clock's granularity may make "now" equal
    for key in ("synthetic", "heatmap"):
        (out / demo.OUTPUTS[key]).write_text("")
        os.utime(out / demo.OUTPUTS[key], (half_an_hour_ago, half_an_hour_ago))
    assert not _view_demo_runs_the_demo(tmp_path)  # the model is an hour old
    os.utime(model)  # a new model: its outputs are out of date
    assert _view_demo_runs_the_demo(tmp_path)
    for key in ("synthetic", "heatmap"):
        os.utime(out / demo.OUTPUTS[key], (time.time() + 60, time.time() + 60))
    (out / demo.OUTPUTS["heatmap"]).unlink()
    assert _view_demo_runs_the_demo(tmp_path)  # one missing


# ----------------------------------------------------------------------------- the README


def test_the_readme_says_to_activate_the_venv_before_any_command_example() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_command = min(text.index(f"{tool} ") for tool in ("duald-synthesize", "duald-view", "duald-train"))
    assert "source .venv/bin/activate" in text[:first_command]
