"""Few-shot benchmark (issue 25, item 4): what one local subject is worth at a site the model never saw.

For every fold of a ``loso.py confirm`` run whose held-out source has exactly two subjects (BraTS,
Ljubljana-MS, Ljubljana-long), the fold model (which never saw that source) is adapted on one of them and
scored on the other, both directions, for every seed. Rows:

- ``fold model``: the fold's bundle as it is;
- ``recalibration only``: ``duald-train --init-from FOLD --recalibrate-only`` on the one subject (same weights,
  its expected-error factor re-fitted there: only the real/expected ratio can change);
- ``fine-tuned``: ``duald-train --init-from FOLD`` on the one subject with the fine-tuning defaults
  (``config.FINETUNE_DEFAULTS``; ``--iterations`` overrides the steps);
- ``from scratch``: the same architecture and input recipe (``init_from.RECIPE`` of the fold bundle, the fold
  job's augmentation and crop) trained from random weights on that one subject for the same steps.

Columns (on the other subject, the LOSO scoring of ``loso.held_out`` on the prepared arrays): brain PSNR, MAE
and SSIM over the foreground, lesion PSNR, the expected-error map's AUROC for the worst-10 % errors, and the
real/expected MAE ratio with the bundle's calibration applied (1 = the map's values are right on average).
The adaptations run through the product (``run_training``/``recalibrate_only`` on the raw NIfTI of ``--data``).

    python experiments/few_shot.py RUN --prepared .loso/loso.npz --data ../shared/data/brain-mri \\
        --out few_shot.json --seeds 0,1 [--iterations 200] [--device cuda]
    python experiments/few_shot.py table few_shot-*.json      # the tables of finished runs
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loso  # the experiment's own scoring (after the path insert)
import loso_data  # its prepared arrays
from fold_runs import fold_jobs

ROWS = ("fold model", "recalibration only", "fine-tuned", "from scratch")
COLUMNS = ("psnr", "mae", "ssim", "lesion_psnr", "auroc", "real_over_expected")


def score(bundle_path: Path, loaded: loso_data.Loaded, norm: str) -> dict[str, float]:
    """The bundle on one prepared subject, as the LOSO tables score it, with the bundle's calibration."""
    import torch
    from DualDSynthesisLib.imaging.bundle import load_bundle
    from DualDSynthesisLib.imaging.calibration import error_ratio
    from DualDSynthesisLib.imaging.scoring import map_scores
    from DualDSynthesisLib.model import metrics

    bundle = load_bundle(bundle_path)
    spec = bundle.metadata.preprocessing
    subject = loso_data.training_subject(loaded, norm)
    h = loso.held_out(bundle.generator, subject, spec.context_slices, torch.device("cpu"), spec.target)
    p, t, fg = h.synthetic, h.target, h.foreground
    out = {"psnr": metrics.psnr(p, t, 1.0, fg), "mae": metrics.mae(p, t, fg),
           "ssim": metrics.masked_mean(metrics.ssim_map(p, t, 1.0), fg), "lesion_psnr": float("nan"),
           "auroc": float("nan"), "real_over_expected": float("nan")}
    ys, xs = subject.crop
    if subject.tumour is not None and subject.tumour[:, ys, xs].any():
        out["lesion_psnr"] = metrics.psnr(p, t, 1.0, subject.tumour[:, ys, xs])
    if h.expected_error is not None:
        calibrated = h.expected_error * bundle.metadata.error_calibration.scale
        out["auroc"] = map_scores({"e": calibrated}, np.abs(p - t), fg)["e"]["auroc"]
        out["real_over_expected"] = 1.0 / error_ratio(calibrated, np.abs(p - t), fg)
    return out


def _site_folder(data: Path, subject: str, work: Path) -> Path:
    """A data folder holding only ``subject`` (a link to its raw folder): the site's one paired scan."""
    folder = work / "site" / subject
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / subject
    if not link.exists():
        link.symlink_to((data / subject).resolve(), target_is_directory=True)
    return folder


def adapted(row: str, fold_bundle: Path, job: dict, site: Path, out: Path, args: argparse.Namespace,
            seed: int) -> Path:
    """Train (or recalibrate) one row's model on the site folder; returns its bundle."""
    from DualDSynthesisLib.imaging.bundle import read_metadata
    from DualDTrainingLib.config import RunConfig
    from DualDTrainingLib.init_from import RECIPE, resolve
    from DualDTrainingLib.loop import run_training
    from DualDTrainingLib.recalibration import OUTPUT_NAME, recalibrate_only

    base = {"data": site, "source": "t1", "target": "t2", "output": out, "device": args.device, "seed": seed,
            "overwrite": True, "workers": 1, "val_every": 0}
    given = {"seed", "device", "overwrite", "workers", "val_every"}
    if args.iterations:
        base["iterations"] = args.iterations
        given.add("iterations")
    if args.lr_g and row == "fine-tuned":
        base["lr_g"] = args.lr_g
        given.add("lr_g")
    if args.freeze_encoder and row == "fine-tuned":
        base["freeze_encoder"] = True
        given.add("freeze_encoder")
    if row == "recalibration only":
        recalibrate_only(RunConfig(**base, init_from=str(fold_bundle), recalibrate_only=True), say=lambda m: None)
        return out / OUTPUT_NAME
    if row == "fine-tuned":
        run_training(resolve(RunConfig(**base, init_from=str(fold_bundle)), given))
        return out / "model-final.safetensors"
    meta = read_metadata(fold_bundle)
    recipe = {name: value_of(meta) for name, value_of in RECIPE.items()}
    settings = job.get("recipe_settings", {})
    crop = args.crop if args.crop is not None else int(settings.get("crop", 0))
    tuned = resolve(RunConfig(**base, init_from=str(fold_bundle)), given)  # the same steps and batch
    # the learning rate of training from scratch (RunConfig's default), not the fine-tuning one: 5e-5 is meant
    # to stay near a parent's weights and would handicap random ones
    run_training(RunConfig(**base | {"iterations": tuned.iterations}, **recipe, variant=meta.variant,
                           batch_size=tuned.batch_size, augment=float(settings.get("augment", 1.0)), crop_size=crop))
    return out / "model-final.safetensors"


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for fold, job in fold_jobs(args.run).items():
        if len(job["test"]) != 2:
            continue
        fold_bundle = args.run / job["bundle"]
        norm = job["recipe_settings"]["source_norm"]
        data = loso_data.load_prepared(args.prepared, list(job["test"]))
        for tune, test in permutations(job["test"]):
            key = f"{fold}: {tune} → {test}"
            site = _site_folder(args.data, tune, args.work)
            entry: dict[str, Any] = {"fold model": score(fold_bundle, data[test], norm)}
            for seed in args.seeds:
                for row in args.rows:
                    if row == "recalibration only" and seed != args.seeds[0]:
                        continue  # no randomness: one run
                    out = args.work / "runs" / f"{fold}-{tune}-{row.replace(' ', '_')}-s{seed}"
                    bundle = adapted(row, fold_bundle, job, site, out, args, seed)
                    entry.setdefault(row, []).append(score(bundle, data[test], norm))
                    print(f"{key} {row} seed {seed}: {entry[row][-1]}", file=sys.stderr, flush=True)
            results[key] = entry
            args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return results


def table(results: dict[str, Any]) -> str:
    """Mean over directions and seeds, per row: the docs' markdown table."""
    lines = ["| row | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for row in ROWS:
        runs = [r for entry in results.values() for r in (entry[row] if isinstance(entry.get(row), list)
                                                          else [entry[row]] if row in entry else [])]
        cells = [f"{np.nanmean([r[c] for r in runs]):.3g}" if runs and not all(np.isnan(r[c]) for r in runs)
                 else "–" for c in COLUMNS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _runs(entry: dict[str, Any], row: str) -> list[dict[str, float]]:
    value = entry.get(row)
    return value if isinstance(value, list) else [value] if value else []


def direction_table(results: dict[str, Any], column: str = "psnr") -> str:
    """One line per direction: ``column`` per row (mean over seeds, the seeds' values in brackets)."""
    lines = ["| fold: tuned on → tested on | " + " | ".join(ROWS) + " |", "|---|" + "---|" * len(ROWS)]
    for key, entry in results.items():
        cells = []
        for row in ROWS:
            values = [r[column] for r in _runs(entry, row)]
            text = f"{np.mean(values):.2f}" if values else "–"
            cells.append(text + (f" ({' / '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_tables(paths: list[str]) -> int:
    """``few_shot.py table A.json B.json ...``: the docs' tables from finished runs (one JSON per fold)."""
    results: dict[str, Any] = {}
    for path in paths:
        results.update(json.loads(Path(path).read_text(encoding="utf-8")))
    print(table(results), end="\n\n")
    for column in ("psnr", "real_over_expected"):
        print(f"{column}:\n{direction_table(results, column)}", end="\n\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["table"]:
        return print_tables(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a loso.py confirm output folder (results.json, bundles/)")
    p.add_argument("--prepared", required=True, help="loso.py prepare's arrays (.npz)")
    p.add_argument("--data", required=True, type=Path, help="the raw subject folders (../shared/data/brain-mri)")
    p.add_argument("--out", required=True, type=Path, help="per-direction results (JSON)")
    p.add_argument("--work", type=Path, default=Path("few-shot-work"), help="site folders and adapted models")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds of the trained rows")
    p.add_argument("--iterations", type=int, default=0, help="steps of the trained rows (0: the fine-tuning default)")
    p.add_argument("--crop", type=int, default=None, help="from-scratch crop size (default: the fold job's)")
    p.add_argument("--lr-g", type=float, default=0.0, help="fine-tuned rows' learning rate (0: default)")
    p.add_argument("--freeze-encoder", action="store_true", help="fine-tuned rows with the encoder frozen")
    p.add_argument("--rows", default=",".join(ROWS[1:]), help="the adapted rows to run (comma-separated; a sweep of "
                   "the fine-tuning settings runs 'fine-tuned' alone)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS[1:]]
    if unknown:
        p.error(f"--rows: unknown row {unknown[0]!r}; expected some of {', '.join(ROWS[1:])}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    print(table(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
