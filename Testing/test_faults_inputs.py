"""Fault campaign (issue 15), inputs: a bad file in a cohort, absurd or non-finite bundles, NaN voxels in
NIfTI, the Slicer panel's default model, one user-error base class, manifests with same-named files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from _cli import run_quiet
from DualDSynthesisLib.cli import synthesize as cli
from DualDSynthesisLib.core.errors import DualDError
from DualDSynthesisLib.core.resources import DEFAULT_MODEL
from DualDSynthesisLib.imaging import io
from DualDSynthesisLib.imaging.bundle import METADATA_KEY, BundleError, load_bundle
from DualDSynthesisLib.inference import engine as engine_module
from safetensors.torch import load_file, save_file
from test_engine import head


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


# ----------------------------------------------------------------------------- row 3: one bad file in a cohort


def test_a_huge_spacing_first_in_a_cohort_is_one_line_and_the_rest_run(model, tmp_path, capsys) -> None:
    inputs = tmp_path / "in"
    _write(head(size=(240, 240, 2), spacing=(50.0, 50.0, 1.0)), inputs / "a_bad_t1.nii.gz")  # sorted first
    _write(head(), inputs / "b_good_t1.nii.gz")
    out = tmp_path / "out"
    code, err = run_quiet(capsys, str(inputs), "-o", str(out), "--model", str(model), "--device", "cpu")
    assert code == 2
    assert err[0].startswith("duald-synthesize: error: a_bad_t1.nii.gz: ") and "12000×12000" in err[0]
    assert "maximum 4096" in err[0] and err[-1] == "duald-synthesize: 1 of 2 input(s) failed"
    # the good input's only line on stderr: what its skull handling did (skull_policy's note)
    assert len(err) == 3 and err[1].startswith("duald-synthesize: note: b_good_t1.nii.gz: the input was synthesised "
                                               "as it is (skull handling 'auto'"), err
    assert sorted(p.name for p in out.iterdir()) == ["b_good_t1_synthetic.nii.gz"]


def test_a_programming_error_in_a_cohort_is_not_swallowed(model, tmp_path, capsys, monkeypatch) -> None:
    inputs = tmp_path / "in"
    _write(head(), inputs / "a_t1.nii.gz")
    _write(head(), inputs / "b_t1.nii.gz")

    def buggy(*_args, **_kwargs):
        raise TypeError("unsupported operand type(s)")  # a bug in our code, not the user's input

    monkeypatch.setattr(engine_module.SynthesisEngine, "run", buggy)
    with pytest.raises(TypeError):
        cli.main(["-q", str(inputs), "-o", str(tmp_path / "out"), "--model", str(model), "--device", "cpu"])


def test_itk_allocation_failure_is_one_line_per_input(model, tmp_path, capsys, monkeypatch) -> None:
    inputs = tmp_path / "in"
    _write(head(), inputs / "a_t1.nii.gz")
    _write(head(), inputs / "b_t1.nii.gz")
    real = engine_module.SynthesisEngine.run
    calls = []

    def first_fails(self, image, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Exception thrown in SimpleITK Resample: Failed to allocate memory for image.")
        return real(self, image, **kwargs)

    monkeypatch.setattr(engine_module.SynthesisEngine, "run", first_fails)
    code, err = run_quiet(capsys, str(inputs), "-o", str(tmp_path / "out"), "--model", str(model), "--device", "cpu")
    assert code == 2 and err[0] == "duald-synthesize: error: a_t1.nii.gz: not enough memory to process it " \
                                   "(ITK could not allocate the image)"
    assert (tmp_path / "out" / "b_t1_synthetic.nii.gz").is_file()


def test_every_user_error_class_derives_from_one_base() -> None:
    from DualDSynthesisLib.imaging.bundle import BundleError
    from DualDSynthesisLib.imaging.devices import DeviceError
    from DualDSynthesisLib.imaging.io import VolumeReadError
    from DualDSynthesisLib.imaging.preprocess import PreprocessError
    from DualDSynthesisLib.inference.engine import SynthesisError
    from DualDTrainingLib.checkpoint import CheckpointError
    from DualDTrainingLib.discovery import DiscoveryError
    from DualDTrainingLib.errors import TrainingError

    for cls in (BundleError, DeviceError, SynthesisError, VolumeReadError, PreprocessError, CheckpointError,
                DiscoveryError, TrainingError):
        assert issubclass(cls, DualDError) and issubclass(cls, ValueError), cls


# ----------------------------------------------------------------------------- row 5: default model in the panel


def test_the_panel_default_is_the_documented_t1_to_t2_model(tmp_path) -> None:
    from DualDSynthesisLib.scene.logic import DualDSynthesisLogic

    shipped = DualDSynthesisLogic.bundled_models()
    assert shipped and shipped[0] == DEFAULT_MODEL  # the combo box's fallback entry 0 and the self-test's pick
    assert DualDSynthesisLogic.default_model_name() == "t1_to_t2" == shipped[0].stem
    for name in ("a_first.safetensors", "mri_to_ct_demo.safetensors", DEFAULT_MODEL.name, "z_last.safetensors"):
        (tmp_path / name).write_bytes(b"")
    order = [p.name for p in DualDSynthesisLogic.bundled_models(tmp_path)]
    assert order == [DEFAULT_MODEL.name, "a_first.safetensors", "mri_to_ct_demo.safetensors", "z_last.safetensors"]


# ----------------------------------------------------------------------------- rows 6, 7: bundles


def _edited(src: Path, dst: Path, edit_meta=None, edit_tensors=None) -> Path:
    tensors = load_file(str(src))
    with open(src, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        meta = json.loads(json.loads(fh.read(n))["__metadata__"][METADATA_KEY])
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(dst), metadata={METADATA_KEY: json.dumps(meta)})
    return dst


def test_nan_weights_are_refused_at_load(model, tmp_path, capsys) -> None:
    def poison(tensors):
        key = next(k for k in tensors if k.startswith("generator.") and tensors[k].is_floating_point())
        tensors[key] = torch.full_like(tensors[key], float("nan"))

    bad = _edited(model, tmp_path / "nan.safetensors", edit_tensors=poison)
    with pytest.raises(BundleError, match="NaN or infinite weights"):
        load_bundle(bad)
    source = _write(head(), tmp_path / "s_t1.nii.gz")
    code, err = run_quiet(capsys, str(source), "-o", str(tmp_path / "o.nii.gz"), "--model", str(bad), "--device", "cpu")
    assert code == 2 and len(err) == 1 and "NaN or infinite weights" in err[0]
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize(("edit", "words"), [
    (lambda m: m["architecture"].update(g_depth=40), "g_depth must be at most 7"),
    (lambda m: m.update(source_modality=5), "source_modality must be text"),
    (lambda m: m["preprocessing"].update(spacing=[0.001, 0.001]), "spacing must be between"),
    (lambda m: m.update(preprocessing=[1, 2]), "preprocessing must be a JSON object"),
])
def test_absurd_metadata_that_still_parses_is_one_sentence(model, tmp_path, capsys, edit, words) -> None:
    bad = _edited(model, tmp_path / "edited.safetensors", edit_meta=edit)
    source = _write(head(), tmp_path / "s_t1.nii.gz")
    code, err = run_quiet(capsys, str(source), "-o", str(tmp_path / "o.nii.gz"), "--model", str(bad), "--device", "cpu")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("duald-synthesize: error: ") and words in err[0]


# ----------------------------------------------------------------------------- row 8: NaN voxels in NIfTI


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_nan_voxels_are_refused_in_every_format(model, tmp_path, capsys, suffix) -> None:
    arr = sitk.GetArrayFromImage(head()).astype(np.float32)
    arr[2, 20, 20] = np.nan
    arr[3, 21, 21] = np.inf
    source = _write(io.array_to_image(arr), tmp_path / f"nan_t1{suffix}")
    if suffix != ".nrrd":  # the reason for this row: ITK's NIfTI reader returns 0 for them
        assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(source)))).all()
    code, err = run_quiet(capsys, str(source), "-o", str(tmp_path / "o.nii.gz"), "--model", str(model),
                          "--device", "cpu")
    assert code == 2 and len(err) == 1 and "2 NaN or infinite voxels" in err[0], err
    assert not (tmp_path / "o.nii.gz").exists()


def test_nan_voxels_in_a_training_pair_name_subject_and_file(tmp_path) -> None:
    from _training_data import write_subjects
    from DualDTrainingLib.discovery import DiscoveryError, discover
    from DualDTrainingLib.pair_files import load_pair

    data = write_subjects(tmp_path / "data", n=1)
    pair = discover(data, "t1", "t2").pairs[0]
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(pair.target))).astype(np.float32)
    arr[0, 0, 0] = np.nan
    image = io.array_to_image(arr)
    image.CopyInformation(sitk.ReadImage(str(pair.target)))
    sitk.WriteImage(image, str(pair.target))
    with pytest.raises(DiscoveryError, match=rf"subject {pair.subject}: target file {pair.target.name} has 1 NaN"):
        load_pair(pair)


# ----------------------------------------------------------------------------- issue 9: manifests


def test_manifest_without_subject_column_and_same_named_files(tmp_path) -> None:
    from _training_data import write_subjects
    from DualDTrainingLib.discovery import discover

    raw = write_subjects(tmp_path / "raw", n=3)
    rows = ["source,target"]
    for n, folder in enumerate(sorted(p for p in raw.iterdir() if p.is_dir()), 1):
        case = tmp_path / "cases" / f"case{n}"
        case.mkdir(parents=True)
        t1 = next(p for p in folder.iterdir() if "t1" in p.name)
        t2 = next(p for p in folder.iterdir() if "t2" in p.name)
        (case / "T1.nii.gz").write_bytes(t1.read_bytes())
        (case / "T2.nii.gz").write_bytes(t2.read_bytes())
        rows.append(f"cases/case{n}/T1.nii.gz,cases/case{n}/T2.nii.gz")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    found = discover(manifest, "t1", "t2")
    assert sorted(p.subject for p in found.pairs) == ["case1", "case2", "case3"]
    assert not found.rejected
    assert len(found.notes) == 1 and "parent folder" in found.notes[0] and "case1" in found.notes[0]


def test_manifest_file_listed_under_two_subjects_warns(tmp_path) -> None:
    from _training_data import write_subjects
    from DualDTrainingLib.discovery import discover

    raw = write_subjects(tmp_path / "raw", n=2)
    folders = sorted(p for p in raw.iterdir() if p.is_dir())
    t1 = next(p for p in folders[0].iterdir() if "t1" in p.name)
    t2 = next(p for p in folders[0].iterdir() if "t2" in p.name)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"subject,source,target\nA,{t1},{t2}\nB,{t1},{t2}\n")
    found = discover(manifest, "t1", "t2")
    warnings = [n for n in found.notes if n.startswith("warning:")]
    assert len(warnings) == 2 and "subject A and B" in warnings[0]
