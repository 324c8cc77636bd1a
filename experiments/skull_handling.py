"""Skull handling on unseen whole heads: does ``--skull strip`` help a model that never saw a head?

For every held-out subject of a ``loso.py confirm`` run whose source is a whole head (the fingerprint's
skull rule), the fold's generator is run twice on the prepared arrays: on the head as it is ("keep"), and
on the head stripped to its brain ("strip": the product's :func:`brainmask.estimate_brain_mask` on the
prepared T1, the source zeroed outside it and normalised again, exactly what the engine does). Scores:

- **brain** (the issue's "brain PSNR"): inside the BET brain mask, the real T2 scaled by its own 99.5th
  percentile *in the brain*, as for the skull-stripped sources whose foreground is the brain;
- **head**: the LOSO table's region for whole heads (source ∪ target foreground, T2 scaled in the head);
  "strip" has no prediction outside the brain, so only "keep" is scored there;
- the trust maps (expected error, edge) inside the brain, as ``scoring.map_scores``.

    python experiments/skull_handling.py /work/runs/cpu-rank --prepared .loso/loso.npz --out skull.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loso  # the experiment's own scoring (after the path insert)
import loso_data  # its prepared arrays
from fold_runs import fold_jobs, rescoring_parser


def brain_mask(loaded: loso_data.Loaded) -> np.ndarray:
    """The product's BET brain mask of a prepared subject's T1, on the prepared [K, H, W] grid."""
    import SimpleITK as sitk
    from DualDSynthesisLib.imaging.brainmask import estimate_brain_mask

    image = sitk.GetImageFromArray(loaded.source * np.float32(loaded.info["source_scale"]))
    image.SetSpacing((1.0, 1.0, float(loaded.info["slice_spacing"])))
    return sitk.GetArrayFromImage(estimate_brain_mask(image)).astype(bool)


def _scores(pred: np.ndarray, target: np.ndarray, region: np.ndarray, err: np.ndarray | None,
            spacing_kji: tuple[float, float, float]) -> dict:
    from DualDSynthesisLib.imaging.calibration import error_ratio
    from DualDSynthesisLib.imaging.scoring import gradient_magnitude, map_scores
    from DualDSynthesisLib.model import metrics

    constant = np.full_like(target, float(target[region].mean()))
    out = {"psnr": metrics.psnr(pred, target, 1.0, region), "mae": metrics.mae(pred, target, region),
           "ssim": metrics.masked_mean(metrics.ssim_map(pred, target, 1.0), region),
           "psnr_constant": metrics.psnr(constant, target, 1.0, region)}
    maps = {"edge": gradient_magnitude(pred, spacing_kji)}
    if err is not None:
        maps["expected_error"] = err
        out["expected_error_ratio"] = error_ratio(err, np.abs(pred - target), region)  # the fold model's, uncalibrated
    out["maps"] = map_scores(maps, np.abs(pred - target), region)
    return out


def score_subject(bundle, loaded: loso_data.Loaded, norm: str) -> dict:
    import torch

    generator, spec = bundle.generator, bundle.metadata.preprocessing
    context, target = spec.context_slices, spec.target
    brain = brain_mask(loaded)
    cpu = torch.device("cpu")
    keep = loso.held_out(generator, loso_data.training_subject(loaded, norm), context, cpu, target)
    stripped = dataclasses.replace(loaded, source=np.where(brain, loaded.source, 0).astype(np.float32),
                                   foreground=loaded.foreground & brain)
    subject = loso_data.training_subject(stripped, norm)
    strip = loso.held_out(generator, subject, context, cpu, target)
    ys, xs = subject.crop
    raw = loaded.target * np.float32(loaded.info["target_scale"])
    in_brain = brain[:, ys, xs]
    target_b = np.clip(raw / np.percentile(raw[brain], 99.5), 0, 2)[:, ys, xs]
    return {
        "brain_ml": float(brain.sum() * loaded.info["slice_spacing"] / 1000.0),
        "keep": {"head": _scores(keep.synthetic, keep.target, keep.foreground, keep.expected_error, keep.spacing_kji),
                 "brain": _scores(keep.synthetic, target_b, in_brain, keep.expected_error, keep.spacing_kji)},
        "strip": {"brain": _scores(strip.synthetic, target_b, in_brain, strip.expected_error, strip.spacing_kji)},
    }


def score_run(run: Path, prepared: str) -> dict:
    import torch
    from DualDSynthesisLib.imaging.bundle import load_bundle

    torch.set_num_threads(1)
    out: dict = {}
    for job in fold_jobs(run).values():
        data = loso_data.load_prepared(prepared, list(job["test"]))
        heads = [n for n in job["test"] if data[n].info["stats"]["skull"]]
        if not heads:
            continue
        bundle = load_bundle(run / job["bundle"])
        for name in heads:
            out[name] = {"fold": job["fold"], "bundle": job["bundle"],
                         **score_subject(bundle, data[name], job["recipe_settings"]["source_norm"])}
            print(name, json.dumps({k: round(v["brain"]["psnr"], 2) for k, v in out[name].items()
                                    if isinstance(v, dict) and "brain" in v}), file=sys.stderr)
    return out


def main() -> None:
    args = rescoring_parser(__doc__).parse_args()
    per_subject = score_run(args.run, args.prepared)
    args.out.write_text(json.dumps(per_subject, indent=1), encoding="utf-8")
    print("| subject | input | region | PSNR | constant-oracle PSNR | MAE | SSIM | AUROC expected error | AUROC edge "
          "| expected / real MAE |")
    print("|---" * 10 + "|")
    for name, s in per_subject.items():
        for mode, region in (("keep", "head"), ("keep", "brain"), ("strip", "brain")):
            r = s[mode][region]
            print(f"| {name} | {mode} | {region} | {r['psnr']:.2f} | {r['psnr_constant']:.2f} | {r['mae']:.4f} | "
                  f"{r['ssim']:.3f} | {r['maps'].get('expected_error', {}).get('auroc', float('nan')):.3f} | "
                  f"{r['maps']['edge']['auroc']:.3f} | {r.get('expected_error_ratio', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
