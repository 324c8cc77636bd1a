"""Where the slices of a DICOM series lie, checked before the series is read as one volume (no torch).

ITK's series reader stacks the files at one constant spacing (the distance from the first slice to the
last divided by the count) whatever their ImagePositionPatient says: with missing slices every slice
after the gap lands up to a gap's width from where it was acquired, and a duplicated position squeezes
the whole volume; ITK only prints "Non uniform sampling" and returns the wrong volume. So every file's
position along the slice normal is read first (pydicom, headers only) and a series whose slices are not
evenly spaced is refused with the positions named; a synthetic image must never be placed elsewhere than
the anatomy it came from. Resampling onto a regular grid was not chosen: it would invent the missing
anatomy between the acquired slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A step may differ from the series' (median) spacing by this fraction, or by the absolute rounding of
# positions written with two decimals, whichever is larger; a missing slice doubles a step, a duplicate
# makes one 0, so both are far outside.
SPACING_TOLERANCE = 0.01
ROUNDING_MM = 0.02
ORIENTATION_TOLERANCE = 1e-3  # direction cosines written as DS strings: a few decimals


@dataclass(frozen=True)
class SlicePlacement:
    """The series' files in slice order, their positions along the normal (mm) and why they cannot
    form a regular volume (None when they can, or when the files do not say where they lie)."""

    files: list[str]
    positions: np.ndarray
    problem: str | None = None


def _vector(value: object, length: int) -> np.ndarray | None:
    try:
        vector = np.array([float(v) for v in value], dtype=float)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (length,) and np.isfinite(vector).all() else None


def _headers(files: Sequence[str]) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """(ImagePositionPatient, ImageOrientationPatient) of each file, None where absent or unreadable."""
    import pydicom  # only a DICOM series needs it (and it is slow to import)

    tags = ["ImagePositionPatient", "ImageOrientationPatient"]
    out = []
    for name in files:
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=tags)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError):
            out.append((None, None))  # GDCM listed it; ITK's reader reports a damaged file itself
            continue
        out.append((_vector(ds.get("ImagePositionPatient"), 3), _vector(ds.get("ImageOrientationPatient"), 6)))
    return out


def _mm(z: float) -> str:
    return f"{round(z, 3):g}"


def _duplicates(files: list[str], z: np.ndarray) -> str | None:
    same = np.flatnonzero(np.abs(np.diff(z)) <= ROUNDING_MM * 0.5)
    if not same.size:
        return None
    k = int(same[0])
    more = f" ({same.size} positions hold more than one slice)" if same.size > 1 else ""
    return (f"two slices lie at the same position z={_mm(z[k])} mm ({Path(files[k]).name} and "
            f"{Path(files[k + 1]).name}){more}, so the series holds a duplicate or several images per position")


def _uneven(z: np.ndarray) -> str | None:
    steps = np.abs(np.diff(z))
    spacing = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - spacing) > max(SPACING_TOLERANCE * spacing, ROUNDING_MM))
    if not bad.size:
        return None
    k = int(bad[np.argmax(np.abs(steps[bad] - spacing))])  # the worst place is named
    low, high = sorted((z[k], z[k + 1]))
    what = "slices missing" if steps[k] > 1.5 * spacing else "uneven slice spacing"
    more = f"; {bad.size - 1} more step(s) differ too" if bad.size > 1 else ""
    return (f"{what} between z={_mm(low)} and z={_mm(high)} mm (spacing {steps[k]:.3g} mm where the series has "
            f"{spacing:.3g} mm){more}")


def place_slices(files: Sequence[str]) -> SlicePlacement:
    """Order ``files`` (one series, e.g. GDCM's listing) by position along the slice normal and say why
    they do not form an evenly spaced volume: several orientations, duplicated positions, gaps or uneven
    steps. Positions ``z`` are in mm along the normal (row × column cosines) of the first file."""
    files = list(files)
    if len(files) < 2:
        return SlicePlacement(files, np.zeros(len(files)))
    headers = _headers(files)
    if any(position is None or orientation is None for position, orientation in headers):
        return SlicePlacement(files, np.zeros(len(files)))  # no positions to check (e.g. secondary captures)
    orientation = headers[0][1]
    for name, (_position, other) in zip(files, headers, strict=True):
        if np.abs(other - orientation).max() > ORIENTATION_TOLERANCE:
            return SlicePlacement(files, np.zeros(len(files)),
                                  f"its slices do not share one orientation ({Path(name).name} is tilted against "
                                  f"{Path(files[0]).name}), so they do not form one volume")
    normal = np.cross(orientation[:3], orientation[3:])
    z = np.array([float(np.dot(position, normal)) for position, _ in headers])
    order = np.argsort(z, kind="stable")
    if z[0] > z[-1]:  # keep the reader's direction (GDCM may list a series from head to feet)
        order = order[::-1]
    files, z = [files[i] for i in order], z[order]
    problem = _duplicates(files, z) or _uneven(z)
    return SlicePlacement(files, z, problem)
