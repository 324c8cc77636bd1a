"""The user's models folder: every bundle in it listed for the panel and the viewer, a fine-tuned one
labelled with its parent and site, an unreadable file skipped with its reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from bundles import make_bundle
from DualDSynthesisLib.core.errors import DualDError
from DualDSynthesisLib.imaging.bundle import METADATA_KEY, read_metadata, save_file
from DualDSynthesisLib.scene import models
from DualDSynthesisLib.scene.logic import DualDSynthesisLogic
from safetensors.torch import load_file


def _fine_tune(parent: Path, out: Path, site: str) -> Path:
    """A copy of ``parent`` whose provenance records it as its parent at ``site``, as finetune.py writes it."""
    meta = read_metadata(parent)
    record = {"name": meta.name, "file": parent.name, "sha256": "0" * 64}
    meta = dataclasses.replace(meta, name=f"{meta.name}, fine-tuned at {site}",
                               provenance={**meta.provenance, "parent": record, "site": site})
    save_file(load_file(str(parent)), out, metadata={METADATA_KEY: meta.to_json()})
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    plain = make_bundle(tmp_path / "a_plain.safetensors")
    _fine_tune(plain, tmp_path / "b_tuned.safetensors", "hospital_x")
    (tmp_path / "c_broken.safetensors").write_bytes(b"not a bundle at all")
    (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
    sub = tmp_path / "nested"
    sub.mkdir()
    make_bundle(sub / "deeper.safetensors")
    return tmp_path


def test_every_bundle_of_the_folder_is_listed_not_recursively(folder: Path) -> None:
    entries = models.models_in(folder)
    assert [e.path.name for e in entries] == ["a_plain.safetensors", "b_tuned.safetensors", "c_broken.safetensors"]
    assert [e.readable for e in entries] == [True, True, False]
    assert DualDSynthesisLogic.models_in(folder) == entries  # the logic's alias is the same function


def test_a_fine_tuned_bundle_is_labelled_with_its_parent_and_site(folder: Path) -> None:
    plain, tuned, _ = models.models_in(folder)
    parent_name = read_metadata(folder / "a_plain.safetensors").name
    assert plain.label == "a_plain"
    assert "b_tuned" in tuned.label and parent_name in tuned.label and "hospital_x" in tuned.label
    assert "\n" not in tuned.label


def test_an_unreadable_file_is_skipped_with_its_reason(folder: Path) -> None:
    broken = models.models_in(folder)[2]
    assert broken.metadata is None
    assert broken.problem and "c_broken.safetensors" in broken.problem
    assert broken.problem in broken.label and "unreadable" in broken.label


def test_a_missing_models_folder_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(DualDError, match=r"models folder .* does not exist"):
        models.models_in(tmp_path / "nowhere")


def test_the_viewer_accepts_a_models_folder_and_refuses_a_missing_one(folder: Path, capsys) -> None:
    view_cli = pytest.importorskip("DualDViewLib.cli")
    args = view_cli._parser().parse_args(["--models", str(folder)])
    assert args.models == folder and view_cli.check_args(args) is None
    missing = folder / "nowhere"
    assert view_cli.main(["--models", str(missing)]) == view_cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "models folder" in err and err.count("\n") == 0


def test_the_panel_lists_only_readable_bundles_and_says_which_were_not(folder: Path) -> None:
    listed, note = models.folder_models(folder)
    assert [e.path.name for e in listed] == ["a_plain.safetensors", "b_tuned.safetensors"]
    assert "c_broken" in note and "a_plain" not in note
    assert models.folder_models("") == ([], "") == models.folder_models(None)
    gone, why = models.folder_models(folder / "nowhere")
    assert gone == [] and "does not exist" in why


def test_a_chosen_bundle_is_described_or_its_problem_said(folder: Path) -> None:
    assert models.describe_model(None) == ""
    plain = folder / "a_plain.safetensors"
    assert models.describe_model(plain) == read_metadata(plain).summary()
    assert "c_broken.safetensors" in models.describe_model(folder / "c_broken.safetensors")
