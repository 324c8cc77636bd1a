"""Leave-one-source-out rows of the multi-input models (issue 23): which inputs give what quality.

Two any-subset models, each with the shipped recipe (``rank+aug+2.5d`` unet with the expected-error head) and
``--input-dropout 0.5``: T2 from T1 (required) with T1c and FLAIR optional, and FLAIR from T1 with T1c and T2
optional. Every fold model is scored on its held-out subjects once per input subset they have (a subject
without T1c has no T1+T1c+FLAIR row), so one model per fold gives every row; the final models train on all
subjects and take the expected-error factor their folds measured (``loso.py calibrate`` on the per-model
results files this writes).

    python experiments/loso.py prepare --data ../shared/data/brain-mri --out loso.npz   # every contrast
    python experiments/loso_inputs.py run --prepared loso.npz --out runs/inputs --device cpu --parallel 2 --steps 664
    python experiments/loso_inputs.py table runs/inputs/results-t2-any.json runs/inputs/results-flair-any.json
    # the T2 model started from each fold's one-input model (a loso.py confirm run of the one-input recipe)
    python experiments/loso_inputs.py run --prepared loso.npz --out runs/widened --device cpu --models t2 \
        --steps 332 --lr-g 1e-4 --widen-from runs/one-input
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import loso  # noqa: E402  (its path setup: DualDSynthesis, DualDTraining, experiments)
from fold_runs import fold_jobs  # noqa: E402

RECIPE = "rank+aug+2.5d"  # the shipped recipe (docs/models.md)
INPUT_DROPOUT = 0.5  # duald-train's default
# model → its inputs (T1 the required reference), target, and the input subsets each held-out subject is scored with
MODELS: dict[str, dict[str, Any]] = {
    "t2": {"inputs": ["t1", "t1c", "flair"], "target": "t2",
           "eval_inputs": [["t1"], ["t1", "flair"], ["t1", "t1c", "flair"]]},
    "flair": {"inputs": ["t1", "t1c", "t2"], "target": "flair",
              "eval_inputs": [["t1"], ["t1", "t2"], ["t1", "t1c", "t2"]]},
}


def model_jobs(model: str, folds: list, sources: dict[str, str], args: argparse.Namespace) -> list[dict]:
    """One job per fold (its bundle kept) and the final model on every subject (``--final``). With
    ``--widen-from RUN`` each fold starts from that ``loso.py confirm`` run's fold model of the same fold (a
    fold without one is skipped) and the final from ``--widen-final`` (``model/input_widening.py``)."""
    m = MODELS[model]
    name = f"{model}-{'widened' if args.widen_from else 'any'}"
    extra = {"stage": "M", "name": name, "variant": "unet", "inputs": m["inputs"], "target": m["target"],
             "eval_inputs": m["eval_inputs"], "input_dropout": INPUT_DROPOUT}
    if args.lr_g:
        extra["lr_g"] = args.lr_g
    parents = fold_jobs(Path(args.widen_from)) if args.widen_from else {}
    if args.widen_from:
        folds = [fold for fold in folds if fold.held_out in parents]
    jobs = loso._jobs("M", RECIPE, folds, loso.NO_TIME_CAP, args.steps, args, extra)
    for job in jobs:
        job.update(id=f"M-{name}-{job['fold']}", bundle=f"bundles/M-{name}-{job['fold']}.safetensors")
        if args.widen_from:
            job["init_from"] = str(Path(args.widen_from) / parents[job["fold"]]["bundle"])
    if args.final:
        final = loso._jobs("M", RECIPE, folds[:1], loso.NO_TIME_CAP, args.steps, args, extra)[0]
        final.update(id=f"M-{name}-final", fold="all", train=sorted(sources), test=[],
                     bundle=f"final-{name}.safetensors", half=False)
        if args.widen_from:
            final["init_from"] = args.widen_final
        jobs.append(final)
    return jobs


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.widen_from and args.final and not args.widen_final:
        raise SystemExit("--widen-from with --final needs --widen-final (the one-input model of every subject)")
    sources, folds = loso._sources_and_folds(args)
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    jobs = [job for model in models for job in model_jobs(model, folds, sources, args)]
    t0 = time.time()
    results = loso._run_parallel(jobs, args, out)
    for name in dict.fromkeys(job["name"] for job in jobs):
        mine = [r for r in results if r["name"] == name]
        (out / f"results-{name}.json").write_text(json.dumps(mine, indent=1), encoding="utf-8")
    print(f"{len(jobs)} jobs in {time.time() - t0:.0f} s; failed: "
          f"{[r['id'] for r in results if r.get('failed')] or 'none'}", file=sys.stderr)


def rows(results: list[dict]) -> list[dict[str, Any]]:
    """One row per input subset: fold means (each fold the mean of its held-out subjects that have the subset)."""
    subsets = dict.fromkeys(k for r in results if not r.get("failed") for s in r["per_subject"].values()
                            for k in s.get("by_inputs", {}))
    out = []
    for subset in subsets:
        per_fold: dict[str, list[dict]] = {}
        for r in results:
            if r.get("failed") or r.get("fold") == "all":
                continue
            for s in r["per_subject"].values():
                if subset in s.get("by_inputs", {}):
                    per_fold.setdefault(r["fold"], []).append(s["by_inputs"][subset])
        if not per_fold:
            continue

        def fold_mean(get, per_fold: dict[str, list[dict]] = per_fold) -> list[float]:
            values = [[get(s) for s in subj if get(s) is not None] for subj in per_fold.values()]
            return [float(np.mean(v)) for v in values if v]

        every = [s for subj in per_fold.values() for s in subj]
        out.append({
            "inputs": subset, "folds": sorted(per_fold), "subjects": len(every),
            "psnr": fold_mean(lambda s: s["foreground"]["psnr"]),
            "worst": min(s["foreground"]["psnr"] for s in every),
            "lesion": fold_mean(lambda s: s.get("lesion", {}).get("psnr")),
            "ssim": fold_mean(lambda s: s["foreground"]["ssim"]),
            "auroc": fold_mean(lambda s: s["maps"].get("expected_error", {}).get("auroc")),
            "ratio": fold_mean(lambda s: s.get("expected_error_ratio")),
            "per_fold": {f: float(np.mean([s["foreground"]["psnr"] for s in subj])) for f, subj in per_fold.items()},
        })
    return out


def table(args: argparse.Namespace) -> None:
    def cell(v: list[float], fmt: str = ".2f") -> str:
        return f"{np.mean(v):{fmt}} ± {np.std(v):{fmt}}" if v else "–"

    print("| inputs → target | folds (subjects) | brain PSNR | worst subject | lesion PSNR | brain SSIM | "
          "AUROC exp.err | real/expected | steps |")
    print("|---" * 9 + "|")
    per_fold = []
    for path in args.results:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        done = [r for r in results if not r.get("failed") and r.get("fold") != "all"]
        if not done:
            continue
        target, steps = done[0]["target"], sorted({r["steps_done"] for r in done})
        for row in rows(done):
            label = f"{done[0]['name']}: {row['inputs'].upper().replace('T1C', 'T1c')} → {target.upper()}"
            print(f"| {label} | {len(row['folds'])} ({row['subjects']}) | {cell(row['psnr'])} | {row['worst']:.2f} | "
                  f"{cell(row['lesion'])} | {cell(row['ssim'], '.3f')} | {cell(row['auroc'], '.3f')} | "
                  f"{cell(row['ratio'])} | {'/'.join(map(str, steps))} |")
            per_fold.append((label, row["per_fold"]))
    folds = sorted({f for _, pf in per_fold for f in pf})
    print("\n| held-out brain PSNR (dB) | " + " | ".join(folds) + " |")
    print("|---" * (len(folds) + 1) + "|")
    for label, pf in per_fold:
        print(f"| {label} | " + " | ".join(f"{pf[f]:.2f}" if f in pf else "–" for f in folds) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--prepared", required=True, help="loso.py prepare's arrays (with every contrast)")
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--models", default="t2,flair", help=f"comma-separated, of {', '.join(MODELS)}")
    r.add_argument("--steps", type=int, required=True, help="steps per job (664: the CPU budget of stage E)")
    r.add_argument("--parallel", type=int, default=2)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-folds", type=int, default=0)
    r.add_argument("--held-out", default="", help="only the folds holding out these sources (comma-separated)")
    r.add_argument("--final", action="store_true", help="also train each model on every subject")
    r.add_argument("--widen-from", default="", help="a loso.py confirm run: start each fold from its one-input "
                   "fold model, G widened for the new inputs")
    r.add_argument("--widen-final", default="", help="with --widen-from and --final: the one-input model the "
                   "final model starts from (e.g. the shipped t1_to_t2.safetensors)")
    r.add_argument("--lr-g", type=float, default=0.0, help="generator learning rate (0: the recipe's 2e-4)")
    t = sub.add_parser("table")
    t.add_argument("results", nargs="+", help="run's results-<model>.json files")
    args = p.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
