"""The frame of the intensity mappings (numpy + scipy only; no Slicer, Qt, vtk or torch): the abstract
:class:`IntensityMapping`, its registry keyed by ``kind``, the array seam that lets one definition run on
numpy arrays and torch tensors, the MRI foreground threshold and the per-plane hole filling. The schemes
themselves are in :mod:`intensity`, which re-exports these names.

Elementwise arithmetic needs no seam (numpy and torch share the operators; :func:`clipped`, :func:`clip_`
and :func:`times` cover the spellings that differ); the few reductions go through :class:`ArrayOps`,
numpy's here, torch's beside the device path (``imaging.device_prepare.TORCH_OPS``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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


class PreprocessError(DualDError):
    """Bad input volume or bad preprocessing metadata (the message is one sentence)."""


# ----------------------------------------------------------------------------- array seam


class ArrayOps:
    """The reductions a mapping needs that numpy and torch spell differently; this one is numpy's
    (``imaging.device_prepare.TORCH_OPS`` is torch's). Elementwise work needs no seam: both backends
    share the operators, and :func:`clipped`/:func:`_clip_` cover the one spelling that differs."""

    def percentile(self, values: Any, q: float) -> float:
        """Linear-interpolation percentile of the 1-D ``values``, a scratch copy it may reorder."""
        return float(np.percentile(values, q, overwrite_input=True))

    def mean_std(self, values: Any) -> tuple[float, float]:
        """Mean and (population) standard deviation of the 1-D ``values``, in float64."""
        v = np.asarray(values, dtype=np.float64)
        return float(v.mean()), float(v.std())

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def fill_holes(self, mask: Any) -> np.ndarray:
        """The host copy of the boolean ``mask`` [K, H, W] with the holes of each plane filled (see
        :func:`_fill_holes_per_slice`)."""
        return _fill_holes_per_slice(self.to_host(mask))


NUMPY_OPS = ArrayOps()


def is_tensor(x: Any) -> bool:
    return hasattr(x, "clamp_")  # a torch tensor, duck-typed: this module must not import torch


def clipped(x: Any, lo: float, hi: float, out: np.ndarray | None = None) -> Any:
    """``x`` clipped to [lo, hi] in float32: a new array/tensor, or written into the numpy ``out``."""
    if is_tensor(x):
        return x.clamp(lo, hi)
    return np.clip(np.asarray(x, dtype=np.float32), lo, hi, out=out)


def clip_(y: Any, lo: float, hi: float) -> Any:
    """``y`` clipped to [lo, hi] in place where it can be (a numpy scalar cannot)."""
    if is_tensor(y):
        return y.clamp_(lo, hi)
    return np.clip(y, lo, hi, out=y) if isinstance(y, np.ndarray) and y.ndim else np.clip(y, lo, hi)


def times(x: Any, factor: np.float32, out: np.ndarray | None = None) -> Any:
    """``x · factor`` in float32: a new array/tensor, or written into the numpy ``out``."""
    if is_tensor(x):
        return x * factor
    return np.multiply(np.asarray(x, dtype=np.float32), factor, out=out)


# ----------------------------------------------------------------------------- foreground


def foreground_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest box holding every True voxel of ``mask`` [K, H, W] (two passes over it; empty: an empty box)."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return slice(0, 0), slice(0, 0), slice(0, 0)
    plane = mask[zs[0] : zs[-1] + 1].any(axis=0)
    ys, xs = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in each ``mask[k]`` plane, in place: background components (4-connected) that do not
    touch the plane's border. 2-D on purpose, so cavities that are open in 3-D (airways) still fill.

    Speed (half of ``prepare_volume``'s time): empty planes are skipped, the others labelled only inside
    the mask's bounding box grown by one voxel. Exact: all outside the box is background connected to
    the border, so a component touches the grown box's border exactly when it touches the plane's."""
    zs, rows, cols = foreground_box(mask)
    if zs.stop == 0:  # empty
        return mask
    y0, y1, x0, x1 = max(0, rows.start - 1), rows.stop + 1, max(0, cols.start - 1), cols.stop + 1
    box = mask[:, y0:y1, x0:x1]  # a view: filling it fills ``mask`` (slicing past the end is clipped)
    for k in np.flatnonzero(box.any(axis=(1, 2))):
        labels, n = ndimage.label(~box[k])  # 4-connected
        hole = np.arange(n + 1) > 0
        hole[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
        box[k] |= hole[labels]
    return mask


def mri_threshold(arr: Any, ops: ArrayOps = NUMPY_OPS) -> float | None:
    """Raw value above which an MRI voxel is foreground: ``MRI_FOREGROUND_FRACTION`` (5 %) of the robust
    maximum, the 99th percentile of the strictly positive voxels (so zero and negative voxels, e.g.
    skull-stripped data's resampling ringing, are always background); None without a positive voxel."""
    flat = arr.reshape(-1)
    sample = flat[:: max(1, math.prod(arr.shape) // _ROBUST_MAX_SAMPLES)]
    positive = sample[sample > 0]
    if len(positive) == 0:
        return None
    return MRI_FOREGROUND_FRACTION * ops.percentile(positive, 99.0)


class MriForeground:
    """The MRI schemes' ``threshold`` (mixed in before :class:`IntensityMapping`)."""

    def threshold(self, arr: Any, ops: ArrayOps = NUMPY_OPS) -> Any:
        """Voxels above :func:`mri_threshold`; none without a positive voxel."""
        value = mri_threshold(arr, ops)
        return arr > (math.inf if value is None else value)


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


# ----------------------------------------------------------------------------- base and registry


@dataclass(frozen=True)
class IntensityParams:
    """A volume's fitted parameters (base of each scheme's own frozen record)."""


_MAPPINGS: dict[str, type[IntensityMapping]] = {}


def finite(name: str, value: Any, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or (positive and v <= 0):
        raise PreprocessError(f"{name} must be a {'positive ' if positive else ''}finite number, got {value!r}.")
    return v


def clip_pair(clip: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError) as exc:
        raise PreprocessError(f"intensity clip must be a pair of numbers, got {clip!r}.") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise PreprocessError(f"intensity clip must be two finite numbers low < high, got {clip}.")
    return lo, hi


def clip_setting(d: dict[str, Any], default: tuple[float, float]) -> tuple[Any, Any]:
    clip = d.get("clip", default)
    if not isinstance(clip, list | tuple) or len(clip) != 2:
        raise PreprocessError(f"intensity clip must be a pair of numbers, got {clip!r}.")
    return clip[0], clip[1]


def refuse_unknown(d: dict[str, Any], known: set[str], what: str = "intensity mapping") -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise PreprocessError(f"{what} has unknown setting(s) {', '.join(unknown)}; this model needs a newer DualD.")


class IntensityMapping(ABC):
    """Raw ↔ normalised intensity mapping of one side (source or target) of the translation.

    Subclasses are frozen dataclasses registered under their ``kind``. ``fit`` gives a volume's
    parameters (an :class:`IntensityParams`); ``reference_params`` (MRI targets) the parameters that
    bring synthesised values back to raw units at inference, where no target volume exists: the median
    of the training subjects' (:meth:`with_reference`)."""

    kind: ClassVar[str]
    params_type: ClassVar[type[IntensityParams]]
    units: ClassVar[str] = "intensity units"  # raw units, for reports and legends
    absolute_units: ClassVar[bool] = False  # raw values mean the same in every scan (HU): compare in them
    data_range: ClassVar[float] = 1.0  # the normalised range metrics use (PSNR, SSIM)
    background_value: ClassVar[float] = 0.0  # raw value of empty space (resampling outside a volume)
    zero_outside_foreground: ClassVar[bool] = True  # prepared volumes are exactly 0 outside the foreground
    proportional: ClassVar[bool] = False  # normalised = raw × a per-volume constant (inside the clip)

    # --- foreground and fit

    @abstractmethod
    def threshold(self, arr: Any, ops: ArrayOps = NUMPY_OPS) -> Any:
        """Boolean foreground before hole filling, on ``arr``'s backend."""

    def foreground(self, arr: Any, ops: ArrayOps = NUMPY_OPS) -> np.ndarray:
        """Boolean host foreground of a raw ``[k, j, i]`` array (or tensor, with its ``ops``), holes
        filled in each ``arr[k]`` plane."""
        if len(arr.shape) != 3:
            raise PreprocessError(f"the foreground needs a 3-D array, got {len(arr.shape)}-D.")
        return ops.fill_holes(self.threshold(arr, ops))

    def fit(self, arr: Any, foreground: Any = None, ops: ArrayOps = NUMPY_OPS) -> IntensityParams:
        """The volume's parameters, from the voxels of ``foreground`` (default: :meth:`foreground`)."""
        if foreground is None:
            foreground = self.foreground(arr)
        values = arr[foreground]  # a copy, so a percentile may reorder it
        if len(values) == 0:
            raise PreprocessError("the volume has no foreground voxels, so its intensity scale cannot be set.")
        return self._fit(arr, values, ops)

    @abstractmethod
    def _fit(self, arr: Any, values: Any, ops: ArrayOps) -> IntensityParams: ...

    def _check(self, params: Any) -> Any:
        if not isinstance(params, self.params_type):
            raise PreprocessError(f"the {self.kind} mapping needs {self.params_type.__name__} parameters, "
                                  f"got {type(params).__name__}.")
        return params

    # --- the mapping

    @abstractmethod
    def forward(self, arr: Any, params: IntensityParams, out: np.ndarray | None = None) -> Any:
        """Raw → normalised float32 (background → 0); numpy arrays or torch tensors. ``out`` (numpy
        float32, same shape) avoids a copy."""

    @abstractmethod
    def inverse(self, arr: Any, params: IntensityParams) -> Any:
        """Normalised → raw float32; values are first clipped to the normalised range the training
        targets had, since the generator's linear output may overshoot it."""

    def normalised_output(self, arr: Any, params: IntensityParams) -> Any:
        """A generator's normalised prediction as the product outputs it (``inverse``, which clips to the
        training targets' range), back in normalised units: what validation and LOSO scores must see, since a
        linear output can overshoot far (−30 on an unseen site) where the written volume cannot."""
        return self.forward(self.inverse(arr, params), params)

    @abstractmethod
    def units_per_normalised(self, params: IntensityParams) -> float:
        """Raw units per normalised unit, for differences (errors)."""

    @property
    @abstractmethod
    def reference_params(self) -> IntensityParams:
        """Parameters to undo the target mapping at inference (PreprocessError when not recorded)."""

    @abstractmethod
    def with_reference(self, fitted: Sequence[IntensityParams]) -> IntensityMapping:
        """This mapping with the reference parameters of the training targets' ``fitted`` ones."""

    @property
    def description(self) -> str:
        """What one normalised unit is, for reports."""
        return self.units if self.absolute_units else "normalised"

    # --- serialisation

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntensityMapping:
        """The mapping a bundle recorded; unknown kinds and settings are refused with one sentence."""
        if not isinstance(d, dict) or "kind" not in d:
            raise PreprocessError("an intensity mapping must be a JSON object with a 'kind'.")
        return mapping_class(d["kind"])._from_settings(d)

    @classmethod
    @abstractmethod
    def _from_settings(cls, d: dict[str, Any]) -> IntensityMapping: ...


def register(cls: type[IntensityMapping]) -> type[IntensityMapping]:
    """Class decorator: make ``cls`` the mapping of its ``kind``."""
    if cls.kind in _MAPPINGS:
        raise ValueError(f"intensity kind {cls.kind!r} is registered twice")
    _MAPPINGS[cls.kind] = cls
    return cls


def mapping_class(kind: Any) -> type[IntensityMapping]:
    """The class registered for ``kind`` (the schemes register when :mod:`intensity` is imported)."""
    from . import intensity  # noqa: F401  (fills the registry; a no-op once imported)

    if kind not in _MAPPINGS:
        raise PreprocessError(f"unknown intensity kind {kind!r}; expected one of {', '.join(_MAPPINGS)}.")
    return _MAPPINGS[kind]


def mapping_from_dict(d: dict[str, Any]) -> IntensityMapping:
    return IntensityMapping.from_dict(d)


# ----------------------------------------------------------------------------- the four-key record


@dataclass(frozen=True)
class FourKeyMapping(IntensityMapping):
    """The record every bundle before the registry wrote: ``kind``, ``percentile``, ``clip`` and
    ``reference_scale``, kept key for key so those bundles load and write back unchanged."""

    percentile: float = 99.5
    clip: tuple[float, float] = (0.0, 2.0)
    reference_scale: float | None = None

    def __post_init__(self) -> None:
        pct = finite("intensity percentile", self.percentile)
        if not 0.0 < pct <= 100.0:
            raise PreprocessError(f"intensity percentile must be in (0, 100], got {pct}.")
        ref = self.reference_scale
        object.__setattr__(self, "percentile", pct)
        object.__setattr__(self, "clip", clip_pair(self.clip))
        object.__setattr__(self, "reference_scale", None if ref is None else finite("reference_scale", ref, True))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "percentile": self.percentile, "clip": [self.clip[0], self.clip[1]],
                "reference_scale": self.reference_scale}

    @classmethod
    def _from_settings(cls, d: dict[str, Any]) -> IntensityMapping:
        refuse_unknown(d, {"kind", "percentile", "clip", "reference_scale"})
        return cls(percentile=d.get("percentile", 99.5), clip=clip_setting(d, (0.0, 2.0)),
                   reference_scale=d.get("reference_scale"))

