"""Fault campaign (issue 21), duald-evaluate: --json never replaces what is evaluated (E4), a target of another
modality is refused (E1), a source or target contrast the model was not trained on is warned about (E2)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _training_data import write_subjects
from bundles import make_bundle
from DualDSynthesisLib.cli import synthesize
from DualDSynthesisLib.core.vocabulary import modality_warning
from DualDSynthesisLib.imaging.atomic import same_file
from DualDTrainingLib.evaluate_cli import main

SHAPE = (8, 36, 40)


@pytest.fixture(scope="module")
def t1_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("model") / "t1t2.safetensors")


def _subject(tmp_path: Path) -> tuple[Path, Path]:
    """One BraTS-named subject (t1n, t2w, seg): (data folder, subject folder)."""
    data = write_subjects(tmp_path / "data", n=1, shape=SHAPE)
    return data, next(data.iterdir())


def _evaluate(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _file(folder: Path, suffix: str) -> Path:
    return next(folder.glob(f"*{suffix}"))


# ----------------------------------------------------------------------------- E4: --json onto an input


@pytest.mark.parametrize(("role", "words"), [
    ("source", "the source file of subject"),
    ("target", "the target file of subject"),
    ("mask", "the mask file of subject"),
    ("model", "the model bundle"),
    ("manifest", "the manifest"),
])
def test_json_onto_what_is_evaluated_is_refused_even_with_overwrite(t1_model, tmp_path, capsys, role, words) -> None:
    _data, subject = _subject(tmp_path)
    model = Path(shutil.copy(t1_model, tmp_path / "m.safetensors"))
    manifest = tmp_path / "pairs.csv"
    files = {"source": _file(subject, "-t1n.nii.gz"), "target": _file(subject, "-t2w.nii.gz"),
             "mask": _file(subject, "-seg.nii.gz"), "model": model, "manifest": manifest}
    manifest.write_text(f"subject,source,target,mask\ns1,{files['source']},{files['target']},{files['mask']}\n",
                        encoding="utf-8")
    victim = files[role]
    before = victim.read_bytes()
    # spelled another way than discovery spells it: through ".." of the folder
    json_path = victim.parent / ".." / victim.parent.name / victim.name
    code, out, err = _evaluate(capsys, "--model", str(model), "--data", str(manifest), "--source", "t1",
                               "--target", "t2", "--json", str(json_path), "--overwrite")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("duald-evaluate: error: --json ") and words in err
    assert "choose another file" in err and "PSNR" not in out  # refused before any subject was evaluated
    assert victim.read_bytes() == before


def test_json_through_a_linked_folder_onto_a_volume_is_refused(t1_model, tmp_path, capsys) -> None:
    data, subject = _subject(tmp_path)
    link = tmp_path / "linked"
    try:
        link.symlink_to(subject, target_is_directory=True)
    except OSError:
        pytest.skip("this file system cannot make symbolic links")
    target = _file(subject, "-t2w.nii.gz")
    before = target.read_bytes()
    code, _out, err = _evaluate(capsys, "--model", str(t1_model), "--data", str(data), "--source", "t1",
                                "--target", "t2", "--json", str(link / target.name), "--overwrite")
    assert code == 2 and "is the target file of subject" in err
    assert target.read_bytes() == before


def test_same_file_sees_hard_links_and_spellings_but_not_siblings(tmp_path) -> None:
    a = tmp_path / "a.nii.gz"
    a.write_bytes(b"volume")
    assert same_file(a, tmp_path / "sub" / ".." / "a.nii.gz")
    assert not same_file(a, tmp_path / "b.nii.gz")  # b does not exist
    (tmp_path / "c.nii.gz").write_bytes(b"volume")
    assert not same_file(a, tmp_path / "c.nii.gz")  # equal content is not the same file
    try:
        os.link(a, tmp_path / "hard.nii.gz")
    except OSError:
        pytest.skip("this file system cannot make hard links")
    assert same_file(a, tmp_path / "hard.nii.gz")


def test_an_earlier_report_is_still_replaced_with_overwrite(t1_model, tmp_path, capsys) -> None:
    data, _subject_folder = _subject(tmp_path)
    report = tmp_path / "eval.json"
    report.write_text("{}", encoding="utf-8")
    code, _out, err = _evaluate(capsys, "--model", str(t1_model), "--data", str(data), "--source", "t1",
                                "--target", "t2", "--json", str(report), "--overwrite")
    assert code == 0, err
    assert '"summary"' in report.read_text(encoding="utf-8")


def test_json_naming_a_folder_is_one_line(t1_model, tmp_path, capsys) -> None:
    data, subject = _subject(tmp_path)
    code, out, err = _evaluate(capsys, "--model", str(t1_model), "--data", str(data), "--source", "t1",
                               "--target", "t2", "--json", str(subject), "--overwrite")
    assert code == 2 and err.strip() == f"duald-evaluate: error: --json {subject} is a folder, not a file name"
    assert subject.is_dir() and "PSNR" not in out


# ----------------------------------------------------------------------------- E1: a target of another modality


def test_ct_model_against_an_mri_target_is_refused_without_hu_numbers(tmp_path, capsys) -> None:
    data, _subject_folder = _subject(tmp_path)
    model = make_bundle(tmp_path / "ct.safetensors", target="ct")
    report = tmp_path / "eval.json"
    code, out, err = _evaluate(capsys, "--model", str(model), "--data", str(data), "--source", "t1",
                               "--target", "t2", "--json", str(report))
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("duald-evaluate: error: this model synthesises ct images but --target is t2")
    assert "HU" not in out and "dose" not in out and "PSNR" not in out and not report.exists()


def test_mri_model_against_a_ct_target_is_refused(t1_model, tmp_path, capsys) -> None:
    _data, subject = _subject(tmp_path)
    t2 = _file(subject, "-t2w.nii.gz")
    t2.rename(t2.with_name(t2.name.replace("-t2w", "-ct")))
    code, out, err = _evaluate(capsys, "--model", str(t1_model), "--data", str(tmp_path / "data"), "--source", "t1",
                               "--target", "ct")
    assert code == 2 and "this model synthesises t2 images but --target is ct" in err and "PSNR" not in out


# ----------------------------------------------------------------------------- E2: contrasts the model did not see


def test_a_flair_source_for_a_t1_model_warns_as_duald_synthesize_does(t1_model, tmp_path, capsys) -> None:
    _data, subject = _subject(tmp_path)
    t1 = _file(subject, "-t1n.nii.gz")
    flair = t1.rename(t1.with_name(t1.name.replace("-t1n", "-t2f")))
    code, out, err = _evaluate(capsys, "--model", str(t1_model), "--data", str(tmp_path / "data"),
                               "--source", "flair", "--target", "t2")
    assert code == 0, err
    sentence = modality_warning("flair", "t1")
    assert sentence is not None and f"duald-evaluate: warning: {sentence}" in err.splitlines()
    assert "PSNR" in out  # a warning, not a refusal: the scores are still computed
    assert synthesize.main(["-q", str(flair), "-o", str(tmp_path / "s.nii.gz"), "--model", str(t1_model),
                            "--device", "cpu", "--source-modality", "flair"]) == 0
    assert sentence in capsys.readouterr().err  # the same words as duald-synthesize for the same input


def test_matching_contrasts_give_no_warning(t1_model, tmp_path, capsys) -> None:
    data, _subject_folder = _subject(tmp_path)
    code, _out, err = _evaluate(capsys, "--model", str(t1_model), "--data", str(data), "--source", "t1n",
                                "--target", "t2w")
    assert code == 0, err
    assert "warning" not in err


def test_another_mri_target_contrast_warns(t1_model, tmp_path, capsys) -> None:
    _data, subject = _subject(tmp_path)
    t2 = _file(subject, "-t2w.nii.gz")
    t2.rename(t2.with_name(t2.name.replace("-t2w", "-t2f")))
    code, _out, err = _evaluate(capsys, "--model", str(t1_model), "--data", str(tmp_path / "data"),
                                "--source", "t1", "--target", "flair")
    assert code == 0, err
    assert "duald-evaluate: warning: this model synthesises t2 images but --target is flair" in err
