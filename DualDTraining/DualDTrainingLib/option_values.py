"""Option values of ``duald-train`` parsed and range-checked without torch.

``RunConfig.check`` runs these before the run imports torch (so a bad value is one line at once, not
after the data is prepared); the torch-side classes that take the same values (``SourceAugmentation``,
both slice samplers) run the same checks, so the rule and its sentence are written once.
"""

from __future__ import annotations

import math


def parse_spacing(text: str | None) -> tuple[float, float] | None:
    """``"1"``, ``"0.8,0.8"`` or ``"0.8x0.8"`` (mm) → (x, y); empty/``auto`` → None (the data's)."""
    if text is None or not text.strip() or text.strip().lower() in ("auto", "data"):
        return None
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--spacing must be one or two numbers in mm (e.g. 1 or 0.8,0.8), got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"--spacing must be one or two positive numbers in mm, got {text!r}")
    return values[0], values[1]


def check_fraction(value: float, what: str) -> float:
    """``value`` when it lies in [0, 1] (NaN does not), else a ValueError naming ``what``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be between 0 and 1, got {value!r}")
    return value
