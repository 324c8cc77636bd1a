"""``duald-evaluate --source t1,flair`` (issue 23): each subject's further inputs are found as training discovery
pairs a subject's files and handed to the engine as ``others``; bad lists are refused in one line.

The engine here is the real one, recording the ``others`` it is given: around a tiny ``t1 + optional flair``
bundle, or around a one-input bundle made to declare ``t1 + optional flair`` (the list checks only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from _training_data import write_subjects
from bundles import make_bundle
from DualDSynthesisLib.inference.engine import SynthesisEngine
from DualDSynthesisLib.model.inputs import InputDeclaration
from DualDTrainingLib import evaluate_cli
from input_bundles import make_input_bundle


class _Declaring:
    """The real metadata, declaring t1 + optional flair."""

    def __init__(self, real) -> None:
        self._real, self.inputs = real, InputDeclaration.parse("t1,flair")

    def __getattr__(self, name: str):
        return getattr(self._real, name)


@pytest.fixture
def given(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    recorded: list[dict] = []

    class Recording(SynthesisEngine):
        @property
        def metadata(self):
            real = self.bundle.metadata
            return _Declaring(real) if len(real.inputs) == 1 else real

        def run(self, image, *args, others=None, **kwargs):
            recorded.append(dict(others or {}))
            if len(self.bundle.metadata.inputs) > 1:
                kwargs["others"] = others
            return super().run(image, *args, **kwargs)

    monkeypatch.setattr(evaluate_cli, "SynthesisEngine", Recording)
    return recorded


def _with_flair(data: Path, subject_index: int = 0) -> Path:
    """A flair file beside one subject's t1 (named as that subject's files are)."""
    subject = sorted(p for p in data.iterdir() if p.is_dir())[subject_index]
    t1 = next(p for p in subject.iterdir() if "t1" in p.name)
    flair = subject / t1.name.replace("t1n", "t2f").replace("_t1_", "_flair_")
    shutil.copy(t1, flair)
    return flair


def test_each_subject_is_synthesised_from_its_listed_inputs(given, tmp_path: Path, capsys) -> None:
    data = write_subjects(tmp_path / "data", n=3, shape=(8, 36, 40))
    flairs = [_with_flair(data, 0), _with_flair(data, 2)]  # BraTS-GLI-00002-000 has no flair: skipped
    model = make_input_bundle(tmp_path / "m.safetensors", "t1,flair")
    out = tmp_path / "eval.json"
    assert evaluate_cli.main(["--model", str(model), "--data", str(data), "--source", "T1,FLAIR", "--target", "t2",
                              "--device", "cpu", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped BraTS-GLI-00002-000: no flair image (a name ending in flair/t2f/fla)" in err
    assert [sorted(o) for o in given] == [["flair"], ["flair"]]
    for others, flair in zip(given, flairs, strict=True):
        assert np.array_equal(sitk.GetArrayFromImage(others["flair"]), sitk.GetArrayFromImage(sitk.ReadImage(flair)))
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["inputs"] == ["t1", "flair"] and len(report["subjects"]) == 2


def test_a_flat_folder_pairs_by_the_subject_prefix(given, tmp_path: Path, capsys) -> None:
    data = write_subjects(tmp_path / "nested", n=2, shape=(8, 36, 40))
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in data.glob("*/*.nii.gz"):
        shutil.copy(path, flat / path.name)
    shutil.copy(next(flat.glob("TCGA*_t1_bet.nii.gz")), flat / "TCGA-DU-7001_flair.nii.gz")
    model = make_input_bundle(tmp_path / "m.safetensors", "t1,flair")
    assert evaluate_cli.main(["--model", str(model), "--data", str(flat), "--source", "t1,flair", "--target", "t2",
                              "--device", "cpu"]) == 0
    assert [sorted(o) for o in given] == [["flair"]]
    assert "skipped BraTS-GLI-00000-000: no flair image" in capsys.readouterr().err


@pytest.mark.parametrize(("source", "match"), [
    ("t1,dwi", "--source t1,dwi: this model does not read dwi"),
    ("flair,t1", "list the model's reference input t1 first"),
    ("t1,t1w", "given twice"),
    ("t1,bogus", "'bogus' is not a known image contrast"),
])
def test_bad_source_lists_are_one_line(given, tmp_path: Path, capsys, source: str, match: str) -> None:
    data = write_subjects(tmp_path / "data", n=1, shape=(8, 36, 40))
    t1 = next(data.glob("*/*t1n.nii.gz"))
    for name in ("dwi", "flair"):
        shutil.copy(t1, t1.with_name(t1.name.replace("t1n", name)))
    model = make_bundle(tmp_path / "m.safetensors", with_d2=False)
    code = evaluate_cli.main(["--model", str(model), "--data", str(data), "--source", source, "--target", "t2",
                              "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("duald-evaluate: error:") and match in err[-1] and not given


def test_several_sources_need_a_folder_not_a_manifest(given, tmp_path: Path, capsys) -> None:
    data = write_subjects(tmp_path / "data", n=1, shape=(8, 36, 40))
    t1, t2 = next(data.glob("*/*t1n.nii.gz")), next(data.glob("*/*t2w.nii.gz"))
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"source,target\n{t1},{t2}\n", encoding="utf-8")
    model = make_bundle(tmp_path / "m.safetensors", with_d2=False)
    assert evaluate_cli.main(["--model", str(model), "--data", str(manifest), "--source", "t1,flair",
                              "--target", "t2"]) == 2
    assert "a manifest names one source per row; give a data folder" in capsys.readouterr().err
