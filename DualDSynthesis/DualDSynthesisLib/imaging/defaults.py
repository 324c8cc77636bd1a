"""The shipped model's location (re-exported from ``resources``) and the small architecture the benchmarks use."""

from __future__ import annotations

from ..core.resources import DEFAULT_MODEL, MODELS_DIR
from ..model.architecture import ArchitectureConfig

__all__ = ["DEFAULT_ARCHITECTURE", "DEFAULT_MODEL", "MODELS_DIR"]

# A small 2-D architecture for random-weight benchmarks (≤ 5 s per 240×240×155 volume on a 2-core CPU);
# the shipped models record their own architecture in their bundles.
DEFAULT_ARCHITECTURE = ArchitectureConfig(g_base_width=8, g_depth=4, d2_base_width=16)
