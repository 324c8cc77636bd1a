"""Automatic model choice (imaging/model_choice.py) and the file-name contrasts cohort pairing reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from DualDSynthesisLib.core.file_contrasts import subject_and_contrast
from DualDSynthesisLib.imaging.model_choice import ModelChoiceError, choose_model
from DualDTrainingLib import discovery
from input_bundles import models_folder

MODELS = {
    "t1_to_t2": ("t1", "t2"),
    "any_to_t2": ("t1,flair,t1c", "t2"),
    "t1flair_to_t2": ("t1,flair", "t2"),
    "t1t2_to_flair": ("t1,t2", "flair"),
    "flair_to_t2": ("flair", "t2"),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return models_folder(tmp_path_factory.mktemp("models"), MODELS)


def _choose(folder: dict[str, Path], given: list[str], target: str | None = "t2", **kw) -> str:
    return choose_model(given, target, candidates=folder.values(), default=folder["t1_to_t2"], **kw).path.stem


def test_the_model_reading_the_most_given_inputs_wins(folder: dict[str, Path]) -> None:
    assert _choose(folder, ["t1"]) == "t1_to_t2"  # a tie among three readers of t1: the default
    assert _choose(folder, ["t1", "flair"]) == "any_to_t2"  # two read both: no default among them, first by name
    assert _choose(folder, ["T1w", "t1ce"]) == "any_to_t2"  # aliases
    assert _choose(folder, ["flair"]) == "flair_to_t2"  # t1 is required by the others
    assert _choose(folder, ["t1", "t2"], "flair") == "t1t2_to_flair"


def test_the_default_models_target_is_wanted_unless_another_is_named(folder: dict[str, Path]) -> None:
    assert _choose(folder, ["t1"], None) == "t1_to_t2"
    assert _choose(folder, ["t1"], "FLAIR") == "t1t2_to_flair"  # t2 optional: t1 alone is accepted


def test_the_note_says_which_model_and_why(folder: dict[str, Path]) -> None:
    choice = choose_model(["flair", "t1"], "t2", candidates=folder.values(), default=folder["t1_to_t2"])
    assert choice.reads == ("t1", "flair") and not choice.is_default
    assert choice.note.startswith("model any_to_t2 chosen automatically (t1 + flair → t2)")
    assert "most of the given inputs (2)" in choice.note
    default = choose_model(["t1"], None, candidates=folder.values(), default=folder["t1_to_t2"])
    assert default.is_default and "the default model" in default.note


@pytest.mark.parametrize(("given", "target", "match"), [
    (["t1", "dwi"], "t2", "no bundled model synthesises t2 from t1 \\+ dwi"),
    (["t1"], "ct", "no bundled model synthesises ct from t1"),
    (["t1", "t2", "flair"], "t2", "from t1 \\+ t2 \\+ flair"),
])
def test_no_fitting_model_is_one_sentence_listing_the_offer(folder: dict[str, Path], given, target, match) -> None:
    with pytest.raises(ModelChoiceError, match=match) as caught:
        _choose(folder, given, target)
    assert "any_to_t2 (t1 + optional flair, t1c → t2)" in str(caught.value) and "--model" in str(caught.value)


def test_partial_choice_leaves_contrasts_no_model_reads_unused(folder: dict[str, Path]) -> None:
    # a BraTS subject: the t2 is the target, not an input; no t2 model reads dwi
    choice = choose_model(["t1", "flair", "dwi"], "t2", partial=True, candidates=folder.values(),
                          default=folder["t1_to_t2"])
    assert choice.path.stem == "any_to_t2" and choice.unused == ("dwi",) and "not used: dwi" in choice.note
    with pytest.raises(ModelChoiceError):
        _choose(folder, ["t1", "flair", "dwi"])  # strict: every given input must be read


def test_an_unnamed_reference_serves_each_models_reference(folder: dict[str, Path]) -> None:
    assert _choose(folder, ["flair"], unnamed_reference=True) == "any_to_t2"  # patient.nii.gz + flair
    assert _choose(folder, [], unnamed_reference=True) == "t1_to_t2"


def test_unreadable_bundles_are_never_chosen(folder: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "aaa_broken.safetensors"
    broken.write_bytes(b"not a bundle")
    assert choose_model(["t1"], "t2", candidates=[broken, folder["flair_to_t2"], folder["t1_to_t2"]],
                        default=folder["t1_to_t2"]).path.stem == "t1_to_t2"


def test_the_shipped_models_serve_t1_alone_and_refuse_what_no_model_reads() -> None:
    """The bundled models themselves (Resources/Models). The LOSO rows chose no multi-input model
    (docs/generalisation.md, "Several inputs"): T1 goes to the default; T1 + FLAIR → T2 and a FLAIR target are
    refused naming what each bundled model reads, rather than quietly dropping an input."""
    assert choose_model(["t1w"]).path.stem == "t1_to_t2"
    with pytest.raises(ModelChoiceError, match=r"no bundled model synthesises t2 from t1 \+ flair.*t1_to_t2 \(t1"):
        choose_model(["t1", "flair"], "t2")
    with pytest.raises(ModelChoiceError, match="no bundled model synthesises flair from t1 \\+ t2"):
        choose_model(["t1", "t2"], "flair")


@pytest.mark.parametrize(("name", "expected"), [
    ("BraTS-GLI-00001-000-t1n.nii.gz", ("BraTS-GLI-00001-000", "t1")),
    ("TCGA-DU-7294_t1_bet.nii.gz", ("TCGA-DU-7294", "t1")),
    ("sub-01_flair.nii.gz", ("sub-01", "flair")), ("sub-01_T1w.nrrd", ("sub-01", "t1")),
    ("case_t1ce_n4_reg.mha", ("case", "t1c")), ("T2.nii", ("", "t2")), ("sub01_t1c.nii.gz", ("sub01", "t1c")),
    ("notes.txt", None), ("sub01.nii.gz", None), ("sub01_dwi.nhdr", ("sub01", "dwi")),
    ("sub01_seg.nii.gz", ("sub01", "seg")), ("x_t2f.nii.gz", ("x", "flair")),
    ("sub01-t1-brain.nii.gz", ("sub01", "t1")),
])
def test_cohort_naming_is_training_discoverys(name: str, expected: tuple[str, str] | None) -> None:
    """One naming (core/file_contrasts.py) for the command line's cohorts and training discovery."""
    assert subject_and_contrast(name) == expected
    assert discovery.contrast_of(name) == (expected[1] if expected else None)
