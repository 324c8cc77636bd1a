"""``--best-metric``: the validation metrics' names and which of two values is better (torch-free).

``validation.py`` computes the metrics under these names; ``RunConfig.check`` refuses an unknown name
before torch loads, and the loop keeps ``model-best`` by :func:`is_better`.
"""

from __future__ import annotations

import math

METRICS = ("psnr", "mae", "ssim")
REGIONS = ("volume", "foreground", "tumour")


def metric_names() -> list[str]:
    return [f"{m}_{r}" for m in METRICS for r in REGIONS]


def higher_is_better(name: str) -> bool:
    return not name.startswith("mae")


def check_metric_name(name: str) -> str:
    if name not in metric_names():
        raise ValueError(f"unknown --best-metric {name!r}; choose one of {', '.join(metric_names())}")
    return name


def is_better(value: float | None, best: float | None, name: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if higher_is_better(name) else value < best
