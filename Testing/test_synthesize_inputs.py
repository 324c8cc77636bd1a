"""``duald-synthesize --input CONTRAST=PATH`` (issue 23): what reaches the engine, the automatic model choice,
cohort pairing by contrast, and every bad-input case refused in one sentence with nothing written.

The engine's multi-input synthesis is the engine's (its own tests): here ``synthesize_file`` is a double that
records what the command line hands it, so these tests check the command line alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk
from _cli import run_quiet
from bundles import make_bundle
from DualDSynthesisLib.imaging import model_choice
from DualDSynthesisLib.inference import engine as engine_module
from DualDSynthesisLib.inference.contract import SynthesisResult
from input_bundles import models_folder
from test_engine import head
from test_synthesize_cli import _write_dicom_series


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return models_folder(tmp_path_factory.mktemp("Models"), {
        "t1_to_t2": ("t1", "t2"), "t1flair_to_t2": ("t1,flair", "t2"), "t1t2_to_flair": ("t1,t2", "flair")})


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]) -> list[dict]:
    """The bundled models are ``models``; ``synthesize_file`` records its call (and writes nothing)."""
    monkeypatch.setattr(model_choice, "MODELS_DIR", models["t1_to_t2"].parent)
    monkeypatch.setattr(model_choice, "DEFAULT_MODEL", models["t1_to_t2"])
    recorded: list[dict] = []

    def synthesize_file(**job) -> SynthesisResult:
        recorded.append({**job, "model": job["engine"].bundle_path})
        return SynthesisResult(synthetic=None, heatmap=None)

    monkeypatch.setattr(engine_module, "synthesize_file", synthesize_file)
    return recorded


@pytest.fixture
def subject(tmp_path: Path) -> dict[str, Path]:
    found = {}
    for contrast in ("t1", "flair", "t2"):
        found[contrast] = tmp_path / "in" / f"sub-01_{contrast}.nii.gz"
        found[contrast].parent.mkdir(exist_ok=True)
        sitk.WriteImage(head(), str(found[contrast]))
    return found


def test_inputs_reach_the_engine_as_reference_and_others(calls, models, subject, tmp_path, capsys) -> None:
    out = str(tmp_path / "T2.nii.gz")
    code, err = run_quiet(capsys, "--input", f"flair={subject['flair']}", "--input", f"T1w={subject['t1']}",
                          "-o", out, "--model", str(models["t1flair_to_t2"]))
    assert code == 0, err
    assert calls[0]["input"] == subject["t1"] and calls[0]["others"] == {"flair": subject["flair"]}
    # the positional input is the model's reference
    code, err = run_quiet(capsys, str(subject["t1"]), "--input", f"fla={subject['flair']}", "-o", out,
                          "--model", str(models["t1flair_to_t2"]))
    assert code == 0, err
    assert calls[1]["input"] == subject["t1"] and calls[1]["others"] == {"flair": subject["flair"]}


def test_an_input_may_be_a_dicom_series_folder(calls, models, subject, tmp_path, capsys) -> None:
    _write_dicom_series(head(), tmp_path / "flair_series", "MR")
    code, err = run_quiet(capsys, "--input", f"t1={subject['t1']}", "--input", f"flair={tmp_path / 'flair_series'}",
                          "-o", str(tmp_path / "o.nii.gz"), "--model", str(models["t1flair_to_t2"]))
    assert code == 0, err
    assert calls[0]["others"] == {"flair": tmp_path / "flair_series"}


def test_a_positional_input_alone_runs_as_before(calls, models, subject, tmp_path, capsys) -> None:
    code, err = run_quiet(capsys, str(subject["t1"]), "-o", str(tmp_path / "o.nii.gz"),
                          "--model", str(models["t1flair_to_t2"]))  # an optional input may stay absent
    assert code == 0, err
    assert "others" not in calls[0] and not err


def test_the_model_is_chosen_from_the_given_inputs_with_a_note(calls, models, subject, tmp_path, capsys) -> None:
    out = str(tmp_path / "o.nii.gz")
    code, err = run_quiet(capsys, "--input", f"t1={subject['t1']}", "--input", f"flair={subject['flair']}", "-o", out)
    assert code == 0, err
    assert calls[-1]["model"] == models["t1flair_to_t2"]
    assert err == ["duald-synthesize: note: model t1flair_to_t2 chosen automatically (t1 + flair → t2): the bundled "
                   "model that reads the most of the given inputs (2)"]
    code, err = run_quiet(capsys, "--input", f"t1={subject['t1']}", "-o", out)
    assert code == 0 and calls[-1]["model"] == models["t1_to_t2"] and "the default model" in err[0]
    code, err = run_quiet(capsys, str(subject["t1"]), "--input", f"t2={subject['t2']}", "--target", "flair", "-o", out)
    assert code == 0 and calls[-1]["model"] == models["t1t2_to_flair"]
    assert calls[-1]["input"] == subject["t1"] and calls[-1]["others"] == {"t2": subject["t2"]}


def _refused(capsys, *argv: str, match: str, calls: list[dict], out: Path) -> None:
    code, err = run_quiet(capsys, *argv, "-o", str(out))
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not calls and not out.exists()


@pytest.mark.parametrize(("argv", "match"), [
    (["--input", "t1={t1}", "--input", "T1w={flair}"], "--input t1 and --input T1w are both the t1 input"),
    (["--input", "bogus={t1}"], "'bogus' is not a known image contrast"),
    (["--input", "seg={t1}"], "'seg' is not a known image contrast"),
    (["--input", "{t1}"], "is not CONTRAST=PATH"),
    (["--input", "t1={t1}", "--input", "flair={missing}"], "the flair input {missing} does not exist"),
    (["--input", "t1={t1}", "--input", "flair={folder}"], "is a folder without a DICOM series"),
    (["--input", "flair={flair}", "--model", "{t1flair_to_t2}"], "the model t1flair_to_t2 needs a t1 input"),
    (["{t1}", "--input", "t1={flair}", "--model", "{t1flair_to_t2}"], "INPUT is the model's reference t1 input"),
    (["{t1}", "--source-modality", "t1", "--input", "t1w={flair}"], "--source-modality) and --input gives a t1"),
    (["{t1}", "--input", "flair={flair}", "--model", "{t1_to_t2}"], "the model t1_to_t2: this model does not read "
                                                                    "flair (it reads t1)"),
    (["--input", "t1={t1}", "--input", "dwi={flair}"], "no bundled model synthesises t2 from t1 + dwi"),
    (["--input", "t1={t1}", "--target", "ct"], "no bundled model synthesises ct from t1"),
    (["{t1}", "--target", "flair", "--model", "{t1_to_t2}"], "--target is flair but the model t1_to_t2 synthesises t2"),
    ([], "give an input volume"),
    (["{folder}", "--input", "flair={flair}"], "with a folder of volumes or a glob"),
])
def test_bad_inputs_are_one_sentence_and_nothing_is_written(calls, models, subject, tmp_path, capsys, argv,
                                                            match) -> None:
    (tmp_path / "plain").mkdir()
    sitk.WriteImage(head(), str(tmp_path / "plain" / "a.nii.gz"))
    names = {**{k: str(v) for k, v in subject.items()}, **{k: str(v) for k, v in models.items()},
             "missing": str(tmp_path / "FLAIR.nii.gz"), "folder": str(tmp_path / "plain")}
    _refused(capsys, *[a.format(**names) for a in argv], match=match.format(**names), calls=calls,
             out=tmp_path / "T2.nii.gz")


def test_an_output_onto_another_input_is_refused(calls, models, subject, capsys) -> None:
    code, err = run_quiet(capsys, str(subject["t1"]), "--input", f"flair={subject['flair']}", "-o",
                          str(subject["flair"]), "--model", str(models["t1flair_to_t2"]), "--overwrite")
    assert code == 2 and "is the flair input itself" in err[0] and not calls


def _cohort(folder: Path, names: list[str]) -> None:
    folder.mkdir()
    for name in names:
        sitk.WriteImage(head(), str(folder / name))


def test_cohort_pairs_each_subjects_files_by_contrast(calls, models, tmp_path, capsys) -> None:
    _cohort(tmp_path / "in", ["sub-01_t1.nii.gz", "sub-01_flair.nii.gz", "sub-01_t2.nii.gz", "sub-02_t1w.nii.gz",
                              "sub-03_flair.nii.gz", "sub-01_t1_synthetic.nii.gz", "anonymous.nii.gz"])
    code, err = run_quiet(capsys, str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert code == 2  # sub-03 has no t1: reported, the others still run
    runs = {c["input"].name: c.get("others", {}) for c in calls}
    assert runs == {"sub-01_t1.nii.gz": {"flair": tmp_path / "in" / "sub-01_flair.nii.gz"},
                    "sub-02_t1w.nii.gz": {}, "anonymous.nii.gz": {}}
    assert all(c["model"] == models["t1flair_to_t2"] for c in calls)
    assert calls[0]["output"] == tmp_path / "out" / "anonymous_synthetic.nii.gz"
    text = "\n".join(err)
    assert "note: model t1flair_to_t2 chosen automatically" in text
    assert "not used: 1 file(s) of contrasts the model t1flair_to_t2 does not read (t2)" in text
    assert "skipped 1 file(s) named as this program names its outputs" in text
    assert "error: subject sub-03: no t1 file, which the model t1flair_to_t2 needs" in text
    assert "1 of 4 input(s) failed" in text


def test_cohort_with_a_one_input_model_leaves_the_other_contrasts_alone(calls, tmp_path, capsys) -> None:
    model = make_bundle(tmp_path / "t1only.safetensors")
    _cohort(tmp_path / "in", ["a_t1.nii.gz", "a_flair.nii.gz", "b_t1.nii.gz"])
    code, err = run_quiet(capsys, str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(model))
    assert code == 0, err
    assert [(c["input"].name, c.get("others")) for c in calls] == [("a_t1.nii.gz", None), ("b_t1.nii.gz", None)]
    assert any("not used: 1 file(s) of contrasts the model t1only does not read (flair)" in line for line in err)


def test_cohort_refuses_two_files_of_one_contrast(calls, models, tmp_path, capsys) -> None:
    _cohort(tmp_path / "in", ["a_t1.nii.gz", "a_t1w.nii.gz"])
    code, err = run_quiet(capsys, str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                          "--model", str(models["t1flair_to_t2"]))
    assert code == 2 and not calls and not (tmp_path / "out").exists()
    assert "subject a: several t1 files (a_t1.nii.gz, a_t1w.nii.gz)" in err[0]


def test_a_subject_folder_of_files_named_by_contrast_alone_is_one_synthesis(calls, models, tmp_path, capsys) -> None:
    _cohort(tmp_path / "case", ["T1.nii.gz", "FLAIR.nii.gz", "T2.nii.gz"])
    code, err = run_quiet(capsys, str(tmp_path / "case"), "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert [(c["input"].name, c.get("others")) for c in calls] == [("T1.nii.gz",
                                                                     {"flair": tmp_path / "case" / "FLAIR.nii.gz"})]
    _cohort(tmp_path / "only_flair", ["FLAIR.nii.gz"])
    code, err = run_quiet(capsys, str(tmp_path / "only_flair"), "-o", str(tmp_path / "out2"),
                          "--model", str(models["t1flair_to_t2"]))
    assert code == 2 and "the files named by their contrast alone: no t1 file" in err[-1]
