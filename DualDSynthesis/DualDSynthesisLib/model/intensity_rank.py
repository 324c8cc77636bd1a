"""``mri_rank``: histogram equalisation of the MRI foreground, a source normalisation (numpy + scipy only).

One scheme of :mod:`intensity` in its own file because its landmarks and piecewise-linear interpolation
(written once for numpy arrays and torch tensors) are a concern of their own; :mod:`intensity` registers
it in :data:`intensity.SOURCE_NORMS` (``--source-norm rank``) and re-exports its names.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .intensity_base import (
    ArrayOps,
    IntensityMapping,
    IntensityParams,
    MriForeground,
    PreprocessError,
    clipped,
    finite,
    is_tensor,
    mri_threshold,
    refuse_unknown,
    register,
)

_RANK_SAMPLES = 1_000_000  # the landmarks are percentiles of a strided subsample of the foreground


@dataclass(frozen=True)
class RankParams(IntensityParams):
    """One MRI volume's histogram landmarks: the raw values at its foreground's 0th, 1st, …, 100th
    percentiles (strictly increasing), and the raw foreground threshold (:func:`mri_threshold`)."""

    landmarks: tuple[float, ...]
    threshold: float

    def __post_init__(self) -> None:
        values = tuple(finite("rank landmark", v) for v in self.landmarks)
        if len(values) < 2 or any(b <= a for a, b in itertools.pairwise(values)):
            raise PreprocessError("rank landmarks must be at least two strictly increasing numbers.")
        object.__setattr__(self, "landmarks", values)
        object.__setattr__(self, "threshold", finite("rank threshold", self.threshold))


def _piecewise_linear(x: Any, xp: np.ndarray, fp: np.ndarray) -> Any:
    """``np.interp(x, xp, fp)`` (clamped at both ends) for numpy arrays and torch tensors alike: a tensor
    gets the sum of its clamped segments, elementwise operators only (this module does not import torch)."""
    if not is_tensor(x):
        return np.interp(np.asarray(x, dtype=np.float32), xp, fp).astype(np.float32)
    x64 = x.double()  # a sum of ~100 segments in float32 would drift 1e-5 from numpy's
    y = x64.new_full(x.shape, float(fp[0]))
    for i in range(len(xp) - 1):
        slope = float((fp[i + 1] - fp[i]) / (xp[i + 1] - xp[i]))
        y += (x64.clamp(float(xp[i]), float(xp[i + 1])) - float(xp[i])) * slope
    return y.float()


@register
@dataclass(frozen=True)
class ForegroundRank(MriForeground, IntensityMapping):
    """``mri_rank``: histogram equalisation in the foreground. A voxel's normalised value is its rank among
    the foreground's voxels, from ``low`` (the darkest) to 1 (the brightest), piecewise linear between the
    ``points`` percentile landmarks; background (raw ≤ threshold) → exactly 0.

    Why: any monotone change of the source's contrast — another scanner's gamma, T1 sequence, bias in the
    grey/white ratio, a scalp that sets the 99.5th percentile — leaves the ranks unchanged, so the network
    sees one contrast from every site. ``low`` > 0 keeps the darkest tissue apart from the background. It
    is a source normalisation: it has no linear units to restore a synthetic target to."""

    points: int = 101
    low: float = 0.1

    kind: ClassVar[str] = "mri_rank"
    params_type: ClassVar[type[IntensityParams]] = RankParams

    def __post_init__(self) -> None:
        if not isinstance(self.points, int) or not 2 <= self.points <= 1001:
            raise PreprocessError(f"rank points must be a whole number from 2 to 1001, got {self.points!r}.")
        low = finite("rank low", self.low)
        if not 0.0 < low < 1.0:
            raise PreprocessError(f"rank low must lie between 0 and 1, got {low}.")
        object.__setattr__(self, "low", low)

    @property
    def _levels(self) -> np.ndarray:
        return np.linspace(self.low, 1.0, self.points)

    def _fit(self, arr: Any, values: Any, ops: ArrayOps) -> RankParams:
        host = ops.to_host(values[:: max(1, len(values) // _RANK_SAMPLES)]).astype(np.float64)
        marks = np.percentile(host, np.linspace(0.0, 100.0, self.points))
        # ties (quantised or flat data) would stall the interpolation: space equal landmarks minimally apart
        eps = max(abs(float(marks[-1])), 1.0) * 1e-6
        marks = np.maximum.accumulate(marks) + eps * np.arange(self.points)
        threshold = mri_threshold(arr, ops)
        return RankParams(tuple(float(v) for v in marks), 0.0 if threshold is None else threshold)

    def forward(self, arr: Any, params: IntensityParams, out: np.ndarray | None = None) -> Any:
        p = self._check(params)
        y = _piecewise_linear(arr, np.asarray(p.landmarks), self._levels)
        y *= arr > np.float32(p.threshold)  # background → exactly 0
        if out is not None:
            out[...] = y
            return out
        return y

    def inverse(self, arr: Any, params: IntensityParams) -> Any:
        p = self._check(params)
        y = _piecewise_linear(clipped(arr, self.low, 1.0), self._levels, np.asarray(p.landmarks))
        background = clipped(arr, 0.0, 1.0) <= 0.0
        y[background] = self.background_value
        return y

    def units_per_normalised(self, params: IntensityParams) -> float:
        raise PreprocessError("mri_rank is a source normalisation: it has no units to give errors in.")

    @property
    def reference_params(self) -> RankParams:
        raise PreprocessError("mri_rank is a source normalisation: it cannot restore a synthetic image's units.")

    def with_reference(self, fitted: Sequence[IntensityParams]) -> IntensityMapping:
        raise PreprocessError("mri_rank is a source normalisation; a model's target needs a scale mapping.")

    @property
    def description(self) -> str:
        return f"foreground rank ({self.low:g} darkest to 1 brightest)"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "points": self.points, "low": self.low}

    @classmethod
    def _from_settings(cls, d: dict[str, Any]) -> IntensityMapping:
        refuse_unknown(d, {"kind", "points", "low"})
        return cls(points=d.get("points", 101), low=d.get("low", 0.1))
