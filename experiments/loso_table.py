"""``loso.py table``: the LOSO tables (per stage, mean ± std over folds) of a results file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def table(args: argparse.Namespace) -> None:
    results = json.loads(Path(args.results).read_text(encoding="utf-8"))
    for stage, key in (("A", "recipe"), ("B", "name"), ("D", "name")):
        rows = [r for r in results if r.get("stage") == stage and not r.get("failed")]
        if not rows:
            continue
        print(f"\nstage {stage}: mean ± std over folds (each fold: mean of its held-out subjects)")
        cols = ("brain PSNR", "worst subj", "lesion PSNR", "brain SSIM", "AUROC exp.err", "AUROC D2",
                "AUROC edge", "steps")
        print(f"| {key} | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        several_seeds = len({r.get("seed") for r in rows}) > 1
        for group in dict.fromkeys((r[key], r.get("seed")) for r in rows if r.get("fold") != "all"):
            rs = [r for r in rows if (r[key], r.get("seed")) == group and r.get("fold") != "all"]
            label = f"{group[0]} (seed {group[1]})" if several_seeds else group[0]

            def fold_values(region: str, metric: str, rs: list = rs) -> list[float]:
                vals = []
                for r in rs:
                    v = [s[region][metric] for s in r["per_subject"].values() if region in s]
                    if v:
                        vals.append(float(np.mean(v)))
                return vals

            def map_values(name: str, rs: list = rs) -> list[float]:
                return [s["maps"][name]["auroc"] for r in rs for s in r["per_subject"].values() if name in s["maps"]]

            def cell(v: list[float], fmt: str = ".2f") -> str:
                return f"{np.mean(v):{fmt}} ± {np.std(v):{fmt}}" if v else "–"

            subj = [s["foreground"]["psnr"] for r in rs for s in r["per_subject"].values()]
            lo, hi = min(r["steps_done"] for r in rs), max(r["steps_done"] for r in rs)
            steps = f"{lo}" if lo == hi else f"{lo}–{hi}"
            cells = [cell(fold_values("foreground", "psnr")), f"{min(subj):.2f}", cell(fold_values("lesion", "psnr")),
                     cell(fold_values("foreground", "ssim"), ".3f"), cell(map_values("expected_error"), ".3f"),
                     cell(map_values("d2"), ".3f"), cell(map_values("edge"), ".3f"), steps]
            print(f"| {label} | " + " | ".join(cells) + " |")
        if several_seeds:  # each fold's mean over the seeds, then mean ± std over folds
            for name in dict.fromkeys(r[key] for r in rows if r.get("fold") != "all"):
                per_fold: dict[str, list[float]] = {}
                for r in rows:
                    if r[key] == name and r.get("fold") != "all":
                        v = [s["foreground"]["psnr"] for s in r["per_subject"].values()]
                        per_fold.setdefault(r["fold"], []).append(float(np.mean(v)))
                folds = [float(np.mean(v)) for v in per_fold.values()]
                seeds = len({r.get("seed") for r in rows if r[key] == name})
                print(f"| {name} (mean of {seeds} seeds) | {np.mean(folds):.2f} ± {np.std(folds):.2f} |"
                      + " |" * (len(cols) - 1))
    summary = [r for r in results if r.get("stage") == "summary"]
    if summary:
        print("\n" + json.dumps(summary[-1]))
