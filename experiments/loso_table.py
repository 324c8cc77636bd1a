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
        for group in dict.fromkeys(r[key] for r in rows):
            rs = [r for r in rows if r[key] == group]

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
            steps = int(np.median([r["steps_done"] for r in rs]))
            cells = [cell(fold_values("foreground", "psnr")), f"{min(subj):.2f}", cell(fold_values("lesion", "psnr")),
                     cell(fold_values("foreground", "ssim"), ".3f"), cell(map_values("expected_error"), ".3f"),
                     cell(map_values("d2"), ".3f"), cell(map_values("edge"), ".3f"), str(steps)]
            print(f"| {group} | " + " | ".join(cells) + " |")
    summary = [r for r in results if r.get("stage") == "summary"]
    if summary:
        print("\n" + json.dumps(summary[-1]))
