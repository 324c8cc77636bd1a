"""The names this program gives the files it derives from an input: one definition, read by every writer
(``duald-synthesize`` into a folder, the demo, the web viewer's Save) and by cohort discovery, which must
not take an earlier run's outputs in the same folder for new inputs. No torch, SimpleITK, Slicer or Qt."""

from __future__ import annotations

from pathlib import Path

SYNTHETIC_SUFFIX = "_synthetic.nii.gz"
HEATMAP_SUFFIX = "_difficulty.nii.gz"
OVERVIEW_SUFFIX = "_overview.png"
DERIVED_SUFFIXES = (SYNTHETIC_SUFFIX, HEATMAP_SUFFIX, OVERVIEW_SUFFIX)


def is_derived_output(path: Path) -> bool:
    """Whether ``path`` is named as this program names an output (``<stem>_synthetic.nii.gz`` etc.)."""
    name = path.name.lower()
    return any(name.endswith(suffix) and len(name) > len(suffix) for suffix in DERIVED_SUFFIXES)
