"""How much of a fold model's error on an unseen site is the site's T2 contrast curve, and how much anatomy?

For every held-out subject of a ``loso.py confirm`` run, the fold's prediction (as the product writes it) is
scored inside the foreground as it is, and after two oracle re-mappings of its intensities that need the real
T2 (so no product can do them; they bound what an intensity correction alone could gain):

- **affine**: ``a·synthetic + b`` fitted to the real T2 by least squares (a global scale and offset error);
- **monotone**: the synthetic's foreground histogram matched to the real T2's (quantile mapping): any
  contrast curve, as long as the model ranks the voxels right.

If the monotone oracle closes most of the gap to a good score, the model got the anatomy (the ranks) right
and the unseen site's T2 contrast wrong; if it does not, the errors are structural.

    python experiments/contrast_oracle.py /work/runs/gpu-f --prepared .loso/loso.npz --out oracle.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fold_runs import held_out_scans, rescoring_parser  # after the path insert


def affine_oracle(synthetic: np.ndarray, real: np.ndarray) -> np.ndarray:
    """``a·synthetic + b`` with the least-squares ``a, b`` against ``real`` (1-D foreground values)."""
    a, b = np.polyfit(synthetic.astype(np.float64), real.astype(np.float64), 1)
    return (a * synthetic + b).astype(np.float32)


def monotone_oracle(synthetic: np.ndarray, real: np.ndarray) -> np.ndarray:
    """``synthetic``'s values replaced by the real values of the same rank (histogram matching; ties keep
    the order of appearance)."""
    out = np.empty_like(real)
    out[np.argsort(synthetic, kind="stable")] = np.sort(real)
    return out


def psnr_values(pred: np.ndarray, real: np.ndarray, data_range: float = 1.0) -> float:
    return float(10 * np.log10(data_range**2 / np.mean((pred.astype(np.float64) - real) ** 2)))


def main() -> None:
    import torch

    args = rescoring_parser(__doc__).parse_args()
    torch.set_num_threads(2)
    out: dict = {}
    for job, _bundle, subject, h in held_out_scans(args.run, args.prepared):
        s, t = h.synthetic[h.foreground], h.target[h.foreground]
        out[subject.name] = {"fold": job["fold"], "psnr": psnr_values(s, t),
                             "affine": psnr_values(affine_oracle(s, t), t),
                             "monotone": psnr_values(monotone_oracle(s, t), t),
                             "flat": psnr_values(np.full_like(t, t.mean()), t),
                             "rank_correlation": float(np.corrcoef(np.argsort(np.argsort(s)),
                                                                   np.argsort(np.argsort(t)))[0, 1])}
        print(subject.name, {k: round(v, 2) for k, v in out[subject.name].items() if k != "fold"}, file=sys.stderr)
    args.out.write_text(json.dumps(out, indent=1), encoding="utf-8")
    print("| subject | fold | PSNR | affine oracle | monotone oracle | flat image | Spearman |")
    print("|---|---|---|---|---|---|---|")
    for name, r in out.items():
        print(f"| {name} | {r['fold']} | {r['psnr']:.2f} | {r['affine']:.2f} | {r['monotone']:.2f} | {r['flat']:.2f} | "
              f"{r['rank_correlation']:.3f} |")


if __name__ == "__main__":
    main()
