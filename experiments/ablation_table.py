"""The ablation's Markdown tables for docs/ablation.md: the leave-one-source-out ablation at equal steps
(a ``loso.py confirm --ablation-steps N`` results file), or the first pilot's ``duald-evaluate`` reports.

    python experiments/ablation_table.py runs/confirm/results.json   # LOSO, stage B: mean ± std over seeds
    python experiments/ablation_table.py /tmp/duald-ablation         # the pilot's eval-<variant>.json files

LOSO: one row per ablation variant; each cell is, per seed, the mean over folds of each fold's mean over its
held-out subjects, then the mean ± std of that over the seeds. Besides PSNR/SSIM and the trust maps' AUROC, the
two detail measures (``metrics.gradient_ratio``, ``metrics.lesion_contrast_ratio``: synthetic over real, 1 =
as much as the real T2). The steps column says whether every job ran the same number of steps.

Pilot: reads ``eval-<variant>.json`` for the five variants (and ``eval-ct.json`` when present) and prints one
row per variant: PSNR / MAE / SSIM over the brain (foreground) and inside the tumour labels, and the
heatmap AUROC beside the gradient-magnitude baseline. With one test subject the std is 0 and is left out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

VARIANTS = ("unet", "global", "local", "dual", "dual_attention")


def _cell(summary: dict, region: str, metric: str, fmt: str) -> str:
    m = summary.get(region, {}).get(metric)
    if not m or m["n"] == 0:
        return "–"
    mean = float(m["mean"])
    return f"{mean:{fmt}}" if m["n"] == 1 else f"{mean:{fmt}} ({float(m['std']):{fmt}})"


def table(runs: Path) -> str:
    head = (
        "| variant | brain PSNR (dB) | brain MAE | brain SSIM | tumour PSNR (dB) | tumour MAE | tumour SSIM "
        "| heatmap AUROC | gradient AUROC |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for v in VARIANTS:
        path = runs / f"eval-{v}.json"
        if not path.is_file():
            rows.append(f"| {v} | (missing: {path.name}) |||||||| ")
            continue
        s = json.loads(path.read_text(encoding="utf-8"))["summary"]
        rows.append(
            f"| {v} | {_cell(s, 'foreground', 'psnr', '.2f')} | {_cell(s, 'foreground', 'mae', '.4f')} "
            f"| {_cell(s, 'foreground', 'ssim', '.3f')} | {_cell(s, 'tumour', 'psnr', '.2f')} "
            f"| {_cell(s, 'tumour', 'mae', '.4f')} | {_cell(s, 'tumour', 'ssim', '.3f')} "
            f"| {_cell(s, 'heatmap', 'auroc', '.3f')} | {_cell(s, 'heatmap', 'gradient_baseline_auroc', '.3f')} |"
        )
    ct = runs / "eval-ct.json"
    if ct.is_file():
        s = json.loads(ct.read_text(encoding="utf-8"))["summary"]
        rows.append(
            "\nMRI→CT template demo (HU): body MAE "
            f"{_cell(s, 'body', 'mae', '.1f')} HU, body PSNR {_cell(s, 'body', 'psnr', '.2f')} dB, "
            f"whole-volume PSNR {_cell(s, 'whole', 'psnr', '.2f')} dB (data range 4095 HU), "
            f"body SSIM {_cell(s, 'body', 'ssim', '.3f')}"
        )
    return "\n".join(rows)


# (column, how one held-out subject's record gives its value or None, format)
LOSO_COLUMNS: list[tuple[str, Callable[[dict], float | None], str]] = [
    ("brain PSNR", lambda s: s["foreground"]["psnr"], ".2f"),
    ("lesion PSNR", lambda s: s.get("lesion", {}).get("psnr"), ".2f"),
    ("brain SSIM", lambda s: s["foreground"]["ssim"], ".3f"),
    ("gradient ratio", lambda s: s.get("detail", {}).get("gradient_ratio"), ".3f"),
    ("lesion contrast ratio", lambda s: s.get("detail", {}).get("lesion_contrast_ratio"), ".3f"),
    ("AUROC exp.err", lambda s: s["maps"].get("expected_error", {}).get("auroc"), ".3f"),
    ("AUROC D2", lambda s: s["maps"].get("d2", {}).get("auroc"), ".3f"),
]


def seed_values(jobs: list[dict], value: Callable[[dict], float | None]) -> list[float]:
    """Per seed: the mean over folds of each fold's mean over its held-out subjects (folds without a value,
    e.g. no lesion labels, left out)."""
    by_seed: dict[int, dict[str, list[float]]] = {}
    for job in jobs:
        vals = [v for s in job["per_subject"].values() if (v := value(s)) is not None]
        if vals:
            by_seed.setdefault(job.get("seed", 0), {}).setdefault(job["fold"], []).extend(vals)
    return [float(np.mean([np.mean(v) for v in folds.values()])) for folds in by_seed.values()]


def _mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):{fmt}}" if len(values) == 1 else f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}"


def loso_table(results: list[dict]) -> str:
    """The equal-step ablation (stage B jobs of ``results``) as a Markdown table, mean ± std over seeds."""
    jobs = [r for r in results if r.get("stage") == "B" and not r.get("failed") and r.get("fold") != "all"]
    if not jobs:
        raise SystemExit("no stage-B (ablation) job in the results: run loso.py confirm --ablation-steps N")
    seeds = sorted({r.get("seed", 0) for r in jobs})
    failed = sum(1 for r in results if r.get("stage") == "B" and r.get("failed"))
    head = ["variant", *(c for c, _, _ in LOSO_COLUMNS), "steps", "jobs"]
    rows = [f"mean ± std over seeds {', '.join(map(str, seeds))} of the fold mean"
            + (f"; {failed} ablation job(s) FAILED and are left out" if failed else ""), "",
            "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name in dict.fromkeys(r["name"] for r in jobs):
        mine = [r for r in jobs if r["name"] == name]
        done = {r["steps_done"] for r in mine}
        steps = f"{min(done)}" if len(done) == 1 else f"{min(done)}–{max(done)} (UNEQUAL)"
        cells = [_mean_std(seed_values(mine, value), fmt) for _, value, fmt in LOSO_COLUMNS]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {steps} | {len(mine)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    where = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/duald-ablation")
    if where.suffix == ".json":
        print(loso_table(json.loads(where.read_text(encoding="utf-8"))))
    else:
        print(table(where))
