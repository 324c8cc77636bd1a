"""Calibration of G's expected-error map: one factor, measured on subjects the model never trained on.

G's second output is trained (Laplace likelihood) on its *training* slices, and ends wherever the
training budget leaves it: on unseen scanners the real errors are larger than on the training subjects,
and a short run leaves the head near its starting value. Its ranking of the errors (what the AUROC
measures) is usable either way, but the *values* — the heatmap in target units and the QA table's
"expected MAE" — are only as honest as their calibration. So a bundle records the factor that makes the
map's foreground mean equal the real mean |error| on held-out subjects (duald-train's validation
subjects, or the leave-one-source-out folds of the shipped model), and the engine applies it.

The factor is the geometric mean over held-out subjects of ``mean |error| / mean expected error``
(the ratio of one subject to another is what varies, so the mean is taken on the log scale, and a large
volume does not outweigh a small one). An uncalibrated bundle (factor 1.0, no evidence) says so.
torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.errors import DualDError

if TYPE_CHECKING:  # numpy is imported where arrays are scored: bundle.py (so duald-synthesize --help) needs none
    import numpy as np


class CalibrationError(DualDError):
    """Bad calibration metadata or evidence (one sentence)."""


def error_ratio(expected: np.ndarray, abs_error: np.ndarray, mask: np.ndarray) -> float:
    """``mean(expected) / mean(|error|)`` inside ``mask``: 1 when the map is right on average, 5 when it
    says five times the error there is."""
    import numpy as np

    if expected.shape != abs_error.shape or mask.shape != expected.shape:
        raise CalibrationError(f"shapes differ: {expected.shape}, {abs_error.shape}, {mask.shape}")
    m = mask.astype(bool, copy=False)
    actual = float(abs_error[m].mean(dtype=np.float64)) if m.any() else 0.0
    if not actual > 0:
        return float("nan")  # a perfect prediction (or an empty mask) says nothing about the scale
    return float(expected[m].mean(dtype=np.float64)) / actual


@dataclass(frozen=True)
class ErrorCalibration:
    """Multiply the expected-error map by ``scale``. ``held_out_ratios``: each held-out subject's
    :func:`error_ratio` *before* calibration (the evidence); ``evidence``: where they came from."""

    scale: float = 1.0
    evidence: str = ""
    held_out_ratios: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            raise CalibrationError(f"the error calibration scale must be a number, got {self.scale!r}") from None
        if not (math.isfinite(scale) and scale > 0):
            raise CalibrationError(f"the expected-error calibration scale must be positive, got {scale}")
        if not isinstance(self.evidence, str):
            raise CalibrationError("the expected-error calibration's evidence must be text")
        if not isinstance(self.held_out_ratios, Mapping) or not all(
                isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in self.held_out_ratios.values()):
            raise CalibrationError("the expected-error calibration's held_out_ratios must map names to positive "
                                   "numbers")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "held_out_ratios", {str(k): float(v) for k, v in self.held_out_ratios.items()})

    @property
    def calibrated(self) -> bool:
        return bool(self.held_out_ratios)

    def describe(self) -> str:
        """One sentence for logs and model cards."""
        if not self.calibrated:
            return ("expected error uncalibrated: its values were never checked on held-out scans; use the "
                    "map's ranking, not its numbers")
        spread = sorted(r * self.scale for r in self.held_out_ratios.values())
        return (f"expected error calibrated ×{self.scale:.3g} on {len(spread)} held-out subject(s) "
                f"({self.evidence}); after it, their map-to-real MAE ratio spans {spread[0]:.2f}–{spread[-1]:.2f}")

    @classmethod
    def from_ratios(cls, ratios: Mapping[str, float], evidence: str) -> ErrorCalibration:
        """The factor from held-out subjects' ratios (NaN ratios — perfect predictions — are left out)."""
        usable = {k: float(v) for k, v in ratios.items() if math.isfinite(v) and v > 0}
        if not usable:
            raise CalibrationError("no held-out subject gave a usable expected-error ratio, so the map cannot be "
                                   "calibrated")
        import numpy as np

        scale = math.exp(-float(np.mean(np.log(list(usable.values())))))
        return cls(scale, evidence, usable)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "evidence": self.evidence, "held_out_ratios": dict(self.held_out_ratios)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ErrorCalibration:
        if not isinstance(d, Mapping):
            raise CalibrationError("the expected-error calibration must be a JSON object")
        unknown = sorted(set(d) - {"scale", "evidence", "held_out_ratios"})
        if unknown:
            raise CalibrationError(f"the expected-error calibration has unknown setting(s) {', '.join(unknown)}; "
                                   "it needs a newer DualD")
        return cls(d.get("scale", 1.0), d.get("evidence", ""), d.get("held_out_ratios", {}))
