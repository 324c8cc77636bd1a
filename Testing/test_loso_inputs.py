"""The multi-input LOSO experiment (experiments/loso_inputs.py, issue 23): ``loso.py prepare`` stores every
contrast a subject has, a job trains through the product's input dropout and scores each input subset, its
fold bundle declares the inputs, and the table's rows are fold means by hand."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from _training_data import write_subjects
from test_multi_input import add_flairs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def experiments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # as the LOSO scripts import each other


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three subjects of two sources; the last (in name order) has no FLAIR."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "experiments"))
        import loso_data

    root = tmp_path_factory.mktemp("loso_inputs")
    data = write_subjects(root / "data", n=3)
    add_flairs(data, skip=2)
    names = sorted(p.name for p in data.iterdir())
    sources = root / "sources.csv"
    sources.write_text("subject,source\n" + "".join(f"{n},{'A' if i < 2 else 'B'}\n" for i, n in enumerate(names)))
    out = root / "prepared.npz"
    loso_data.prepare(argparse.Namespace(data=str(data), sources=str(sources), spacing=1.0, out=str(out)))
    return out


def test_prepare_stores_every_contrast_and_training_subject_attaches_the_model_inputs(experiments, prepared) -> None:
    from loso_data import load_prepared, training_subject

    data = load_prepared(prepared)
    with_flair, without = [data[n] for n in sorted(data)[:2]], data[sorted(data)[2]]
    for loaded in with_flair:
        assert set(loaded.others) == {"flair", "t2"} and set(loaded.targets) == {"flair"}  # T2: the FLAIR model's
        assert loaded.others["flair"].shape == loaded.source.shape  # on the T1's grid
        s = training_subject(loaded, "rank", inputs=("t1", "flair"))
        assert set(s.others) == {"flair"} and set(s.other_stats) == {"flair"}
        assert training_subject(loaded, "rank").others == {}  # a one-input subject as before
        as_target = training_subject(loaded, "p99.5", inputs=("t1",), target="flair")
        np.testing.assert_array_equal(as_target.target, loaded.targets["flair"][0])
        # the FLAIR as an input and as a target are the same volume, each normalised by itself
        assert np.corrcoef(as_target.target.ravel(), loaded.others["flair"].ravel())[0, 1] > 0.99
    assert without.others == {} and without.targets == {}
    assert training_subject(without, "rank", inputs=("t1", "flair")).others == {}
    with pytest.raises(ValueError, match="no flair target"):
        training_subject(without, "rank", target="flair")
    with pytest.raises(ValueError, match="reference input is t1"):
        training_subject(without, "rank", inputs=("flair", "t1"))


def test_a_multi_input_job_scores_each_subset_and_bundles_its_declaration(experiments, prepared, tmp_path) -> None:
    from DualDSynthesisLib.imaging.bundle import load_bundle
    from loso_job import run_job

    names = sorted(n for n in __import__("loso_data").load_prepared(prepared))
    job = {"id": "M-t2-any-A", "stage": "M", "recipe": "rank+aug+2.5d", "fold": "A", "train": [names[2]],
           "test": names[:2], "variant": "unet", "seconds": 1e9, "steps": 2, "batch": 2, "seed": 0,
           "recipe_settings": {"source_norm": "rank", "augment": 1.0, "context": 1, "width": 4},
           "inputs": ["t1", "t1c", "flair"], "target": "t2", "input_dropout": 0.5,
           "eval_inputs": [["t1"], ["t1", "flair"], ["t1", "t1c", "flair"]], "bundle": "fold.safetensors"}
    # the training subject has no FLAIR: the model still learns its inputs' channels, withheld
    result = run_job(job, str(prepared), tmp_path, "cpu")
    for name in names[:2]:
        scores = result["per_subject"][name]
        assert scores["inputs"] == "t1+flair"
        assert set(scores["by_inputs"]) == {"t1", "t1+flair"}  # no T1c: that subset is not scored
        alone, both = scores["by_inputs"]["t1"], scores["by_inputs"]["t1+flair"]
        assert alone["foreground"]["psnr"] != both["foreground"]["psnr"]  # the FLAIR reaches G
    meta = load_bundle(tmp_path / "fold.safetensors").metadata
    assert meta.inputs.names == ("t1", "t1c", "flair") and meta.inputs.required == ("t1",)
    assert meta.target_modality == "t2" and meta.architecture.in_channels == 3 * 3 + 2


def test_rows_are_fold_means_of_the_subjects_that_have_each_subset(experiments) -> None:
    from loso_inputs import rows

    def subject(psnr: float, auroc: float) -> dict:
        return {"foreground": {"psnr": psnr, "ssim": 0.5}, "maps": {"expected_error": {"auroc": auroc}},
                "expected_error_ratio": 1.0}

    results = [
        {"fold": "A", "per_subject": {"a1": {"by_inputs": {"t1": subject(14, 0.7), "t1+flair": subject(16, 0.8)}},
                                      "a2": {"by_inputs": {"t1": subject(12, 0.6)}}}},  # a2: no FLAIR
        {"fold": "B", "per_subject": {"b1": {"by_inputs": {"t1": subject(17, 0.9), "t1+flair": subject(19, 0.7)}}}},
        {"fold": "all", "per_subject": {}},
        {"fold": "C", "failed": True, "per_subject": {}},
    ]
    by = {r["inputs"]: r for r in rows(results)}
    assert by["t1"]["psnr"] == [13.0, 17.0] and by["t1"]["worst"] == 12 and by["t1"]["subjects"] == 3
    assert by["t1+flair"]["psnr"] == [16.0, 19.0] and by["t1+flair"]["folds"] == ["A", "B"]
    assert by["t1+flair"]["auroc"] == [0.8, 0.7] and by["t1"]["lesion"] == []


def test_widened_jobs_start_each_fold_from_its_own_one_input_model(experiments, tmp_path) -> None:
    import json

    from folds import loso_folds
    from loso_inputs import model_jobs

    sources = {"a1": "A", "b1": "B", "c1": "C"}
    folds = loso_folds(sources)
    run = tmp_path / "one-input"
    run.mkdir()
    (run / "results.json").write_text(json.dumps([  # fold models of A and C only, and the final (no test)
        {"fold": "A", "test": ["a1"], "bundle": "bundles/A.safetensors"},
        {"fold": "C", "test": ["c1"], "bundle": "bundles/C.safetensors"},
        {"fold": "all", "test": [], "bundle": "final.safetensors"}]))
    args = argparse.Namespace(batch=16, seed=0, steps=332, lr_g=1e-4, widen_from=str(run), final=True,
                              widen_final="t1_to_t2.safetensors")
    jobs = model_jobs("t2", folds, sources, args)
    assert [j["fold"] for j in jobs] == ["A", "C", "all"]  # B has no one-input fold model: skipped
    assert [j["init_from"] for j in jobs] == [str(run / "bundles/A.safetensors"), str(run / "bundles/C.safetensors"),
                                               "t1_to_t2.safetensors"]
    assert {j["name"] for j in jobs} == {"t2-widened"} and {j["lr_g"] for j in jobs} == {1e-4}
    assert jobs[2]["train"] == ["a1", "b1", "c1"] and jobs[0]["train"] == ["b1", "c1"]
    scratch = model_jobs("flair", folds, sources, argparse.Namespace(**{**vars(args), "widen_from": "", "lr_g": 0.0}))
    assert [j["fold"] for j in scratch] == ["A", "B", "C", "all"]
    assert all("init_from" not in j and "lr_g" not in j and j["target"] == "flair" for j in scratch)
