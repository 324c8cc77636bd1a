"""Which trust map finds the errors on unseen sources: candidate maps scored on LOSO fold bundles.

For each fold bundle of a ``loso.py confirm`` run (``results.json`` names its held-out subjects), the
generator is run over its held-out subjects (prepared arrays, as in ``loso.py``) and each candidate map
is scored with the product's own :func:`scoring.map_scores` (AUROC for the worst-10 % |error| voxels of
the foreground, Spearman with |error|). Candidates: G's expected error, the edge baseline, and
combinations of the two that a heatmap could ship. Prints the fold means (each fold = mean of its
held-out subjects) and writes the per-subject numbers to ``--out``.

With ``--tta K``, also test-time augmentation candidates (Wang et al. 2019, "Aleatoric uncertainty
estimation with test-time augmentation"): G is run K more times with the training's scanner
augmentation (:class:`SourceAugmentation`, seed i for pass i) applied to each stacked 2.5-D batch —
inside the batch, so every channel of one stack shares the parameters, as in training — and the
spread of the K predictions is scored alone and combined with the expected error.

    python experiments/trust_maps.py /work/runs/cpu-d --prepared .loso/loso.npz --out maps.json [--tta 8]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loso  # the experiment's own scoring (after the path insert)
from fold_runs import held_out_scans, rescoring_parser


def _ranks(a: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Ranks in [0, 1] inside the foreground (0 outside): a unit-free version of a map."""
    out = np.zeros(a.shape, np.float32)
    out[fg] = rankdata(a[fg]) / fg.sum()
    return out


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(a, (0, sigma, sigma))  # in-plane: slices can be 3-4 mm apart


CANDIDATES: dict[str, Callable[[dict], np.ndarray]] = {
    "expected_error": lambda m: m["err"],
    "edge": lambda m: m["edge"],
    "expected_error smoothed 2 px": lambda m: _smooth(m["err"], 2),
    "edge smoothed 1 px": lambda m: _smooth(m["edge"], 1),
    "edge smoothed 2 px": lambda m: _smooth(m["edge"], 2),
    "edge smoothed 3 px": lambda m: _smooth(m["edge"], 3),
    "edge smoothed 5 px": lambda m: _smooth(m["edge"], 5),
    "expected_error × edge^0.5": lambda m: m["err"] * np.sqrt(m["edge"]),
    "expected_error × edge smoothed 2 px": lambda m: m["err"] * _smooth(m["edge"], 2),
    "expected_error^0.5 × edge smoothed 2 px": lambda m: np.sqrt(m["err"]) * _smooth(m["edge"], 2),
    "rank mean(expected_error, edge smoothed 2 px)": lambda m: _ranks(m["err"], m["fg"])
    + _ranks(_smooth(m["edge"], 2), m["fg"]),
    "source edge smoothed 2 px": lambda m: _smooth(m["src_edge"], 2),
}

# Both the expected error and the TTA spread are |error|-like in target units, so sums are meaningful.
TTA_CANDIDATES: dict[str, Callable[[dict], np.ndarray]] = {
    "tta std": lambda m: m["tta_std"],
    "tta mean abs dev from prediction": lambda m: m["tta_mad"],
    "tta mean expected_error": lambda m: m["tta_err"],
    "expected_error + tta std": lambda m: m["err"] + m["tta_std"],
    "rank mean(expected_error, tta std)": lambda m: _ranks(m["err"], m["fg"]) + _ranks(m["tta_std"], m["fg"]),
    "sqrt(expected_error² + tta std²)": lambda m: np.hypot(m["err"], m["tta_std"]),
}


def _augmented(generator, strength: float, seed: int):
    """``generator`` behind :class:`SourceAugmentation`: :func:`loso.held_out` (hence ``predict``'s batching
    and 2.5-D stacking) runs unchanged, and each stacked batch is augmented as in training."""
    import torch
    from DualDTrainingLib.augment import SourceAugmentation

    class Augmented(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator, self.augment = generator, SourceAugmentation(strength, seed=seed)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.generator(self.augment(x))

    return Augmented()


def tta_maps(generator, subject, context: int, target, h, passes: int, strength: float) -> dict[str, np.ndarray]:
    """The spread of ``passes`` augmented predictions (cropped like ``h``, the unaugmented :class:`HeldOut`)."""
    import torch

    runs = [loso.held_out(_augmented(generator, strength, i), subject, context, torch.device("cpu"), target)
            for i in range(passes)]
    preds = np.stack([r.synthetic for r in runs])
    out = {"tta_std": preds.std(0), "tta_mad": np.abs(preds - h.synthetic).mean(0)}
    if h.expected_error is not None:
        out["tta_err"] = np.mean([r.expected_error for r in runs], 0)
    return out


def score_run(run: Path, prepared: str, passes: int = 0, strength: float = 1.0, threads: int = 2) -> dict:
    import time

    import torch
    from DualDSynthesisLib.imaging.scoring import gradient_magnitude, map_scores

    torch.set_num_threads(threads)
    candidates = CANDIDATES | (TTA_CANDIDATES if passes else {})
    out: dict = {}
    for job, bundle, subject, h in held_out_scans(run, prepared):
        ys, xs = subject.crop
        m = {"err": h.expected_error, "edge": gradient_magnitude(h.synthetic, h.spacing_kji), "fg": h.foreground,
             "src_edge": gradient_magnitude(subject.source[:, ys, xs], h.spacing_kji)}
        start = time.perf_counter()
        if passes:
            m |= tta_maps(bundle.generator, subject, bundle.metadata.preprocessing.context_slices,
                          bundle.metadata.preprocessing.target, h, passes, strength)
        seconds = time.perf_counter() - start
        maps = {k: f(m) for k, f in candidates.items()}
        out[subject.name] = {"fold": job["fold"], "maps": map_scores(maps, np.abs(h.synthetic - h.target),
                                                                     h.foreground),
                             "tta_seconds": seconds, "slices": int(h.synthetic.shape[0])}
        print(subject.name, {k: round(v["auroc"], 3) for k, v in out[subject.name]["maps"].items()}, file=sys.stderr)
    return out


def main() -> None:
    p = rescoring_parser(__doc__)
    p.add_argument("--tta", type=int, default=0, metavar="K", help="test-time augmentation passes (0: none)")
    p.add_argument("--tta-strength", type=float, default=1.0, help="SourceAugmentation strength of the passes")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args()
    if args.tta < 0 or args.tta == 1:
        p.error(f"--tta needs 0 (off) or at least 2 passes for a spread, got {args.tta}")
    if not 0 < args.tta_strength <= 1:
        p.error(f"--tta-strength must be in (0, 1], got {args.tta_strength}")
    per_subject = score_run(args.run, args.prepared, args.tta, args.tta_strength, args.threads)
    args.out.write_text(json.dumps(per_subject, indent=1), encoding="utf-8")
    folds = sorted({s["fold"] for s in per_subject.values()})
    print("| map | AUROC worst-10 % (fold mean ± std) | Spearman | " + " | ".join(folds) + " |")
    print("|---" * (3 + len(folds)) + "|")
    for name in next(iter(per_subject.values()))["maps"]:
        by_fold = {f: [s["maps"][name] for s in per_subject.values() if s["fold"] == f] for f in folds}
        auc = [float(np.mean([v["auroc"] for v in vs])) for vs in by_fold.values()]
        rho = [float(np.mean([v["spearman"] for v in vs])) for vs in by_fold.values()]
        print(f"| {name} | {np.mean(auc):.3f} ± {np.std(auc):.3f} | {np.mean(rho):.3f} ± {np.std(rho):.3f} | "
              + " | ".join(f"{a:.3f}" for a in auc) + " |")


if __name__ == "__main__":
    main()
