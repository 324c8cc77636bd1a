"""Run-to-run noise, a seed ensemble, and ensemble disagreement as a trust map, on LOSO fold bundles.

Two (or more) ``loso.py confirm`` runs of the same recipe that differ only in ``--seed`` give, per held-out
subject: each run's brain PSNR (how much one training run moves the LOSO table), the PSNR of the mean
prediction (a deep ensemble, Lakshminarayanan et al. 2017), and trust maps scored as the product scores
them (``scoring.map_scores``: AUROC for the worst-10 % |error| voxels of the ensemble mean, Spearman):
the mean expected error, the disagreement (std of the runs' predictions: the ensemble's epistemic
uncertainty, which an unseen site's contrast should raise), their sum, and the edge baseline.

    python experiments/ensemble.py /work/runs/cpu-rank /work/runs/cpu-rank-s1 --prepared .loso/loso.npz \
        --out ensemble.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loso  # the experiment's own scoring (after the path insert)
import loso_data  # its prepared arrays
from fold_runs import fold_jobs, rescoring_parser


def score(runs: list[Path], prepared: str) -> dict:
    import torch
    from DualDSynthesisLib.imaging.bundle import load_bundle
    from DualDSynthesisLib.imaging.scoring import gradient_magnitude, map_scores
    from DualDSynthesisLib.model import metrics

    torch.set_num_threads(2)
    jobs = [fold_jobs(r) for r in runs]
    out: dict = {}
    for fold in sorted(set.intersection(*(set(j) for j in jobs))):
        bundles = [load_bundle(run / j[fold]["bundle"]) for run, j in zip(runs, jobs, strict=True)]
        test = jobs[0][fold]["test"]
        data = loso_data.load_prepared(prepared, list(test))
        for name in test:
            subject = loso_data.training_subject(data[name], jobs[0][fold]["recipe_settings"]["source_norm"])
            held = [loso.held_out(b.generator, subject, b.metadata.preprocessing.context_slices,
                                  torch.device("cpu"), b.metadata.preprocessing.target) for b in bundles]
            t, fg = held[0].target, held[0].foreground
            preds = np.stack([h.synthetic for h in held])
            mean = preds.mean(axis=0)
            err = np.mean([h.expected_error for h in held], axis=0)
            spread = preds.std(axis=0)
            maps = {"expected_error (mean)": err, "disagreement (std)": spread, "expected_error + disagreement":
                    err + spread, "edge": gradient_magnitude(mean, held[0].spacing_kji)}
            out[name] = {"fold": fold,
                         "psnr_runs": [metrics.psnr(p, t, 1.0, fg) for p in preds],
                         "psnr_ensemble": metrics.psnr(mean, t, 1.0, fg),
                         "ssim_ensemble": metrics.masked_mean(metrics.ssim_map(mean, t, 1.0), fg),
                         "maps": map_scores(maps, np.abs(mean - t), fg)}
            print(name, json.dumps({k: out[name][k] for k in ("psnr_runs", "psnr_ensemble")}), file=sys.stderr)
    return out


def main() -> None:
    args = rescoring_parser(__doc__, several=True).parse_args()
    per_subject = score(args.runs, args.prepared)
    args.out.write_text(json.dumps(per_subject, indent=1), encoding="utf-8")
    folds = sorted({s["fold"] for s in per_subject.values()})

    def fold_means(value) -> list[float]:
        return [float(np.mean([value(s) for s in per_subject.values() if s["fold"] == f])) for f in folds]

    print("| | " + " | ".join(folds) + " | mean ± std over folds |")
    print("|---" * (len(folds) + 2) + "|")
    rows = {f"brain PSNR, run {i + 1}": (lambda s, i=i: s["psnr_runs"][i]) for i in range(len(args.runs))}
    rows["brain PSNR, ensemble mean"] = lambda s: s["psnr_ensemble"]
    rows["brain SSIM, ensemble mean"] = lambda s: s["ssim_ensemble"]
    for name in next(iter(per_subject.values()))["maps"]:
        rows[f"AUROC {name}"] = lambda s, name=name: s["maps"][name]["auroc"]
    for label, value in rows.items():
        v = fold_means(value)
        print(f"| {label} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {np.mean(v):.3f} ± {np.std(v):.3f} |")


if __name__ == "__main__":
    main()
