"""How a synthetic volume is compared with the real one, and how a trust map is scored: one definition
for the Slicer QA table (``qa``), ``duald-evaluate`` and the LOSO experiments (torch-free).

Units come from the bundle's target intensity mapping:
- MRI targets (no absolute unit): both volumes in the normalised space (the real one with its own
  fitted parameters, e.g. its robust scale, the synthetic one with the bundle's reference parameters),
  so PSNR uses the mapping's ``data_range`` (1.0) and MAE is a fraction of e.g. the foreground's 99.5th
  percentile; the foreground is the source's (the engine's, ``IntensityMapping.foreground``).
- CT targets (absolute units): Hounsfield units clipped to [-1024, 3071]; MAE in HU, PSNR and SSIM with
  a data range of 4095 HU (the SynthRAD convention); the foreground is the body (HU > -500).

Trust maps: AUROC for finding the worst-10 % |error| voxels of the foreground, and Spearman correlation
with |error|; the edge baseline is the gradient magnitude of the synthetic image.
"""

from __future__ import annotations

import numpy as np

from .preprocess import PreprocessingSpec

WORST_FRACTION = 0.10


def comparable(
    synthetic: np.ndarray, real: np.ndarray, source: np.ndarray, spec: PreprocessingSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, str]:
    """(synthetic, real, foreground, data range, foreground name) in the units metrics compare them in:
    HU clipped to the CT range with the body as foreground, or the normalised MRI space with the
    source's brain as foreground (see the module docstring)."""
    mapping = spec.target
    if mapping.absolute_units:  # CT: the raw units mean the same in every scan, so compare in them
        params = mapping.reference_params
        units = mapping.units_per_normalised(params)
        lo = mapping.inverse(np.float32(0.0), params)  # the normalised range [0, data_range] in raw units
        hi = lo + mapping.data_range * units
        pred = np.clip(synthetic, lo, hi).astype(np.float32)
        ref = np.clip(real, lo, hi).astype(np.float32)
        return pred, ref, mapping.foreground(ref), mapping.data_range * units, "body"
    fg = spec.source.foreground(source)  # the brain/head seen in the source
    ref = mapping.forward(real, mapping.fit(real, fg & (real > 0)))
    pred = mapping.forward(synthetic, mapping.reference_params)
    return pred, ref, fg, mapping.data_range, "foreground"



def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic (ties get average ranks)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # here: scipy.stats probes for torch on import, the module stays light

    ranks = rankdata(scores)
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def spearman(scores: np.ndarray, values: np.ndarray, max_samples: int = 500_000) -> float:
    """Spearman rank correlation (ties get average ranks); a fixed strided subsample above ``max_samples``."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    values = np.asarray(values, dtype=np.float64).ravel()
    if scores.size != values.size:
        raise ValueError(f"{scores.size} scores for {values.size} values")
    step = max(1, scores.size // max_samples)
    from scipy.stats import rankdata

    a, b = rankdata(scores[::step]), rankdata(values[::step])
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def map_scores(maps: dict[str, np.ndarray], abs_error: np.ndarray, foreground: np.ndarray) -> dict[str, dict]:
    """For each trust map: AUROC for the worst-10 % |error| voxels and Spearman correlation with |error|,
    both inside ``foreground`` — how well the map says where not to trust the synthetic image."""
    err = abs_error[foreground]
    worst = err >= np.quantile(err, 1.0 - WORST_FRACTION)
    return {name: {"auroc": auroc(m[foreground], worst), "spearman": spearman(m[foreground], err)}
            for name, m in maps.items()}


def gradient_magnitude(volume: np.ndarray, spacing_kji: tuple[float, float, float]) -> np.ndarray:
    """|∇v| in intensity units per mm (central differences), the edge baseline for the heatmap."""
    grads = np.gradient(volume.astype(np.float32), *spacing_kji)
    return np.sqrt(sum(g * g for g in grads))
