"""The names this program gives the files it derives from an input: one definition, read by every writer
(``duald-synthesize`` into a folder, the demo, the web viewer's Save) and by cohort discovery, which must
not take an earlier run's outputs in the same folder for new inputs. A heatmap is named for its kind
(``heatmap_kinds.HeatmapKind.file_suffix``: ``_expected_error``, D2's ``_difficulty``). No torch, SimpleITK,
Slicer or Qt."""

from __future__ import annotations

from pathlib import Path

from . import heatmap_kinds

SYNTHETIC_SUFFIX = "_synthetic.nii.gz"
OVERVIEW_SUFFIX = "_overview.png"


def heatmap_suffix(kind: str | None) -> str:
    """``<stem>`` + this names a heatmap of that kind (None: a file that recorded none, D2's)."""
    return heatmap_kinds.kind(kind).file_suffix


def derived_suffixes() -> tuple[str, ...]:
    """Every suffix an output may carry: a kind registered later (a plug-in's) is recognised too."""
    return (SYNTHETIC_SUFFIX, *(k.file_suffix for k in heatmap_kinds.kinds()), OVERVIEW_SUFFIX)


def is_derived_output(path: Path) -> bool:
    """Whether ``path`` is named as this program names an output (``<stem>_synthetic.nii.gz`` etc.)."""
    name = path.name.lower()
    return any(name.endswith(suffix) and len(name) > len(suffix) for suffix in derived_suffixes())
