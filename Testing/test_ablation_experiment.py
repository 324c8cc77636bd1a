"""The equal-step ablation (experiments/loso.py confirm --ablation-steps, experiments/ablation_table.py): every
variant × fold × seed at the same steps with no time cap, and its table's mean ± std over seeds, by hand."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def experiments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # as the LOSO scripts import each other


def test_ablation_jobs_cover_every_variant_fold_and_seed_at_equal_steps(experiments: None) -> None:
    import loso
    from folds import loso_folds

    folds = loso_folds({"a1": "A", "a2": "A", "b1": "B", "c1": "C"})
    jobs = loso._ablation_jobs("rank+aug+2.5d", folds, [0, 1, 2], 250, argparse.Namespace(batch=16, seed=0))
    assert len(jobs) == len(loso.ABLATION) * len(folds) * 3
    assert len({j["id"] for j in jobs}) == len(jobs)
    assert {(j["name"], j["fold"], j["seed"]) for j in jobs} == {
        (name, f.held_out, s) for name, *_ in loso.ABLATION for f in folds for s in (0, 1, 2)}
    assert {j["steps"] for j in jobs} == {250} and {j["seconds"] for j in jobs} == {loso.NO_TIME_CAP}
    assert all(j["stage"] == "B" and "bundle" not in j for j in jobs)
    costs = [loso.STEP_COST[j["name"]] for j in jobs]
    assert costs == sorted(costs, reverse=True) and set(loso.STEP_COST) == {name for name, *_ in loso.ABLATION}
    one_seed = loso._ablation_jobs("rank+aug+2.5d", folds[:1], [4], 10, argparse.Namespace(batch=16, seed=0))
    assert all(not j["id"].endswith("-s4") and j["seed"] == 4 for j in one_seed)  # one seed: ids as before


def _job(name: str, seed: int, fold: str, psnrs: list[float], steps: int = 250, **detail: float) -> dict:
    subjects = {f"{fold}{i}": {"foreground": {"psnr": p, "ssim": 0.5}, "maps": {}, "detail": dict(detail)}
                for i, p in enumerate(psnrs)}
    return {"stage": "B", "name": name, "seed": seed, "fold": fold, "steps_done": steps, "per_subject": subjects}


def test_ablation_table_is_the_mean_and_std_over_seeds_of_fold_means(experiments: None) -> None:
    from ablation_table import loso_table

    results = [
        # unet, seed 0: folds A (10, 12 → 11) and B (14) → 12.5; seed 1: A 13, B 15 → 14; mean 13.25, std 0.75
        _job("unet", 0, "A", [10.0, 12.0], gradient_ratio=0.5), _job("unet", 0, "B", [14.0], gradient_ratio=0.7),
        _job("unet", 1, "A", [13.0], gradient_ratio=0.8), _job("unet", 1, "B", [15.0], gradient_ratio=1.0),
        _job("dual", 0, "A", [9.0], steps=240), _job("dual", 0, "B", [11.0]),
        {"stage": "B", "name": "dual", "seed": 1, "fold": "A", "failed": True},
        {"stage": "D", "name": "rank-unet", "seed": 0, "fold": "A", "steps_done": 9, "per_subject": {}},
    ]
    lines = loso_table(results).splitlines()
    assert "seeds 0, 1" in lines[0] and "1 ablation job(s) FAILED" in lines[0]
    head = [c.strip() for c in lines[2].strip("|").split("|")]
    rows = {cells[0]: dict(zip(head, cells, strict=True))
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[4:])}
    assert set(rows) == {"unet", "dual"}  # stage D and failed jobs are not the ablation's
    assert rows["unet"]["brain PSNR"] == "13.25 ± 0.75"
    # gradient ratio: seed 0 (0.5 + 0.7) / 2 = 0.6, seed 1 (0.8 + 1.0) / 2 = 0.9 → 0.75 ± 0.15
    assert rows["unet"]["gradient ratio"] == "0.750 ± 0.150"
    assert rows["unet"]["lesion PSNR"] == "–" and rows["unet"]["steps"] == "250" and rows["unet"]["jobs"] == "4"
    assert rows["dual"]["brain PSNR"] == "10.00"  # one seed: no spread to show
    assert rows["dual"]["steps"] == "240–250 (UNEQUAL)"
    with pytest.raises(SystemExit, match="no stage-B"):
        loso_table(results[-1:])
