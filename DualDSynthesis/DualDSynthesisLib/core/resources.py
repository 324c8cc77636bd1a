"""Where the module's resources live. No torch import: the Slicer logic reads these at start-up,
before it knows whether torch is installed."""

from __future__ import annotations

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parents[2] / "Resources"
MODELS_DIR = RESOURCES_DIR / "Models"
DEFAULT_MODEL = MODELS_DIR / "t1_to_t2.safetensors"
