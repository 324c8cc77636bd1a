"""The shipped model: where it lives (re-exported from ``resources``) and which architecture it has."""

from __future__ import annotations

from .networks import ArchitectureConfig
from .resources import DEFAULT_MODEL, MODELS_DIR

__all__ = ["DEFAULT_ARCHITECTURE", "DEFAULT_MODEL", "MODELS_DIR"]

# The shipped T1 → T2 model: small enough for ≤ 5 s per 240×240×155 volume on a 2-core CPU.
DEFAULT_ARCHITECTURE = ArchitectureConfig(g_base_width=8, g_depth=4, d2_base_width=16)
