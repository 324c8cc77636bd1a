"""The heatmap kinds (trust maps): one class per kind, registered by its name, asked by everything that
depends on which map a heatmap is.

A kind says which bundles offer it and what it needs (G's expected-error head, a trained D2), what its
values mean (its units sentence, for file headers and legends), its name in the scene and in file names,
its overlay's display window (the upper end of the colour scale, the default opacity and threshold), its
two QA-table columns and its DICOM Parametric Map label and units code. The CLI's ``--heatmap-source``
choices, a bundle's ``heatmap_sources``, the heatmap file's recorded kind, the Slicer logic, the QA table,
the viewer and the DICOM export all read them here, so a new map is its class here, its function in
``losses.py`` and its branch in the engine's ``_infer`` (docs/architecture.md).

Torch-free, Slicer-free and pydicom-free (the DICOM units code is named as ``pydicom.sr.codedict.codes.UCUM``
names it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.errors import DualDError

if TYPE_CHECKING:  # numpy is imported where a map's values are read: `--help` stays free of it
    import numpy as np

    from .bundle import BundleMetadata

# The two kinds' names: the CLI's --heatmap-source values, the bundle's heatmap_sources, the files' record.
EXPECTED_ERROR = "expected_error"
D2 = "d2"
DISPLAY_PERCENTILE = 99.0  # an unbounded map's colour scale ends at this percentile of its non-zero values
NAME_CHARS = 16  # a kind's name fits the NIfTI header's intent_name (heatmap_file records the kind there)


class HeatmapKindError(DualDError, ValueError):
    """An unknown heatmap kind; the message names it and the known ones."""


@dataclass(frozen=True)
class DisplayWindow:
    """The overlay's defaults: the heatmap's opacity over the background, and the fraction of its display
    window below which it is transparent (the panel's, the viewer's and the logic's sliders start here)."""

    opacity: float = 0.5
    threshold: float = 0.2


DISPLAY_DEFAULTS = DisplayWindow()


class HeatmapKind:
    """One kind of heatmap. Subclasses set the class attributes and are decorated with :func:`register`."""

    name: ClassVar[str]  # --heatmap-source's value, the record in files and node attributes
    title: ClassVar[str]  # what the user reads: node names, the model's summary line
    file_stem: ClassVar[str]  # <input>_<file_stem>.nii.gz when the CLI or the viewer names the file
    help: ClassVar[str]  # --heatmap-source's help for this kind
    needs_error_head: ClassVar[bool] = False  # G's second output
    needs_d2: ClassVar[bool] = False  # a trained local discriminator (and D2's stride and receptive field)
    in_target_units: ClassVar[bool] = False  # the values are errors in the target's units (else relative)
    ceiling: ClassVar[float | None] = None  # the largest possible value (1 for a probability); None = unbounded
    display: ClassVar[DisplayWindow] = DISPLAY_DEFAULTS
    qa_columns: ClassVar[tuple[tuple[str, str], ...]]  # (title, RegionMetrics field): mean and 95th percentile
    dicom_label: ClassVar[str]  # the Parametric Map's LUT label (its content label: spaces as underscores)
    # The start of the units sentence files got before the kind was recorded (reading them: recorded_kind).
    legacy_units_prefix: ClassVar[str]

    def offered_by(self, meta: BundleMetadata) -> bool:
        """Whether a bundle with this metadata can produce the map."""
        return ((not self.needs_error_head or meta.architecture.g_error_head)
                and (not self.needs_d2 or meta.has_local_discriminator))

    def units(self, target_units: str) -> str:
        """What the values mean, for legends and file headers; ``target_units``: :func:`target_units`."""
        raise NotImplementedError

    def value_units(self, target_units: str) -> str:
        """The short units of a value (a QA column's), e.g. "HU" or "0-1"."""
        return target_units if self.in_target_units else "0-1"

    def legend(self, recorded_units: str = "") -> str:
        """A legend's title: the units a result or file recorded, else this kind's own sentence."""
        return recorded_units or self.units("target units")

    def display_max(self, values: np.ndarray) -> float:
        """The upper end of the colour scale: the ceiling of a bounded map (comparable between cases); for an
        unbounded one, with a few extreme voxels at edges, the 99th percentile of its non-zero values."""
        if self.ceiling is not None:
            return float(self.ceiling)
        import numpy as np

        nonzero = values[values > 0]
        high = float(np.percentile(nonzero, DISPLAY_PERCENTILE)) if nonzero.size else 1.0
        return high if high > 0 else 1.0

    def columns(self, target_units: str) -> list[tuple[str, str]]:
        """The QA table's columns for this map, each title with its units."""
        unit = self.value_units(target_units)
        return [(f"{title} ({unit})", field) for title, field in self.qa_columns]

    def dicom_units_code(self, ct_valued: bool) -> str:
        """The real-world value mapping's units, as ``codes.UCUM`` names them."""
        return "HounsfieldUnit" if self.in_target_units and ct_valued else "NoUnits"

    @property
    def file_suffix(self) -> str:
        return f"_{self.file_stem}.nii.gz"


_KINDS: dict[str, HeatmapKind] = {}


def register(cls: type[HeatmapKind]) -> type[HeatmapKind]:
    """Class decorator: make ``cls`` the kind of its ``name``. The first registered is preferred where a
    bundle offers several (the CLI's default)."""
    if cls.name in _KINDS:
        raise ValueError(f"heatmap kind {cls.name!r} is registered twice")
    if len(cls.name) > NAME_CHARS or not cls.name.isascii() or not cls.name.isidentifier():
        raise ValueError(f"heatmap kind name {cls.name!r} must be an ASCII identifier of at most {NAME_CHARS} "
                         "characters")
    _KINDS[cls.name] = cls()
    return cls


def names() -> tuple[str, ...]:
    """Every kind's name, the preferred first (the CLI's --heatmap-source choices)."""
    return tuple(_KINDS)


def kinds() -> tuple[HeatmapKind, ...]:
    return tuple(_KINDS.values())


def kind(name: str | None) -> HeatmapKind:
    """The kind called ``name``; None (a node or file that recorded no kind, as older versions wrote D2's
    maps) is D2's."""
    if name is None:
        name = D2
    if name not in _KINDS:
        raise HeatmapKindError(f"unknown heatmap kind {name!r}; choose one of {', '.join(_KINDS)}")
    return _KINDS[name]


def recorded_kind(recorded: str | None, units: str = "") -> HeatmapKind:
    """The kind a file or node recorded; for a file written before the kind was recorded, the kind whose
    units sentence it starts with (else D2's, all those versions could write without an error head)."""
    if recorded and recorded in _KINDS:
        return _KINDS[recorded]
    for candidate in _KINDS.values():
        if units and units.startswith(candidate.legacy_units_prefix):
            return candidate
    return kind(None)


def needs_d2(name: str | None) -> bool:
    """Whether the map ``name`` (None: no map) runs D2 (its stride and receptive field count)."""
    return name is not None and kind(name).needs_d2


def target_units(mapping: Any, modality: str | None) -> str:
    """The target's units for an error map: absolute units as they are ("HU"), else the modality's
    intensity units ("t2 intensity units", an MRI's arbitrary scale)."""
    if mapping is None:
        return "HU" if (modality or "").strip().upper() == "CT" else f"{modality or 'target'} intensity units"
    return mapping.units if mapping.absolute_units else f"{modality} {mapping.units}"


@register
class ExpectedError(HeatmapKind):
    """G's second output: the expected |error| at each voxel, in the target's units (calibrated)."""

    name = EXPECTED_ERROR
    title = "expected error"
    file_stem = "expected_error"
    help = "G's expected |error| in target units"
    needs_error_head = True
    in_target_units = True
    qa_columns = (("Expected MAE", "expected_mae"), ("P95 expected |error|", "p95_difficulty"))
    dicom_label = "EXPECTED ERROR"
    legacy_units_prefix = "expected absolute error"

    def units(self, target_units: str) -> str:
        return f"{self.legacy_units_prefix} ({target_units})"


@register
class D2Difficulty(HeatmapKind):
    """D2's relative difficulty, 1 − its confidence that the synthetic patch is real: a probability."""

    name = D2
    title = "D2 difficulty"
    file_stem = "difficulty"
    help = "1 − D2 confidence, relative 0–1"
    needs_d2 = True
    ceiling = 1.0
    qa_columns = (("Mean difficulty", "mean_difficulty"), ("P95 difficulty", "p95_difficulty"))
    dicom_label = "DIFFICULTY"
    legacy_units_prefix = "relative difficulty"

    def units(self, target_units: str) -> str:
        return f"{self.legacy_units_prefix} (1 − D2 confidence, 0–1)"
