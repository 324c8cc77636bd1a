"""Where the shipped model lives and which architecture it has (no torch import)."""

from __future__ import annotations

from pathlib import Path

from .networks import ArchitectureConfig

MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
DEFAULT_MODEL = MODELS_DIR / "t1_to_t2.safetensors"
# The shipped T1 → T2 model: small enough for ≤ 5 s per 240×240×155 volume on a 2-core CPU.
DEFAULT_ARCHITECTURE = ArchitectureConfig(g_base_width=8, g_depth=4, d2_base_width=16)
