"""Image-similarity metrics on volumes, optionally restricted to a mask.

Shared by training validation, the Slicer QA table and ``duald-evaluate`` so that every number
a user sees is computed the same way. numpy + scikit-image only.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def _pair(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    if mask is None:
        return pred.astype(np.float64, copy=False).ravel(), ref.astype(np.float64, copy=False).ravel()
    if mask.shape != pred.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the image shape {pred.shape}")
    m = mask.astype(bool, copy=False)
    if not m.any():
        raise ValueError("the mask is empty: no voxel to evaluate")
    return pred[m].astype(np.float64), ref[m].astype(np.float64)


def mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error, in the images' units (HU for CT)."""
    p, r = _pair(pred, ref, mask)
    return float(np.abs(p - r).mean())


def mean_error(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean error (bias) ``mean(pred − ref)``: positive when the prediction is too high (for a
    synthetic CT, too dense: a dose calculation would see more attenuation than there is)."""
    p, r = _pair(pred, ref, mask)
    return float((p - r).mean())


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10·log10(range² / MSE)``; inf for identical images."""
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    p, r = _pair(pred, ref, mask)
    mse = float(((p - r) ** 2).mean())
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim_map(pred: np.ndarray, ref: np.ndarray, data_range: float) -> np.ndarray:
    """The local SSIM map (scikit-image, uniform 7-voxel window, smaller for thin volumes).

    Computed once on the full volume so windows see real neighbours; average it inside each region
    with :func:`masked_mean` instead of recomputing it per region.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    win = min(7, *(s if s % 2 else s - 1 for s in pred.shape))
    if win < 3:
        raise ValueError(f"SSIM needs at least 3 voxels along each axis, got shape {pred.shape}")
    _, smap = structural_similarity(
        ref.astype(np.float64), pred.astype(np.float64), data_range=data_range, win_size=win, full=True
    )
    return smap


def masked_mean(values: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean of ``values`` over ``mask`` (all voxels when None); an empty mask is an error."""
    if mask is None:
        return float(values.mean())
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the image shape {values.shape}")
    m = mask.astype(bool, copy=False)
    if not m.any():
        raise ValueError("the mask is empty: no voxel to evaluate")
    return float(values[m].mean())


def ssim(pred: np.ndarray, ref: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Mean SSIM over the whole image or over ``mask`` (see :func:`ssim_map`)."""
    return masked_mean(ssim_map(pred, ref, data_range), mask)


# ----------------------------------------------------------------------------- detail (issue 24)
# PSNR rewards a blurred mean; the paper's claim is *fine-grained* detail. Two measures of it, each a ratio
# synthetic / real (1 = as much as the real image; below 1 = smoother or flatter than it).


def in_plane_gradient_magnitude(volume: np.ndarray, spacing_ji: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """|∇v| within each slice (axes 1 and 2 of a ``[k, j, i]`` volume; central differences, one-sided at the
    edges), in intensity units per mm. In-plane because G synthesises slice by slice: a through-plane
    gradient would count its slice-to-slice jitter as detail."""
    if volume.ndim != 3:
        raise ValueError(f"expected a [k, j, i] volume, got shape {volume.shape}")
    gj, gi = np.gradient(volume.astype(np.float64), *spacing_ji, axis=(1, 2))
    return np.sqrt(gj * gj + gi * gi)


def gradient_ratio(synthetic: np.ndarray, real: np.ndarray, mask: np.ndarray,
                   spacing_ji: tuple[float, float] = (1.0, 1.0)) -> float:
    """Mean in-plane gradient magnitude of ``synthetic`` over that of ``real``, both inside ``mask`` (the
    brain): how much of the real image's edge content the synthetic one has."""
    if synthetic.shape != real.shape:
        raise ValueError(f"prediction and reference shapes differ: {synthetic.shape} vs {real.shape}")
    real_mean = masked_mean(in_plane_gradient_magnitude(real, spacing_ji), mask)
    if real_mean == 0:
        raise ValueError("the real image has no gradient inside the mask: the ratio is undefined")
    return masked_mean(in_plane_gradient_magnitude(synthetic, spacing_ji), mask) / real_mean


def lesion_contrast(volume: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> float:
    """Mean inside ``lesion`` over the mean of the brain outside it (``brain`` and not ``lesion``)."""
    lesion = lesion.astype(bool, copy=False)
    rest = brain.astype(bool, copy=False) & ~lesion
    if not rest.any():
        raise ValueError("the brain mask has no voxel outside the lesion: the contrast is undefined")
    background = masked_mean(volume, rest)
    if background == 0:
        raise ValueError("the brain outside the lesion has mean 0: the contrast is undefined")
    return masked_mean(volume, lesion) / background


def lesion_contrast_ratio(synthetic: np.ndarray, real: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> float:
    """:func:`lesion_contrast` of ``synthetic`` over that of ``real``: 1 when the synthetic lesion stands out
    from the brain as much as the real one, below 1 when it is washed out."""
    if synthetic.shape != real.shape:
        raise ValueError(f"prediction and reference shapes differ: {synthetic.shape} vs {real.shape}")
    return lesion_contrast(synthetic, lesion, brain) / lesion_contrast(real, lesion, brain)
