"""Leave-one-source-out (LOSO) experiments: recipes, the paper's ablation, and the shipped model.

Three steps, so the GPU part needs no NIfTI reading and no ../shared data on the GPU machine:

1. ``prepare`` (CPU, beside ../shared): every subject is read and prepared exactly as ``duald-train``
   does (canonical orientation, 1 mm in-plane, T1 and T2 normalised by their foreground 99.5th
   percentile), then stored quantised to uint8 in one compressed ``.npz`` (~25 MB for 8 subjects).
2. ``run`` (GPU or CPU): stage A trains one model per (recipe, fold) in parallel processes and picks
   the recipe with the best mean held-out brain PSNR; stage B trains the paper's five variants (plus
   the per-pixel, error-aware D2) with that recipe on every fold; stage C trains the final model on
   all subjects with that recipe and the variant stage B ranks first. Every job writes a JSON record;
   ``results.json`` gathers them.
3. ``table`` prints the LOSO tables (per fold and mean ± std over folds) from ``results.json``.
   ``confirm`` re-runs chosen recipes at one budget (``--steps`` repeats a GPU budget on the CPU);
   ``calibrate`` gives the recipe's final model the expected-error factor its folds measured; ``rescore``
   scores a finished run's fold bundles again with today's evaluation (no training).

Metrics (held-out subjects, on the prepared 1 mm grid, unpadded region): PSNR (data range 1), MAE
and SSIM in the normalised T2 space, over the foreground (source ∪ target: the brain, or the head for
unstripped scans) and inside the lesion/tumour labels; and for each trust map (G's expected error,
D2's difficulty, the edge baseline) the AUROC for the worst-10 % error voxels and the Spearman
correlation with |error|. ``duald-evaluate`` on the original files gives the as-a-user-would numbers.

    python experiments/loso.py prepare --data ../shared/data/brain-mri --out loso.npz
    python experiments/loso.py run --prepared loso.npz --out runs/loso --device cuda --parallel 25
    python experiments/loso.py table runs/loso/results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "DualDSynthesis"), str(ROOT / "DualDTraining"), str(ROOT / "experiments")]
import sitk_stub  # noqa: E402

sitk_stub.install_if_missing()

from folds import loso_folds  # noqa: E402
from loso_data import load_prepared, prepare, prepared_meta  # noqa: E402

# one job and its scoring; HeldOut, held_out and CHECK_EVERY stay importable as loso.* (the re-scoring scripts)
from loso_job import CHECK_EVERY, HeldOut, evaluate_bundle, held_out, run_job  # noqa: E402, F401

SOURCES_CSV = ROOT / "experiments" / "brain_mri_sources.csv"


# ----------------------------------------------------------------------------- stages


# Every recipe trains a 16-wide generator on foreground-centred 160×160 crops (2.4× fewer pixels per step
# than whole slices, so more steps in the same GPU time; inference always runs on whole slices).
RECIPES: dict[str, dict[str, Any]] = {
    "base": {"source_norm": "p99.5", "augment": 0.0, "context": 0, "width": 16, "crop": 160},  # the first plan's
    "aug": {"source_norm": "p99.5", "augment": 1.0, "context": 0, "width": 16, "crop": 160},
    "median+aug": {"source_norm": "median", "augment": 1.0, "context": 0, "width": 16, "crop": 160},
    "peak+aug": {"source_norm": "peak", "augment": 1.0, "context": 0, "width": 16, "crop": 160},
    "aug+2.5d": {"source_norm": "p99.5", "augment": 1.0, "context": 1, "width": 16, "crop": 160},
    "rank+aug+2.5d": {"source_norm": "rank", "augment": 1.0, "context": 1, "width": 16, "crop": 160},
}
NO_TIME_CAP = 1e9  # seconds: a job that must run its steps whatever they take (the equal-step ablation)
# Step cost of each ablation variant relative to unet, from the per-job rates of stage F's pool (H100, MPS):
# the equal-step ablation starts the costliest jobs first, so the cheap ones fill the pool's tail.
STEP_COST = {"unet": 1.0, "local": 1.8, "global": 3.5, "dual": 4.0, "dual_attention": 4.7,
             "dual_attention+pixelD2": 4.5}
ABLATION = [  # (name, variant, D2 head, D2 labels)
    ("unet", "unet", "patch", "binary"),
    ("global", "global", "patch", "binary"),
    ("local", "local", "patch", "binary"),
    ("dual", "dual", "patch", "binary"),
    ("dual_attention", "dual_attention", "patch", "binary"),
    ("dual_attention+pixelD2", "dual_attention", "pixel", "error"),
]


def _run_parallel(jobs: list[dict], args: argparse.Namespace, out: Path) -> list[dict]:
    """Each job in its own process (one CUDA context each), at most ``args.parallel`` at once."""
    pending, running, done = list(jobs), [], []
    while pending or running:
        while pending and len(running) < args.parallel:
            job = pending.pop(0)
            path = out / "jobs" / f"{job['id']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            spec = out / "jobs" / f"{job['id']}.job"
            spec.write_text(json.dumps(job), encoding="utf-8")
            log = (out / "jobs" / f"{job['id']}.log").open("w", encoding="utf-8")
            proc = subprocess.Popen([sys.executable, __file__, "job", str(spec), "--prepared", args.prepared,
                                     "--out", str(out), "--device", args.device], stdout=log, stderr=log)
            running.append((proc, path, job, log))
        time.sleep(1.0)
        for item in list(running):
            proc, path, job, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode == 0 and path.is_file():
                done.append(json.loads(path.read_text(encoding="utf-8")))
            else:
                tail = (out / "jobs" / f"{job['id']}.log").read_text(encoding="utf-8")[-600:]
                print(f"job {job['id']} failed ({proc.returncode}): {tail}", file=sys.stderr)
                done.append({**job, "failed": True})
    return done


def fold_mean(results: list[dict], key: str, region: str = "foreground", metric: str = "psnr") -> dict[str, float]:
    """Mean over folds (each fold = mean over its held-out subjects) of region/metric, per group ``key``."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r.get("failed"):
            continue
        vals = [s[region][metric] for s in r["per_subject"].values() if region in s]
        if vals:
            table.setdefault(r[key], {}).setdefault(r["fold"], []).extend(vals)
    return {k: float(np.mean([np.mean(v) for v in folds.values()])) for k, folds in table.items()}


def _jobs(stage: str, recipe: str, folds, seconds: float, steps: int, args, extra: dict | None = None) -> list[dict]:
    jobs = []
    for fold in folds:
        job = {"id": f"{stage}-{recipe}-{fold.held_out}".replace("+", "_").replace(".", "_"), "stage": stage,
               "recipe": recipe, "recipe_settings": RECIPES[recipe], "fold": fold.held_out, "train": list(fold.train),
               "test": list(fold.test), "variant": "unet", "seconds": seconds, "steps": steps,
               "batch": args.batch, "seed": args.seed}
        job.update(extra or {})
        if "name" in job:
            job["id"] = f"{stage}-{job['name']}-{fold.held_out}".replace("+", "_").replace(".", "_")
        jobs.append(job)
    return jobs


def _sources_and_folds(args: argparse.Namespace) -> tuple[dict[str, str], list]:
    """The prepared subjects' sources and the LOSO folds over them (the first ``--max-folds``, if given)."""
    sources = {name: info["source"] for name, info in prepared_meta(args.prepared)["subjects"].items()}
    folds = loso_folds(sources)
    wanted = [name for name in getattr(args, "held_out", "").split(",") if name]
    unknown = sorted(set(wanted) - {fold.held_out for fold in folds})
    if unknown:
        raise SystemExit(f"--held-out: no source named {', '.join(unknown)} in {args.prepared}")
    if wanted:
        folds = [fold for fold in folds if fold.held_out in wanted]
    return sources, folds[: args.max_folds or None]


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources, folds = _sources_and_folds(args)
    results: list[dict] = []

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")

    t0 = time.time()
    recipes = args.recipes.split(",") if args.recipes else list(RECIPES)
    jobs = [j for rec in recipes for j in _jobs("A", rec, folds, args.seconds_a, 10**9, args)]
    results += _run_parallel(jobs, args, out)
    save()
    scores = fold_mean([r for r in results if r["stage"] == "A"], "recipe")
    best = max(scores, key=scores.get)
    rate = np.median([r["steps_done"] / r["train_seconds"] for r in results if r["stage"] == "A"
                      and not r.get("failed") and r["recipe"] == best])
    print(f"stage A ({time.time() - t0:.0f} s): {scores} -> {best}; unet {rate:.1f} steps/s", file=sys.stderr)

    # Stage B: every variant the same number of steps; dual_attention costs ~3.5× a unet step.
    steps_b = max(1, int(rate * args.seconds_b / 4.0))
    jobs = []
    for name, variant, head, target in ABLATION:
        jobs += _jobs("B", best, folds, args.seconds_b * 1.3, steps_b, args,
                      {"name": name, "variant": variant, "d2_head": head, "d2_target": target,
                       "bundle": None})
    for job in jobs:  # fold bundles of every variant stay on this machine; the chosen ones travel
        job["bundle"] = f"bundles/{job['id']}.safetensors"
    results += _run_parallel(jobs, args, out)
    save()
    variants = fold_mean([r for r in results if r["stage"] == "B"], "name")
    chosen = max(variants, key=variants.get)
    print(f"stage B ({time.time() - t0:.0f} s, {steps_b} steps): {variants} -> {chosen}", file=sys.stderr)

    # Stage C: the shipped model, all subjects, the chosen recipe and variant.
    spec = next(a for a in ABLATION if a[0] == chosen)
    final = {"id": "C-final", "stage": "C", "recipe": best, "recipe_settings": RECIPES[best], "fold": "all",
             "train": sorted(sources), "test": [], "variant": spec[1], "d2_head": spec[2], "d2_target": spec[3],
             "name": chosen, "seconds": args.seconds_c, "steps": 10**9, "batch": args.batch, "seed": args.seed,
             "bundle": "t1_to_t2.safetensors", "half": False}
    results += _run_parallel([final], args, out)
    summary = {"recipes": scores, "best_recipe": best, "variants": variants, "chosen_variant": chosen,
               "steps_b": steps_b, "seconds": round(time.time() - t0, 1)}
    results.append({"stage": "summary", **summary})
    save()
    print(json.dumps(summary), file=sys.stderr)


def confirm(args: argparse.Namespace) -> None:
    """Stage D: the candidate recipes with the chosen variant at a longer budget, every fold (each seed of
    ``--seeds``) and the final model (all subjects, first seed) of each at once, so the shipped recipe is
    judged at the budget it ships with. ``--ablation-steps N`` adds stage B in the same pool: the paper's
    variants (and the per-pixel D2) with the first recipe on every fold and every seed, exactly N steps each
    (no time cap: equal steps is the point; ``--ablation-only`` leaves stage D out). ``results.json`` is written
    either way; a failed job makes the command exit non-zero, naming it."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources, folds = _sources_and_folds(args)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    recipes = args.recipes.split(",")
    if args.ablation_only and not args.ablation_steps:
        raise SystemExit("--ablation-only needs --ablation-steps N")
    jobs = [] if args.ablation_only else _confirm_jobs(recipes, seeds, sources, folds, args)
    if args.ablation_steps:
        jobs += _ablation_jobs(recipes[0], folds, seeds, args.ablation_steps, args)
    results = _run_parallel(jobs, args, out)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    failed = [r["id"] for r in results if r.get("failed")]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(results)} jobs failed: {', '.join(failed)}")


def _ablation_jobs(recipe: str, folds: list, seeds: list[int], steps: int, args: argparse.Namespace) -> list[dict]:
    """Stage B at equal steps: every variant of ``ABLATION`` × fold × seed, ``steps`` each and no time cap."""
    jobs = []
    for seed in seeds:
        for name, variant, head, target in ABLATION:
            fold_jobs = _jobs("B", recipe, folds, NO_TIME_CAP, steps, args,
                              {"name": name, "variant": variant, "d2_head": head, "d2_target": target, "seed": seed})
            for job in fold_jobs:
                job["id"] += _seed_suffix(seed, seeds)
            jobs += fold_jobs
    return sorted(jobs, key=lambda job: -STEP_COST[job["name"]])  # stable: seeds and folds keep their order


def _confirm_jobs(recipes: list[str], seeds: list[int], sources: dict[str, str], folds: list,
                  args: argparse.Namespace) -> list[dict]:
    """Stage D: every recipe's fold jobs for each seed, and its final model (all subjects, first seed)."""
    steps = args.steps or 10**9
    jobs = []
    for recipe in recipes:
        for seed in seeds:
            extra = {"variant": args.variant, "name": f"{recipe}-{args.variant}", "seed": seed}
            fold_jobs = _jobs("D", recipe, folds, args.seconds, steps, args, extra)
            for job in fold_jobs:
                job["id"] += _seed_suffix(seed, seeds)
                job["bundle"] = f"bundles/{job['id']}.safetensors"
            jobs += fold_jobs
        if args.no_final:
            continue
        final = _jobs("D", recipe, folds[:1], args.seconds, steps, args,
                      {"variant": args.variant, "name": f"{recipe}-{args.variant}", "seed": seeds[0]})[0]
        final.update(id=f"D-{recipe}-final".replace("+", "_").replace(".", "_"), fold="all", train=sorted(sources),
                     test=[], bundle=f"final-{recipe}.safetensors".replace("+", "_"), half=False)
        jobs.append(final)
    return jobs


def _seed_suffix(seed: int, seeds: list[int]) -> str:
    """Job ids of a one-seed run stay as before; several seeds get ``-s<seed>``."""
    return f"-s{seed}" if len(seeds) > 1 else ""


def baseline(args: argparse.Namespace) -> None:
    """Score an existing bundle (e.g. the previously shipped model) on every prepared subject, with the
    same evaluation as the LOSO jobs, so the new folds can be compared with it subject by subject."""
    from DualDSynthesisLib.imaging.bundle import load_bundle
    from DualDSynthesisLib.model.intensity import SOURCE_NORMS

    bundle = load_bundle(args.bundle)
    norm = next((k for k, m in SOURCE_NORMS.items() if m == bundle.metadata.preprocessing.source), "p99.5")
    data = load_prepared(args.prepared)
    out = {"bundle": str(args.bundle), "per_subject": {}}
    for name, loaded in data.items():
        t0 = time.time()
        out["per_subject"][name] = evaluate_bundle(bundle, loaded, norm)
        out["per_subject"][name]["source"] = loaded.info["source"]
        print(f"{name}: {out['per_subject'][name]['foreground']['psnr']:.2f} dB ({time.time() - t0:.0f} s)",
              file=sys.stderr)
    Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")


def rescore(args: argparse.Namespace) -> None:
    """The fold jobs of a finished run scored again from their fold bundles with today's evaluation (no
    training): a results file ``table`` and ``calibrate`` read like the run's own."""
    import torch
    from DualDSynthesisLib.imaging.bundle import load_bundle
    from fold_runs import fold_jobs

    torch.set_num_threads(2)
    out = []
    for job in fold_jobs(Path(args.run)).values():
        bundle = load_bundle(Path(args.run) / job["bundle"])
        data = load_prepared(args.prepared, list(job["test"]))
        per_subject = {name: evaluate_bundle(bundle, data[name], job["recipe_settings"]["source_norm"])
                       for name in job["test"]}
        out.append({**job, "per_subject": per_subject, "rescored": True})
        print(job["fold"], {n: round(s["foreground"]["psnr"], 2) for n, s in per_subject.items()}, file=sys.stderr)
    Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")


def calibrate(args: argparse.Namespace) -> None:
    """The expected-error calibration of a final model from its recipe's LOSO folds: each held-out subject's
    map-to-real MAE ratio (``expected_error_ratio``) is evidence the final model never trained on. Prints a
    leave-one-fold-out check (the factor from the other folds applied to each fold) and writes a copy of
    ``--bundle`` carrying the factor from all folds; the weights are untouched."""
    from DualDSynthesisLib.imaging.bundle import load_bundle, save_bundle
    from DualDSynthesisLib.imaging.calibration import ErrorCalibration

    results = [r for r in json.loads(Path(args.results).read_text(encoding="utf-8"))
               if not r.get("failed") and r.get("fold") != "all" and r.get("recipe") == args.recipe
               and r.get("stage") != "B" and (args.seed is None or r.get("seed") == args.seed)]
    if len({r.get("seed") for r in results}) > 1:
        raise SystemExit(f"{args.results} holds several seeds of {args.recipe!r}: choose the final model's with --seed")
    by_fold = {r["fold"]: {n: s["expected_error_ratio"] for n, s in r["per_subject"].items()
                           if "expected_error_ratio" in s} for r in results}
    if not by_fold:
        raise SystemExit(f"no fold of recipe {args.recipe!r} with expected_error_ratio in {args.results}")
    print("fold | ratio before | factor from the other folds | ratio after", file=sys.stderr)
    for fold, ratios in sorted(by_fold.items()):
        others = {n: v for f, rs in by_fold.items() if f != fold for n, v in rs.items()}
        factor = ErrorCalibration.from_ratios(others, "other folds").scale
        print(f"{fold} | {', '.join(f'{v:.2f}' for v in ratios.values())} | ×{factor:.3f} | "
              f"{', '.join(f'{v * factor:.2f}' for v in ratios.values())}", file=sys.stderr)
    everything = {n: v for rs in by_fold.values() for n, v in rs.items()}
    calibration = ErrorCalibration.from_ratios(
        everything, f"held out in the {len(by_fold)} leave-one-source-out folds of recipe {args.recipe} "
                    f"({Path(args.results).name})")
    bundle = load_bundle(args.bundle)
    meta = dataclasses.replace(bundle.metadata, error_calibration=calibration,
                               name=args.name or bundle.metadata.name,
                               description=args.description or bundle.metadata.description,
                               provenance={**bundle.metadata.provenance, **json.loads(args.provenance)})
    save_bundle(args.out, bundle.generator, bundle.local_discriminator, meta)
    print(calibration.describe(), file=sys.stderr)


def job_main(args: argparse.Namespace) -> None:
    job = json.loads(Path(args.job).read_text(encoding="utf-8"))
    out = Path(args.out)
    if job.get("bundle"):
        (out / job["bundle"]).parent.mkdir(parents=True, exist_ok=True)
    result = run_job(job, args.prepared, out, args.device)
    (out / "jobs" / f"{job['id']}.json").write_text(json.dumps(result), encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--data", required=True)
    a.add_argument("--sources", default=str(SOURCES_CSV))
    a.add_argument("--spacing", type=float, default=1.0)
    a.add_argument("--out", required=True)
    b = sub.add_parser("run")
    b.add_argument("--prepared", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--device", default="cuda")
    b.add_argument("--parallel", type=int, default=25)
    b.add_argument("--batch", type=int, default=16)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-folds", type=int, default=0, help="only the first N folds (smoke tests)")
    b.add_argument("--recipes", default="", help="comma-separated subset of the recipes (default: all)")
    b.add_argument("--seconds-a", type=float, default=80.0, help="training seconds per stage-A job")
    b.add_argument("--seconds-b", type=float, default=120.0, help="budget that sets stage B's step count")
    b.add_argument("--seconds-c", type=float, default=120.0, help="training seconds of the final model")
    j = sub.add_parser("job")
    j.add_argument("job")
    j.add_argument("--prepared", required=True)
    j.add_argument("--out", required=True)
    j.add_argument("--device", default="cuda")
    d = sub.add_parser("confirm")
    d.add_argument("--prepared", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--device", default="cuda")
    d.add_argument("--recipes", required=True)
    d.add_argument("--variant", default="unet")
    d.add_argument("--seconds", type=float, default=200.0)
    d.add_argument("--steps", type=int, default=0, help="stop each job at this many steps (a CPU re-run of a GPU "
                   "budget); 0: only --seconds limits it")
    d.add_argument("--parallel", type=int, default=12)
    d.add_argument("--batch", type=int, default=16)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--seeds", default="", help="comma-separated seeds of the fold jobs (default: --seed)")
    d.add_argument("--ablation-steps", type=int, default=0,
                   help="also run the ablation (stage B) with the first recipe, every seed, exactly this many "
                        "steps per job (no time cap)")
    d.add_argument("--ablation-only", action="store_true", help="the ablation alone (no stage-D jobs)")
    d.add_argument("--max-folds", type=int, default=0)
    d.add_argument("--held-out", default="", help="only the folds holding out these sources (comma-separated)")
    d.add_argument("--no-final", action="store_true", help="fold models only (e.g. the few-shot benchmark's)")
    c = sub.add_parser("baseline")
    c.add_argument("bundle")
    c.add_argument("--prepared", required=True)
    c.add_argument("--out", required=True)
    k = sub.add_parser("calibrate")
    k.add_argument("results", help="a confirm run's results.json (fold jobs with expected_error_ratio)")
    k.add_argument("--recipe", required=True)
    k.add_argument("--bundle", required=True, help="the recipe's final model")
    k.add_argument("--out", required=True, help="the calibrated copy (never overwrites)")
    k.add_argument("--name", default="", help="a new model name (e.g. for the shipped default)")
    k.add_argument("--description", default="")
    k.add_argument("--provenance", default="{}", help="JSON object of provenance entries to add")
    k.add_argument("--seed", type=int, default=None, help="the fold jobs of this seed (a run of several seeds)")
    r = sub.add_parser("rescore", help="score a run's fold bundles again (no training)")
    r.add_argument("run")
    r.add_argument("--prepared", required=True)
    r.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("results")
    args = p.parse_args()
    from loso_table import table  # the report reads results files only

    {"prepare": prepare, "run": run, "job": job_main, "table": table, "baseline": baseline,
     "confirm": confirm, "calibrate": calibrate, "rescore": rescore}[args.command](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
