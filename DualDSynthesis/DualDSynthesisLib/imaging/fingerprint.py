"""The training data's fingerprint, and a one-sentence warning when an input falls outside it (numpy/SimpleITK/scipy).

Training summarises every prepared source volume with :func:`volume_stats` and records
:func:`fingerprint` of them in the bundle; inference computes :func:`volume_stats` of the user's input
and shows :func:`ood_warnings` — a warning, never a refusal: the output is still produced.

What is measured (on the volume exactly as the networks see it, from ``preprocess.prepare_volume``):

- **intensity quantiles** of the normalised source inside the foreground (:data:`QUANTILES`), divided
  by the foreground's own 99.5th percentile so they mean the same under every source mapping. The
  extreme tails (1 %, 99 %) are left out: they follow the CSF fraction and lesions, not the contrast;
- **bright-core fraction**: of the foreground's brightest 30 %, the share that survives an in-plane
  erosion by a 2 mm disk. On T1 the brightest tissue is white matter, a thick compartment (0.25–0.58
  on the eight shared subjects); on FLAIR and T2 it is the cortical ribbon, CSF and lesions, thin
  structures (0.05–0.11 on the MNI/Kirby FLAIRs). The histogram alone cannot tell those FLAIRs from
  T1 — their quantiles lie within 0.03 of another source's T1 — so this spatial cue is needed;
- **geometry**: the original spacing and field of view (canonical x, y, z, before in-plane
  resampling), the foreground's fraction of the grid and its volume in mL;
- **skull**: foreground above :data:`SKULL_ML` mL. Skull-stripped brains on the shared data hold
  1085–1639 mL (intracranial volumes rarely exceed 1.9 L); whole heads 2383–2789 mL with 144 mm of
  coverage, the CT template 2867 mL (HU), 4588 mL (raw). A head with < ~12 cm coverage can read as stripped.

Intensity, bright-core and foreground ranges are kept per skull kind ("stripped", "head"): a whole
head's foreground includes scalp, fat and marrow, so mixing both kinds in one range widens it until
a T2 fits inside a T1 range (seen on the shared data). An input is compared with the ranges of its
own kind; if the model never saw that kind, it gets the skull warning and is compared with all kinds.

Tolerances (why a decision does not flip on noise):

- values in normalised units (quantiles, bright-core fraction) may lie outside the training range by
  ``max(ABS_MARGIN, REL_MARGIN × range width)``: 0.05 is about the spread of one quantile between
  scans of one subject and source, and a quarter of the range's width widens wide ranges (more varied
  training data) in proportion, so a new source with the same contrast is more likely accepted;
- positive physical quantities (spacing, field of view, foreground mL and fraction) may differ by a
  factor: 1.3 for spacing (a 1 mm model accepts 1.3 mm, warns at 1.5 mm; a model trained up to 4 mm
  warns at 6 mm), 1.3 for foreground mL, 1.5 for the field of view and the foreground fraction (both
  depend mostly on how much empty space the scanner's field of view holds; a held-out sagittal
  Kirby21 scan with 256 mm along z would warn at 1.3). In-plane spacing (x, y) warns only when
  coarser than the training data: it is resampled to the bundle's spacing, so finer detail is merely
  averaged; slices (z) are never resampled, so thinner and thicker both warn.

Measured on the shared data (``Testing/test_fingerprint.py``): with all eight T1s none of them warns and
every T2, FLAIR, 6 mm T1 and the CT template warns (the whole-head T2s only just). Held out by source,
BraTS-GLI and Kirby21 T1s pass, BraTS-MET, Ljubljana-MS and TCGA T1s warn; the same under p99.5, median, peak.
A multi-input model records one fingerprint per input (``others``, JSON ``inputs``), each checked alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..core.errors import DualDError
from ..model.intensity_base import foreground_box
from .preprocess import IntensityMapping, PreparedVolume

QUANTILES: tuple[float, ...] = (0.25, 0.50, 0.75, 0.90, 0.95)
REFERENCE_PERCENTILE = 99.5  # quantiles are relative to this percentile of the foreground (see volume_stats)
BRIGHT_QUANTILE = 0.70  # "bright" = above this quantile of the foreground
BRIGHT_CORE_RADIUS_MM = 2.0  # erodes away what is under 4 mm across (cortical ribbon, sulci), not white matter
SKULL_ML = 2000.0
ABS_MARGIN = 0.05
REL_MARGIN = 0.25
SPACING_FACTOR = 1.3
FOV_FACTOR = 1.5
FOREGROUND_ML_FACTOR = 1.3
FOREGROUND_FRACTION_FACTOR = 1.5
_AXES = ("x", "y", "z")
_VERSION = 1

Pair = tuple[float, float]


class FingerprintError(DualDError):
    """Bad fingerprint metadata or inputs (the message is one sentence)."""


# ----------------------------------------------------------------------------- one volume


@dataclass(frozen=True)
class VolumeStats:
    """Summary of one prepared source volume (see the module doc for what each value means)."""

    quantiles: tuple[float, ...]  # foreground intensities at QUANTILES / their 99.5th percentile
    spacing: tuple[float, float, float]  # canonical (x, y, z) mm of the original input
    field_of_view: tuple[float, float, float]  # mm, canonical (x, y, z)
    foreground_fraction: float
    foreground_ml: float
    skull: bool  # head not skull-stripped (foreground_ml > SKULL_ML)
    bright_core: float  # share of the brightest 30 % surviving a 2 mm in-plane erosion


def _disk(radius_px: tuple[int, ...]) -> np.ndarray:
    ry, rx = radius_px
    y, x = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    disk = (y / max(ry, 1e-9)) ** 2 + (x / max(rx, 1e-9)) ** 2 <= 1.0
    return disk[None]  # [1, h, w]: in-plane only, so thick slices do not matter


def _bright_core(slices: np.ndarray, foreground: np.ndarray, threshold: float, spacing_xy: Pair) -> float:
    """``slices``/``foreground``: cropped to the foreground's bounding box. Eroding the crop gives the count
    of the whole volume: outside the box nothing is bright, and the erosion's border value (0) is what
    the volume holds there."""
    bright = foreground & (slices > threshold)
    n = int(np.count_nonzero(bright))
    if n == 0:
        return 0.0
    radius = tuple(max(1, round(BRIGHT_CORE_RADIUS_MM / spacing_xy[a])) for a in (1, 0))  # (y, x) pixels
    return float(np.count_nonzero(ndimage.binary_erosion(bright, structure=_disk(radius))) / n)


def _ml(voxels: int, prepared: PreparedVolume) -> float:
    return float(voxels) * (float(np.prod(prepared.context.prepared.spacing)) / 1000.0)


def foreground_ml(prepared: PreparedVolume) -> float:
    """:attr:`VolumeStats.foreground_ml` alone (one count; ``skull`` is this > :data:`SKULL_ML`)."""
    return _ml(int(np.count_nonzero(prepared.foreground)), prepared)


def volume_stats(prepared: PreparedVolume, mapping: IntensityMapping) -> VolumeStats:
    """Statistics of a volume from ``preprocess.prepare_volume(image, spec, "source")``; ``mapping`` is that
    ``spec.source`` (a mapping that is not proportional, e.g. a z-score or rank, is undone first)."""
    if not prepared.foreground.any():
        raise FingerprintError("the volume has no foreground voxels, so it cannot be compared with the training data.")
    # Everything below reads only the foreground's bounding box (the same voxels, in the same order, as
    # the whole volume gives; a fraction of the work on a padded or mostly empty grid).
    box = foreground_box(prepared.foreground)
    fg, slices = prepared.foreground[box], prepared.slices[box]
    normalised = values = slices[fg]
    if not mapping.proportional:  # back to raw units: see the quantiles below
        values = mapping.inverse(normalised, prepared.params)
    ctx = prepared.context
    canonical, grid = ctx.canonical, ctx.prepared
    # Quantiles are taken after dividing by the foreground's own 99.5th percentile, whatever the bundle's
    # source mapping: p99.5, median and peak are one linear scale per volume (and a z-score is taken back
    # to raw units above), so this gives the same view for every source mapping (under median/peak the
    # FLAIRs of BraTS and TCGA fell inside the T1 range; their bright lesion tail only shows relative to the
    # top of the histogram). ``values``/``normalised`` are this function's own copies, so numpy may reorder
    # them in place (no copy per call; a later call partitions an already partly ordered array). The calls
    # stay separate: a scalar level is interpolated in float32, a tuple of levels in float64.
    top = float(np.percentile(values, REFERENCE_PERCENTILE, overwrite_input=True))
    if not (math.isfinite(top) and top > 0):
        raise FingerprintError(f"the volume's foreground has a {REFERENCE_PERCENTILE}th percentile of {top}, not > 0.")
    found = np.quantile(values, QUANTILES, overwrite_input=True)
    bright = float(np.quantile(normalised, BRIGHT_QUANTILE, overwrite_input=True))
    fg_ml = _ml(values.size, prepared)
    return VolumeStats(
        quantiles=tuple(float(q) / top for q in found),
        spacing=tuple(float(s) for s in canonical.spacing),  # type: ignore[arg-type]
        field_of_view=tuple(float(s * n) for s, n in zip(canonical.spacing, canonical.size, strict=True)),  # type: ignore[arg-type]
        foreground_fraction=float(values.size) / float(np.prod(grid.size)),
        foreground_ml=fg_ml,
        skull=fg_ml > SKULL_ML,
        bright_core=_bright_core(slices, fg, bright, (grid.spacing[0], grid.spacing[1])),
    )


# ----------------------------------------------------------------------------- the fingerprint


def _span(values: Iterable[float]) -> Pair:
    v = [float(x) for x in values]
    return (min(v), max(v))


@dataclass(frozen=True)
class ContentRanges:
    """Min/max of the content statistics over the training volumes of one skull kind."""

    n_subjects: int
    quantiles: tuple[Pair, ...]  # one (lo, hi) per QUANTILES level
    bright_core: Pair
    foreground_fraction: Pair
    foreground_ml: Pair

    @classmethod
    def of(cls, stats: Sequence[VolumeStats]) -> ContentRanges:
        return cls(
            n_subjects=len(stats),
            quantiles=tuple(_span(s.quantiles[i] for s in stats) for i in range(len(QUANTILES))),
            bright_core=_span(s.bright_core for s in stats),
            foreground_fraction=_span(s.foreground_fraction for s in stats),
            foreground_ml=_span(s.foreground_ml for s in stats),
        )

    def merged(self, other: ContentRanges) -> ContentRanges:
        def m(a: Pair, b: Pair) -> Pair:
            return (min(a[0], b[0]), max(a[1], b[1]))

        return ContentRanges(
            n_subjects=self.n_subjects + other.n_subjects,
            quantiles=tuple(m(a, b) for a, b in zip(self.quantiles, other.quantiles, strict=True)),
            bright_core=m(self.bright_core, other.bright_core),
            foreground_fraction=m(self.foreground_fraction, other.foreground_fraction),
            foreground_ml=m(self.foreground_ml, other.foreground_ml),
        )


@dataclass(frozen=True)
class TrainingFingerprint:
    """What the training source volumes looked like: geometry over all of them, content per skull kind."""

    n_subjects: int
    spacing: tuple[Pair, Pair, Pair]  # (lo, hi) mm per canonical axis x, y, z
    field_of_view: tuple[Pair, Pair, Pair]
    stripped: ContentRanges | None  # None: no skull-stripped training volume
    head: ContentRanges | None  # None: no whole-head training volume
    # A multi-input model's other inputs (model/inputs.py), each its own fingerprint: (contrast, fingerprint)
    others: tuple[tuple[str, TrainingFingerprint], ...] = ()

    @property
    def skull_kinds(self) -> tuple[str, ...]:
        return tuple(k for k in ("stripped", "head") if getattr(self, k) is not None)

    def merged(self, other: TrainingFingerprint) -> TrainingFingerprint:
        """The fingerprint of both training sets (a fine-tune: the parent's data and the site's)."""

        def span(a: tuple[Pair, ...], b: tuple[Pair, ...]) -> tuple[Pair, ...]:
            return tuple((min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b, strict=True))

        def content(a: ContentRanges | None, b: ContentRanges | None) -> ContentRanges | None:
            return a.merged(b) if a and b else a or b

        mine, theirs = dict(self.others), dict(other.others)
        return TrainingFingerprint(
            n_subjects=self.n_subjects + other.n_subjects,
            spacing=span(self.spacing, other.spacing),  # type: ignore[arg-type]
            field_of_view=span(self.field_of_view, other.field_of_view),  # type: ignore[arg-type]
            stripped=content(self.stripped, other.stripped),
            head=content(self.head, other.head),
            others=tuple((k, mine[k].merged(theirs[k]) if k in mine and k in theirs else mine.get(k) or theirs[k])
                         for k in dict.fromkeys([*mine, *theirs])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "quantile_levels": list(QUANTILES),
            "n_subjects": self.n_subjects,
            "spacing_mm": [list(p) for p in self.spacing],
            "field_of_view_mm": [list(p) for p in self.field_of_view],
            "stripped": _content_to_dict(self.stripped),
            "head": _content_to_dict(self.head),
            **({"inputs": {k: fp.to_dict() for k, fp in self.others}} if self.others else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> TrainingFingerprint:
        others = d.get("inputs", {}) if isinstance(d, dict) else {}  # the other inputs' (absent: one input)
        if not isinstance(others, dict):
            raise FingerprintError(f"the training fingerprint's inputs must be a JSON object, got {others!r}.")
        d = {k: v for k, v in d.items() if k != "inputs"} if isinstance(d, dict) else d
        _check_keys(d, _TOP_KEYS, "the training fingerprint")
        if d["version"] != _VERSION:
            raise FingerprintError(f"training fingerprint version {d['version']!r} is not supported (expected 1).")
        levels = _floats(d["quantile_levels"], "quantile_levels")
        if levels != QUANTILES:
            raise FingerprintError(
                f"training fingerprint has quantile levels {list(levels)}, expected {list(QUANTILES)}."
            )
        stripped = _content_from_dict(d["stripped"], "stripped")
        head = _content_from_dict(d["head"], "head")
        if stripped is None and head is None:
            raise FingerprintError("training fingerprint has neither 'stripped' nor 'head' ranges.")
        return cls(
            n_subjects=_count(d["n_subjects"], "n_subjects"),
            spacing=_pairs(d["spacing_mm"], "spacing_mm", 3),  # type: ignore[arg-type]
            field_of_view=_pairs(d["field_of_view_mm"], "field_of_view_mm", 3),  # type: ignore[arg-type]
            stripped=stripped,
            head=head,
            others=tuple((str(k), cls.from_dict(v)) for k, v in others.items()),
        )


def fingerprint(stats: Sequence[VolumeStats],
                others: Iterable[tuple[str, Sequence[VolumeStats]]] = ()) -> TrainingFingerprint:
    """The fingerprint of the training source volumes' statistics (at least one); ``others``: a multi-input
    model's other inputs, (contrast, the statistics of the volumes that had it) each."""
    stats = list(stats)
    if not stats:
        raise FingerprintError("a training fingerprint needs the statistics of at least one volume.")
    stripped = [s for s in stats if not s.skull]
    head = [s for s in stats if s.skull]
    return TrainingFingerprint(
        n_subjects=len(stats),
        spacing=tuple(_span(s.spacing[a] for s in stats) for a in range(3)),  # type: ignore[arg-type]
        field_of_view=tuple(_span(s.field_of_view[a] for s in stats) for a in range(3)),  # type: ignore[arg-type]
        stripped=ContentRanges.of(stripped) if stripped else None,
        head=ContentRanges.of(head) if head else None,
        others=tuple((k, fingerprint(v)) for k, v in others if v),
    )


# ----------------------------------------------------------------------------- the warning


def _outside_margin(value: float, rng: Pair) -> bool:
    margin = max(ABS_MARGIN, REL_MARGIN * (rng[1] - rng[0]))
    return value < rng[0] - margin or value > rng[1] + margin


def _outside_factor(value: float, rng: Pair, factor: float) -> bool:
    return value < rng[0] / factor or value > rng[1] * factor


def _pct(level: float) -> str:
    p = level * 100
    return "median" if p == 50 else f"{p:g}th percentile"


def _kind_words(kind: str) -> str:
    return "skull-stripped brains" if kind == "stripped" else "whole heads with skull"


def ood_warnings(fp: TrainingFingerprint, stats: VolumeStats) -> list[str]:
    """One-sentence warnings, each naming what lies outside the training data and its range; [] when inside."""
    if len(stats.quantiles) != len(QUANTILES):
        raise FingerprintError(
            f"the input's statistics hold {len(stats.quantiles)} quantiles, expected {len(QUANTILES)}."
        )
    warnings: list[str] = []
    kind = "head" if stats.skull else "stripped"
    content = getattr(fp, kind)
    if content is None:
        seen = fp.stripped or fp.head
        assert seen is not None  # from_dict/fingerprint guarantee one kind
        warnings.append(
            f"The input looks like {'a whole head with skull' if stats.skull else 'a skull-stripped brain'} "
            f"({stats.foreground_ml:.0f} mL of foreground), but the model was trained only on "
            f"{_kind_words(fp.skull_kinds[0])} ({seen.foreground_ml[0]:.0f}–{seen.foreground_ml[1]:.0f} mL); "
            "expect a poorer synthesis."
        )
        content = fp.stripped.merged(fp.head) if fp.stripped and fp.head else seen

    contrast = [
        f"{_pct(level)} {value:.2f}, training {lo:.2f}–{hi:.2f}"
        for level, value, (lo, hi) in zip(QUANTILES, stats.quantiles, content.quantiles, strict=True)
        if _outside_margin(value, (lo, hi))
    ][:2]  # the sentence stays readable; two are enough to show the shift
    if _outside_margin(stats.bright_core, content.bright_core):
        lo, hi = content.bright_core
        contrast.append(f"bright-core fraction {stats.bright_core:.2f}, training {lo:.2f}–{hi:.2f}")
    if contrast:
        warnings.append(
            "The input's normalised intensities are unlike the training images' (" + "; ".join(contrast) + "), "
            "so it may be another contrast or modality than the model was trained on."
        )

    axes = [
        f"{_AXES[a]} {stats.spacing[a]:.2f} mm, training {lo:.2f}–{hi:.2f}"
        for a, (lo, hi) in enumerate(fp.spacing)
        if _outside_factor(stats.spacing[a], (0.0 if a < 2 else lo, hi), SPACING_FACTOR)
    ]
    if axes:
        warnings.append(f"The input's voxel spacing is outside the training range ({'; '.join(axes)}).")
    axes = [
        f"{_AXES[a]} {stats.field_of_view[a]:.0f} mm, training {lo:.0f}–{hi:.0f}"
        for a, (lo, hi) in enumerate(fp.field_of_view)
        if _outside_factor(stats.field_of_view[a], (lo, hi), FOV_FACTOR)
    ]
    if axes:
        warnings.append(f"The input's field of view is outside the training range ({'; '.join(axes)}).")

    if getattr(fp, kind) is not None:  # foreground size only compares within one skull kind
        parts = []
        lo, hi = content.foreground_ml
        if _outside_factor(stats.foreground_ml, content.foreground_ml, FOREGROUND_ML_FACTOR):
            parts.append(f"{stats.foreground_ml:.0f} mL, training {lo:.0f}–{hi:.0f} mL")
        lo, hi = content.foreground_fraction
        if _outside_factor(stats.foreground_fraction, content.foreground_fraction, FOREGROUND_FRACTION_FACTOR):
            parts.append(f"{stats.foreground_fraction:.1%} of the grid, training {lo:.1%}–{hi:.1%}")
        if parts:
            warnings.append(f"The input's foreground is unlike the training volumes' ({'; '.join(parts)}).")
    return warnings


# ----------------------------------------------------------------------------- JSON helpers

_TOP_KEYS = ("version", "quantile_levels", "n_subjects", "spacing_mm", "field_of_view_mm", "stripped", "head")
_CONTENT_KEYS = ("n_subjects", "quantiles", "bright_core", "foreground_fraction", "foreground_ml")


def _content_to_dict(c: ContentRanges | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "n_subjects": c.n_subjects,
        "quantiles": [list(p) for p in c.quantiles],
        "bright_core": list(c.bright_core),
        "foreground_fraction": list(c.foreground_fraction),
        "foreground_ml": list(c.foreground_ml),
    }


def _content_from_dict(d: Any, name: str) -> ContentRanges | None:
    if d is None:
        return None
    _check_keys(d, _CONTENT_KEYS, f"the fingerprint's '{name}' ranges")
    return ContentRanges(
        n_subjects=_count(d["n_subjects"], f"{name}.n_subjects"),
        quantiles=_pairs(d["quantiles"], f"{name}.quantiles", len(QUANTILES)),
        bright_core=_pairs([d["bright_core"]], f"{name}.bright_core", 1)[0],
        foreground_fraction=_pairs([d["foreground_fraction"]], f"{name}.foreground_fraction", 1)[0],
        foreground_ml=_pairs([d["foreground_ml"]], f"{name}.foreground_ml", 1)[0],
    )


def _check_keys(d: Any, keys: tuple[str, ...], what: str) -> None:
    if not isinstance(d, dict):
        raise FingerprintError(f"{what} must be a JSON object, got {type(d).__name__}.")
    for k in d:
        if k not in keys:
            raise FingerprintError(f"{what} has an unknown key {k!r} (known: {', '.join(keys)}).")
    missing = [k for k in keys if k not in d]
    if missing:
        raise FingerprintError(f"{what} lacks the key{'s' if len(missing) > 1 else ''} {', '.join(missing)}.")


def _floats(v: Any, name: str) -> tuple[float, ...]:
    if not isinstance(v, list | tuple) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v
    ):
        raise FingerprintError(f"fingerprint field {name} must be a list of finite numbers, got {v!r}.")
    return tuple(float(x) for x in v)


def _pairs(v: Any, name: str, n: int) -> tuple[Pair, ...]:
    if not isinstance(v, list | tuple) or len(v) != n:
        raise FingerprintError(f"fingerprint field {name} must hold {n} [low, high] pair(s), got {v!r}.")
    out = []
    for p in v:
        lo_hi = _floats(p, name)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise FingerprintError(f"fingerprint field {name} must hold [low, high] pairs with low <= high, got {p!r}.")
        out.append((lo_hi[0], lo_hi[1]))
    return tuple(out)


def _count(v: Any, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise FingerprintError(f"fingerprint field {name} must be a positive integer, got {v!r}.")
    return v
