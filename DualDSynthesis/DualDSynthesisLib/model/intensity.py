"""Intensity mappings between raw scanner units and the normalised space the networks see, and the
foreground each mapping defines (numpy + scipy only; no Slicer, Qt, vtk or torch).

One small class per scheme behind a registry keyed by ``kind`` (:func:`register`): each gives the
foreground, ``fit`` (a volume's parameters as a small frozen object), ``forward``/``inverse``, the
background value, units and data range, and its own strict ``to_dict``/``from_dict``; the model bundle
records the mapping and training and inference apply it identically. Kinds: ``mri_percentile``,
``mri_peak`` (one scale per MRI volume), ``mri_zscore`` (mean and spread of the MRI foreground), ``mri_rank``
(the foreground's ranks, in :mod:`intensity_rank`) and ``ct_hu`` (a fixed HU window). ``--source-norm`` names
map to mappings in :data:`SOURCE_NORMS`.

The arithmetic is written once for numpy arrays and torch tensors (operators, clipping), so the device
path (``imaging.device_prepare``) runs these same methods on the GPU. The few reductions the two spell
differently (a percentile, mean and spread, the copy back to the host) go through ``ArrayOps``:
numpy's here, torch's beside the device path, so this module never imports torch. The frame (the
abstract class, the registry, the seam, the foreground threshold) is in :mod:`intensity_base`; this
module holds the schemes and re-exports the frame's names.

A new scheme is one class here (registered, with its tests) and, for a source mapping, an entry in
:data:`SOURCE_NORMS` plus the ``source_norm`` enumeration of ``DualDTraining.xml``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .intensity_base import (
    _ROBUST_MAX_SAMPLES,
    CT_BODY_THRESHOLD_HU,
    CT_HU_RANGE,
    MRI_FOREGROUND_FRACTION,
    NUMPY_OPS,
    ArrayOps,
    FourKeyMapping,
    IntensityMapping,
    IntensityParams,
    MriForeground,
    PreprocessError,
    _fill_holes_per_slice,
    clip_,
    clip_pair,
    clip_setting,
    clipped,
    finite,
    histogram_peak,
    is_tensor,
    mapping_class,
    mapping_from_dict,
    mri_threshold,
    refuse_unknown,
    register,
    times,
)
from .intensity_rank import ForegroundRank, RankParams

__all__ = [  # the frame's names are re-exported: callers import mappings from this module
    "CT_BODY_THRESHOLD_HU",
    "CT_HU_RANGE",
    "MRI_FOREGROUND_FRACTION",
    "NUMPY_OPS",
    "SOURCE_NORMS",
    "_ROBUST_MAX_SAMPLES",
    "ArrayOps",
    "ForegroundRank",
    "HUWindow",
    "HounsfieldWindow",
    "IntensityMapping",
    "IntensityParams",
    "PeakScale",
    "PercentileScale",
    "PreprocessError",
    "RankParams",
    "ScaleParams",
    "ZScore",
    "ZScoreParams",
    "_fill_holes_per_slice",
    "foreground_mask",
    "histogram_peak",
    "mapping_class",
    "mapping_from_dict",
    "register",
    "source_mapping",
]


def foreground_mask(arr: np.ndarray, kind: str) -> np.ndarray:
    """The foreground of ``kind``'s mapping (defaults) for a raw ``[k, j, i]`` array; see
    :meth:`IntensityMapping.foreground`."""
    return mapping_class(kind)().foreground(arr)


# ----------------------------------------------------------------------------- MRI: one scale per volume


@dataclass(frozen=True)
class ScaleParams(IntensityParams):
    """One MRI volume's scale: the raw value that maps to 1."""

    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", finite("intensity scale", self.scale, positive=True))


@dataclass(frozen=True)
class _ScaleMapping(MriForeground, FourKeyMapping):
    """normalised = raw / scale clipped to ``clip`` (background, ≤ 0, lands at 0)."""

    params_type: ClassVar[type[IntensityParams]] = ScaleParams
    proportional: ClassVar[bool] = True

    def _fit(self, arr: Any, values: Any, ops: ArrayOps) -> ScaleParams:
        scale = self._scale(values, ops)
        if not (math.isfinite(scale) and scale > 0):
            raise PreprocessError(f"the volume's intensity scale is {scale}, not a positive number.")
        return ScaleParams(scale)

    @abstractmethod
    def _scale(self, values: Any, ops: ArrayOps) -> float: ...

    def forward(self, arr: Any, params: IntensityParams, out: np.ndarray | None = None) -> Any:
        y = times(arr, np.float32(1.0 / self._check(params).scale), out)
        return clip_(y, self.clip[0], self.clip[1])

    def inverse(self, arr: Any, params: IntensityParams) -> Any:
        y = clipped(arr, self.clip[0], self.clip[1])
        y *= np.float32(self._check(params).scale)
        return y

    def units_per_normalised(self, params: IntensityParams) -> float:
        return float(self._check(params).scale)

    @property
    def reference_params(self) -> ScaleParams:
        if self.reference_scale is None:
            raise PreprocessError("this MRI intensity mapping has no reference_scale to restore raw units.")
        return ScaleParams(self.reference_scale)

    def with_reference(self, fitted: Sequence[IntensityParams]) -> IntensityMapping:
        scales = [self._check(p).scale for p in fitted]
        return type(self)(self.percentile, self.clip, float(np.median(np.asarray(scales, dtype=np.float64))))


@register
@dataclass(frozen=True)
class PercentileScale(_ScaleMapping):
    """``mri_percentile``: the scale is the ``percentile``-th percentile of the volume's foreground."""

    kind: ClassVar[str] = "mri_percentile"

    def _scale(self, values: Any, ops: ArrayOps) -> float:
        return ops.percentile(values, self.percentile)

    @property
    def description(self) -> str:
        return f"normalised (foreground {self.percentile:g}th percentile = 1)"


@register
@dataclass(frozen=True)
class PeakScale(_ScaleMapping):
    """``mri_peak``: the scale is the main mode of the foreground histogram (on a T1 the white-matter
    peak), which a bright rim of fat, vessels or contrast cannot move, unlike a high percentile;
    ``percentile`` is unused."""

    kind: ClassVar[str] = "mri_peak"

    def _scale(self, values: Any, ops: ArrayOps) -> float:
        return histogram_peak(ops.to_host(values))  # 1-D: cheap on the host next to the volume

    @property
    def description(self) -> str:
        return "normalised (foreground histogram peak = 1)"


# ----------------------------------------------------------------------------- MRI: z-score


@dataclass(frozen=True)
class ZScoreParams(IntensityParams):
    """One MRI volume's foreground mean and standard deviation, and the raw foreground threshold
    (:func:`mri_threshold`) at or below which a voxel is background."""

    mean: float
    std: float
    threshold: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", finite("z-score mean", self.mean))
        object.__setattr__(self, "std", finite("z-score standard deviation", self.std, positive=True))
        object.__setattr__(self, "threshold", finite("z-score threshold", self.threshold))


@register
@dataclass(frozen=True)
class ZScore(MriForeground, IntensityMapping):
    """``mri_zscore``: normalised = 1 + (raw − mean) / (k·std) over the foreground, clipped to ``clip``;
    raw ≤ threshold (background) → exactly 0.

    Why this placement: the foreground mean lands at 1 (where the bulk of tissue sits under the other MRI
    mappings), and with k = 3 a voxel must be 3 standard deviations below the mean to reach 0, the
    background value — so tissue stays positive, as the networks' zero padding and background expect,
    while a z-score alone would put half the tissue below 0. The upper clip 3 (6 std above the mean)
    leaves room for tissue brighter than the bulk (fat). The background needs the threshold because,
    unlike raw / scale, an affine map sends raw 0 to 1 − mean/(k·std), not to 0."""

    k: float = 3.0
    clip: tuple[float, float] = (0.0, 3.0)
    reference: ZScoreParams | None = None

    kind: ClassVar[str] = "mri_zscore"
    params_type: ClassVar[type[IntensityParams]] = ZScoreParams

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", finite("z-score k", self.k, positive=True))
        clip = clip_pair(self.clip)
        if clip[0] != 0.0:
            raise PreprocessError(f"a z-score clip must start at 0, the background value, got {self.clip}.")
        object.__setattr__(self, "clip", clip)
        if self.reference is not None and not isinstance(self.reference, ZScoreParams):
            raise PreprocessError("a z-score reference must be a ZScoreParams.")

    def _fit(self, arr: Any, values: Any, ops: ArrayOps) -> ZScoreParams:
        mean, std = ops.mean_std(values)
        if not (math.isfinite(std) and std > 0):
            raise PreprocessError(f"the volume's foreground has a standard deviation of {std}, not a positive number.")
        threshold = mri_threshold(arr, ops)  # None: no positive voxel, and ≤ 0 is background anyway
        return ZScoreParams(mean, std, 0.0 if threshold is None else threshold)

    def _affine(self, p: ZScoreParams) -> tuple[np.float32, np.float32]:
        """(a, b) with normalised = raw·a + b, in float32."""
        a = 1.0 / (self.k * p.std)
        return np.float32(a), np.float32(1.0 - p.mean * a)

    def forward(self, arr: Any, params: IntensityParams, out: np.ndarray | None = None) -> Any:
        p = self._check(params)
        a, b = self._affine(p)
        y = times(arr, a, out)
        y += b
        y = clip_(y, self.clip[0], self.clip[1])
        y *= arr > np.float32(p.threshold)  # background → exactly 0 (y ≥ 0, so never −0)
        return y

    def inverse(self, arr: Any, params: IntensityParams) -> Any:
        p = self._check(params)
        _a, b = self._affine(p)
        y = clipped(arr, self.clip[0], self.clip[1])
        background = y <= self.clip[0]
        y -= b
        y *= np.float32(self.k * p.std)
        if is_tensor(y) or (isinstance(y, np.ndarray) and y.ndim):
            y[background] = self.background_value
        elif background:
            y = np.float32(self.background_value)
        return y

    def units_per_normalised(self, params: IntensityParams) -> float:
        return float(self.k * self._check(params).std)

    @property
    def reference_params(self) -> ZScoreParams:
        if self.reference is None:
            raise PreprocessError("this z-score intensity mapping has no reference to restore raw units.")
        return self.reference

    def with_reference(self, fitted: Sequence[IntensityParams]) -> IntensityMapping:
        ps = [self._check(p) for p in fitted]
        med = [float(np.median(np.asarray(v, dtype=np.float64))) for v in
               ([p.mean for p in ps], [p.std for p in ps], [p.threshold for p in ps])]
        return ZScore(self.k, self.clip, ZScoreParams(*med))

    @property
    def description(self) -> str:
        return f"normalised (1 + z/{self.k:g}: foreground mean = 1)"

    def to_dict(self) -> dict[str, Any]:
        ref = self.reference
        return {"kind": self.kind, "k": self.k, "clip": [self.clip[0], self.clip[1]],
                "reference": None if ref is None else {"mean": ref.mean, "std": ref.std, "threshold": ref.threshold}}

    @classmethod
    def _from_settings(cls, d: dict[str, Any]) -> IntensityMapping:
        refuse_unknown(d, {"kind", "k", "clip", "reference"})
        ref = d.get("reference")
        if ref is not None:
            if not isinstance(ref, dict) or set(ref) != {"mean", "std", "threshold"}:
                raise PreprocessError(f"a z-score reference must be an object of mean, std and threshold, got {ref!r}.")
            ref = ZScoreParams(ref["mean"], ref["std"], ref["threshold"])
        return cls(k=d.get("k", 3.0), clip=clip_setting(d, (0.0, 3.0)), reference=ref)


# ----------------------------------------------------------------------------- CT


@dataclass(frozen=True)
class HUWindow(IntensityParams):
    """The Hounsfield window mapped to [0, 1]: the same for every CT."""

    low: float = CT_HU_RANGE[0]
    high: float = CT_HU_RANGE[1]


@register
@dataclass(frozen=True)
class HounsfieldWindow(FourKeyMapping):
    """``ct_hu``: normalised = (clip(HU, -1024, 3071) + 1024) / 4095; foreground = body (HU > -500).
    ``percentile``, ``clip`` and ``reference_scale`` are unused (kept: CT bundles record them)."""

    kind: ClassVar[str] = "ct_hu"
    params_type: ClassVar[type[IntensityParams]] = HUWindow
    units: ClassVar[str] = "HU"
    absolute_units: ClassVar[bool] = True
    background_value: ClassVar[float] = CT_HU_RANGE[0]
    zero_outside_foreground: ClassVar[bool] = False  # air is −1024 HU → 0 anyway; the table stays as scanned

    def threshold(self, arr: Any, ops: ArrayOps = NUMPY_OPS) -> Any:
        return arr > CT_BODY_THRESHOLD_HU

    def _fit(self, arr: Any, values: Any, ops: ArrayOps) -> HUWindow:
        return HUWindow()

    def fit(self, arr: Any, foreground: Any = None, ops: ArrayOps = NUMPY_OPS) -> HUWindow:
        return HUWindow()  # fixed: an empty body is no reason to refuse a CT

    def forward(self, arr: Any, params: IntensityParams, out: np.ndarray | None = None) -> Any:
        w = self._check(params)
        y = clipped(arr, w.low, w.high, out)
        y -= np.float32(w.low)
        y *= np.float32(1.0 / (w.high - w.low))
        return y

    def inverse(self, arr: Any, params: IntensityParams) -> Any:
        w = self._check(params)
        y = clipped(arr, 0.0, 1.0)
        y *= np.float32(w.high - w.low)
        y += np.float32(w.low)
        return y

    def units_per_normalised(self, params: IntensityParams) -> float:
        w = self._check(params)
        return w.high - w.low

    @property
    def reference_params(self) -> HUWindow:
        return HUWindow()

    def with_reference(self, fitted: Sequence[IntensityParams]) -> IntensityMapping:
        return self


# ----------------------------------------------------------------------------- --source-norm


def source_mapping(name: str) -> IntensityMapping:
    """The source intensity mapping a ``--source-norm`` name stands for (see :data:`SOURCE_NORMS`)."""
    if name not in SOURCE_NORMS:
        raise PreprocessError(f"unknown source normalisation {name!r}; choose one of {', '.join(SOURCE_NORMS)}.")
    return SOURCE_NORMS[name]


# ``--source-norm`` names. p99.5: the first plan's mapping. median and peak put the bulk of the tissue
# at a fixed value instead of its brightest 0.5 %, which on unstripped heads is fat, not brain; their
# clip ranges leave room for tissue brighter than the bulk (T1 fat ≈ 2–3× white matter). zscore also
# fixes the spread of the tissue (see :class:`ZScore`).
SOURCE_NORMS: dict[str, IntensityMapping] = {
    "p99.5": PercentileScale(99.5, (0.0, 2.0)),
    "median": PercentileScale(50.0, (0.0, 4.0)),
    "peak": PeakScale(50.0, (0.0, 3.0)),
    "zscore": ZScore(),
    "rank": ForegroundRank(),
}
