"""Intensity mappings between raw scanner units and the normalised space the networks see, and the
foreground each mapping defines (numpy + scipy only; no Slicer, Qt, vtk or torch).

A mapping is recorded in the model bundle (:class:`IntensityMapping`, ``to_dict``/``from_dict``) and
applied identically by training and inference. Kinds: ``mri_percentile`` and ``mri_peak`` (MRI, one
per-volume scale) and ``ct_hu`` (CT, fixed HU window). ``--source-norm`` names map to mappings in
:data:`SOURCE_NORMS`. A new MRI scheme with one scale is one estimator in ``IntensityMapping.scale_for``
plus an entry in ``_KINDS`` and :data:`SOURCE_NORMS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from ..core.errors import DualDError

CT_HU_RANGE = (-1024.0, 3071.0)
CT_BODY_THRESHOLD_HU = -500.0
# MRI foreground = voxels above this fraction of the robust maximum (99th percentile of the
# positive voxels). Skull-stripped data has a background of exact zeros plus small negative (and
# small positive) values from resampling ringing at the brain edge; 5 % sits well above that
# ringing and well below the darkest tissue (CSF on T1 is ~15-30 % of white matter).
MRI_FOREGROUND_FRACTION = 0.05
_ROBUST_MAX_SAMPLES = 2_000_000  # the threshold's percentile is estimated on a strided subsample
_KINDS = ("mri_percentile", "mri_peak", "ct_hu")


class PreprocessError(DualDError):
    """Bad input volume or bad preprocessing metadata (the message is one sentence)."""


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in each ``mask[k]`` plane, in place: background components (4-connected) that do not
    touch the plane's border. 2-D on purpose, so cavities that are open in 3-D (airways) still fill.

    Speed (half of ``prepare_volume``'s time): empty planes are skipped, the others labelled only inside
    the mask's bounding box grown by one voxel. Exact: all outside the box is background connected to
    the border, so a component touches the grown box's border exactly when it touches the plane's."""
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if rows.size == 0:
        return mask
    y0, y1, x0, x1 = max(0, rows[0] - 1), rows[-1] + 2, max(0, cols[0] - 1), cols[-1] + 2
    box = mask[:, y0:y1, x0:x1]  # a view: filling it fills ``mask`` (slicing past the end is clipped)
    for k in np.flatnonzero(box.any(axis=(1, 2))):
        labels, n = ndimage.label(~box[k])  # 4-connected
        hole = np.arange(n + 1) > 0
        hole[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
        box[k] |= hole[labels]
    return mask


def foreground_mask(arr: np.ndarray, kind: str) -> np.ndarray:
    """Boolean foreground of a raw-intensity array ``[k, j, i]``, holes filled in each ``arr[k]`` plane.

    - ``ct_hu``: body = HU > -500.
    - ``mri_percentile``: voxels above ``MRI_FOREGROUND_FRACTION`` (5 %) of the robust maximum, the
      99th percentile of the strictly positive voxels. Zero and negative voxels are therefore always
      background, which handles skull-stripped data with small negative resampling values; a volume
      with no positive voxel has an empty foreground.
    """
    if arr.ndim != 3:
        raise PreprocessError(f"foreground_mask expects a 3-D array, got {arr.ndim}-D.")
    if kind == "ct_hu":
        fg = arr > CT_BODY_THRESHOLD_HU
    elif kind in _KINDS:  # every MRI mapping shares the MRI foreground
        flat = arr.reshape(-1)
        sample = flat[:: max(1, flat.size // _ROBUST_MAX_SAMPLES)]
        positive = sample[sample > 0]
        if positive.size == 0:
            return np.zeros(arr.shape, dtype=bool)
        robust_max = float(np.percentile(positive, 99.0))
        fg = arr > MRI_FOREGROUND_FRACTION * robust_max
    else:
        raise PreprocessError(f"unknown intensity kind {kind!r}; expected one of {', '.join(_KINDS)}.")
    return _fill_holes_per_slice(fg)


@dataclass(frozen=True)
class IntensityMapping:
    """Raw ↔ normalised intensity mapping of one side (source or target) of the translation.

    ``mri_percentile``: normalised = raw / scale clipped to ``clip``, with scale the ``percentile``-th
    percentile of the foreground voxels of that volume (background, ≤ 0, lands at 0).
    ``mri_peak``: the same, with scale the main mode of the foreground histogram (on a T1 the
    white-matter peak), which a bright rim of fat, vessels or contrast cannot move, unlike a high
    percentile; ``percentile`` is unused.
    ``ct_hu``: normalised = (clip(HU, -1024, 3071) + 1024) / 4095, scale is always 1.
    ``reference_scale`` (MRI target only) is the scale used to bring synthesised values back to raw
    units at inference, where no target volume exists: the median of the training subjects' scales.
    """

    kind: Literal["mri_percentile", "ct_hu"]
    percentile: float = 99.5
    clip: tuple[float, float] = (0.0, 2.0)
    reference_scale: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise PreprocessError(f"unknown intensity kind {self.kind!r}; expected one of {', '.join(_KINDS)}.")
        try:
            pct = float(self.percentile)
            lo, hi = (float(v) for v in self.clip)
        except (TypeError, ValueError) as exc:
            raise PreprocessError(f"intensity mapping has a non-numeric percentile or clip ({exc}).") from exc
        if not 0.0 < pct <= 100.0:
            raise PreprocessError(f"intensity percentile must be in (0, 100], got {pct}.")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise PreprocessError(f"intensity clip must be two finite numbers low < high, got {self.clip}.")
        ref = self.reference_scale
        if ref is not None:
            ref = float(ref)
            if not (math.isfinite(ref) and ref > 0):
                raise PreprocessError(f"reference_scale must be a positive finite number, got {ref}.")
        object.__setattr__(self, "percentile", pct)
        object.__setattr__(self, "clip", (lo, hi))
        object.__setattr__(self, "reference_scale", ref)

    def scale_for(self, arr: np.ndarray, foreground: np.ndarray | None) -> float:
        """Per-volume scale: the foreground's ``percentile``-th percentile (MRI), 1.0 (CT)."""
        if self.kind == "ct_hu":
            return 1.0
        if foreground is None:
            foreground = foreground_mask(arr, self.kind)
        values = arr[foreground]  # a copy, so the percentile may partition it in place
        if values.size == 0:
            raise PreprocessError("the volume has no foreground voxels, so its intensity scale cannot be set.")
        if self.kind == "mri_peak":
            scale = histogram_peak(values)
        else:
            scale = float(np.percentile(values, self.percentile, overwrite_input=True))
        if not (math.isfinite(scale) and scale > 0):
            raise PreprocessError(f"the volume's intensity scale is {scale}, not a positive number.")
        return scale

    def output_scale(self) -> float:
        """Scale to undo the target mapping at inference (``reference_scale``; 1.0 for CT)."""
        if self.kind == "ct_hu":
            return 1.0
        if self.reference_scale is None:
            raise PreprocessError("this MRI intensity mapping has no reference_scale to restore raw units.")
        return self.reference_scale

    def forward(self, arr: np.ndarray, scale: float, out: np.ndarray | None = None) -> np.ndarray:
        """Raw → normalised float32 (background → 0). ``out`` (float32, same shape) avoids a copy."""
        arr = np.asarray(arr, dtype=np.float32)
        if self.kind == "ct_hu":
            out = np.clip(arr, CT_HU_RANGE[0], CT_HU_RANGE[1], out=out)
            out -= np.float32(CT_HU_RANGE[0])
            out *= np.float32(1.0 / (CT_HU_RANGE[1] - CT_HU_RANGE[0]))
            return out
        _check_scale(scale)
        out = np.multiply(arr, np.float32(1.0 / scale), out=out)
        return np.clip(out, self.clip[0], self.clip[1], out=out)

    def inverse(self, arr: np.ndarray, scale: float) -> np.ndarray:
        """Normalised → raw units (HU for CT), float32; values are first clipped to the normalised range
        the training targets had, since the generator's linear output may overshoot it."""
        arr = np.asarray(arr, dtype=np.float32)
        if self.kind == "ct_hu":
            out = np.clip(arr, 0.0, 1.0)
            out *= np.float32(CT_HU_RANGE[1] - CT_HU_RANGE[0])
            out += np.float32(CT_HU_RANGE[0])
            return out
        _check_scale(scale)
        out = np.clip(arr, self.clip[0], self.clip[1])
        out *= np.float32(scale)
        return out

    def units_per_normalised(self, scale: float) -> float:
        """Raw units per normalised unit, for differences (errors): the scale, or 4095 HU for CT."""
        return CT_HU_RANGE[1] - CT_HU_RANGE[0] if self.kind == "ct_hu" else float(scale)

    @property
    def background_value(self) -> float:
        """Raw value of empty space (used when resampling outside a volume)."""
        return CT_HU_RANGE[0] if self.kind == "ct_hu" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "percentile": self.percentile,
            "clip": [self.clip[0], self.clip[1]],
            "reference_scale": self.reference_scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntensityMapping:
        if not isinstance(d, dict) or "kind" not in d:
            raise PreprocessError("an intensity mapping must be a JSON object with a 'kind'.")
        unknown = sorted(set(d) - {"kind", "percentile", "clip", "reference_scale"})
        if unknown:
            raise PreprocessError(f"intensity mapping has unknown setting(s) {', '.join(unknown)}; "
                                  "this model needs a newer DualD.")
        clip = d.get("clip", (0.0, 2.0))
        if not isinstance(clip, list | tuple) or len(clip) != 2:
            raise PreprocessError(f"intensity clip must be a pair of numbers, got {clip!r}.")
        return cls(
            kind=d["kind"],
            percentile=d.get("percentile", 99.5),
            clip=(clip[0], clip[1]),
            reference_scale=d.get("reference_scale"),
        )


def histogram_peak(values: np.ndarray, bins: int = 128) -> float:
    """Centre of the highest bin of the smoothed histogram of ``values`` between their 2nd and 99.8th
    percentiles (the robust range: background spill and hot voxels cannot win)."""
    lo, hi = np.percentile(values, [2.0, 99.8])
    if not hi > lo:
        return float(hi)
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), sigma=2.0)
    k = int(np.argmax(smooth))
    return float(0.5 * (edges[k] + edges[k + 1]))


def source_mapping(name: str) -> IntensityMapping:
    """The source intensity mapping a ``--source-norm`` name stands for (see :data:`SOURCE_NORMS`)."""
    if name not in SOURCE_NORMS:
        raise PreprocessError(f"unknown source normalisation {name!r}; choose one of {', '.join(SOURCE_NORMS)}.")
    return SOURCE_NORMS[name]


def _check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise PreprocessError(f"intensity scale must be a positive finite number, got {scale}.")


# ``--source-norm`` names. p99.5: the first plan's mapping. median and peak put the bulk of the tissue
# at a fixed value instead of its brightest 0.5 %, which on unstripped heads is fat, not brain; their
# clip ranges leave room for tissue brighter than the bulk (T1 fat ≈ 2–3× white matter).
SOURCE_NORMS: dict[str, IntensityMapping] = {
    "p99.5": IntensityMapping("mri_percentile", 99.5, (0.0, 2.0)),
    "median": IntensityMapping("mri_percentile", 50.0, (0.0, 4.0)),
    "peak": IntensityMapping("mri_peak", 50.0, (0.0, 3.0)),
}


