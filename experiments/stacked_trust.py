"""A trust map learned from other sites' errors: does it find an unseen site's worst errors better?

G's expected-error head learns |error| from its own training residuals, which are not the errors it makes on
a site it never saw. This probe learns them from the LOSO folds instead: per voxel, a logistic regression from
features a product has at inference (the expected error, the synthetic's edge strength at two scales, the
synthetic and source intensities, the source's local spread and the distance to the foreground's edge, all as
ranks within the scan) to "is this voxel among the scan's worst 10 % |error|", fitted on the held-out
predictions of four folds (each fold's model on its own unseen source) and scored on the fifth
(leave-one-fold-out: the fold scored never contributes a training voxel).

    python experiments/stacked_trust.py /work/runs/gpu-f --prepared .loso/loso.npz --out stacked.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fold_runs import held_out_scans, rescoring_parser  # after the path insert

FEATURES = ("expected error", "edge 1 px", "edge 3 px", "synthetic", "source", "source local std 2 px",
            "distance to the foreground edge")
SAMPLES_PER_SCAN = 60_000  # training voxels drawn per held-out scan (fixed seed)


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(a, (0, sigma, sigma))  # in-plane: slices can be 3-4 mm apart


def features(h, source: np.ndarray) -> np.ndarray:
    """``[voxels, len(FEATURES)]`` for the foreground voxels of one held-out scan, each a rank in [0, 1]."""
    from DualDSynthesisLib.imaging.scoring import gradient_magnitude

    fg = h.foreground
    edge = gradient_magnitude(h.synthetic, h.spacing_kji)
    local_std = np.sqrt(np.maximum(_smooth(source**2, 2) - _smooth(source, 2) ** 2, 0))
    depth = ndimage.distance_transform_edt(fg, sampling=h.spacing_kji)
    columns = [h.expected_error, _smooth(edge, 1), _smooth(edge, 3), h.synthetic, source, local_std, depth]
    return np.stack([rankdata(c[fg]) / fg.sum() for c in columns], 1).astype(np.float32)


def fit_logistic(x: np.ndarray, y: np.ndarray, iterations: int = 25, ridge: float = 1e-3) -> np.ndarray:
    """Logistic regression with an intercept and squared terms, by Newton's method (weights ``[2F + 1]``)."""
    design = _design(x)
    w = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-design @ w))
        grad = design.T @ (p - y) + ridge * w
        hess = (design * (p * (1 - p))[:, None]).T @ design + ridge * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def _design(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.ones((len(x), 1)), x, x**2], 1)


def main() -> None:
    import torch
    from DualDSynthesisLib.imaging.scoring import map_scores

    args = rescoring_parser(__doc__).parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    scans: dict[str, dict] = {}
    for job, _bundle, subject, h in held_out_scans(args.run, args.prepared):
        name = subject.name
        ys, xs = subject.crop
        x = features(h, subject.source[:, ys, xs])
        err = np.abs(h.synthetic - h.target)[h.foreground]
        y = (err >= np.quantile(err, 0.9)).astype(np.float64)
        pick = rng.choice(len(x), min(SAMPLES_PER_SCAN, len(x)), replace=False)
        scans[name] = {"fold": job["fold"], "h": h, "x": x, "y": y, "pick": pick}
        print(f"features of {name}", file=sys.stderr)
    out: dict = {}
    for name, scan in scans.items():
        train = [s for s in scans.values() if s["fold"] != scan["fold"]]
        w = fit_logistic(np.concatenate([s["x"][s["pick"]] for s in train]),
                         np.concatenate([s["y"][s["pick"]] for s in train]))
        h = scan["h"]
        stacked = np.zeros(h.foreground.shape, np.float32)
        stacked[h.foreground] = _design(scan["x"]) @ w
        maps = {"stacked": stacked, "expected_error": h.expected_error}
        scores = map_scores(maps, np.abs(h.synthetic - h.target), h.foreground)
        out[name] = {"fold": scan["fold"], "maps": scores, "weights": dict(zip(
            ["intercept"] + [f"{f}" for f in FEATURES] + [f"{f}²" for f in FEATURES], map(float, w), strict=True))}
        print(name, {k: round(v["auroc"], 3) for k, v in scores.items()}, file=sys.stderr)
    args.out.write_text(json.dumps(out, indent=1), encoding="utf-8")
    for key in ("stacked", "expected_error"):
        per_subject = [r["maps"][key]["auroc"] for r in out.values()]
        lo, hi = min(per_subject), max(per_subject)
        print(f"{key}: AUROC per subject {np.mean(per_subject):.3f} (range {lo:.3f}–{hi:.3f})")


if __name__ == "__main__":
    main()
