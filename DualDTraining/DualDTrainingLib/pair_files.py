"""A training pair's files: checked from their headers at discovery, read in full at preparation.

:func:`check_pair` reads headers only (fast, every pair at discovery): readable, 3-D, scalar, NIfTI
integrity (``io.nifti_integrity_problem``), and the target/masks overlapping the source in physical
space. :func:`load_pair` and :func:`load_foreground` read the voxels (integrity re-checked, NaN/inf
refused) with everything on the source's grid. Problems are sentences naming the subject, role and file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import SimpleITK as sitk
from DualDSynthesisLib.imaging.grid import Grid
from DualDSynthesisLib.imaging.io import nifti_integrity_problem, nifti_non_finite_voxels

from .errors import DiscoveryError

if TYPE_CHECKING:
    from .discovery import SubjectPair

MIN_OVERLAP = 0.5  # fraction of the source's physical bounding box the target must cover


class _Header(NamedTuple):
    dim: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int


def _read_header(path: Path) -> _Header:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return _Header(
        reader.GetDimension(),
        reader.GetSize(),
        reader.GetSpacing(),
        reader.GetOrigin(),
        reader.GetDirection(),
        reader.GetNumberOfComponents(),
    )


def _bbox(h: _Header) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box of the voxels' extent (voxel edges, not centres)."""
    d = np.array(h.direction).reshape(3, 3)
    corners = np.array(
        [[lo_hi[(c >> a) & 1] for a, lo_hi in enumerate([(-0.5, n - 0.5) for n in h.size])] for c in range(8)]
    )
    points = np.array(h.origin) + (corners * np.array(h.spacing)) @ d.T
    return points.min(axis=0), points.max(axis=0)


def _overlap_fraction(source: _Header, other: _Header) -> float:
    (a0, a1), (b0, b1) = _bbox(source), _bbox(other)
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)
    return float(np.prod(inter) / np.prod(a1 - a0))


def _same_grid(a: _Header, b: _Header) -> bool:
    """The one "same grid" rule (``preprocess.Grid.matches``) on two headers."""
    def grid(h: _Header) -> Grid:
        return Grid(tuple(h.size), tuple(h.spacing), tuple(h.origin), tuple(h.direction))

    return len(a.size) == len(b.size) == 3 and grid(a).matches(grid(b))


def check_pair(pair: SubjectPair) -> tuple[str | None, list[str]]:
    """(rejection reason or None, notes) for one pair, from headers and NIfTI integrity only."""
    headers: dict[str, _Header] = {}
    roles = (("source", pair.source), ("target", pair.target), ("mask", pair.mask), ("foreground", pair.foreground),
             *pair.others)  # a multi-input model's other inputs, named by their contrast
    for role, path in roles:
        if path is None:
            continue
        if not path.is_file():
            return f"{role} file {path} not found", []
        try:
            header = _read_header(path)
        except RuntimeError as exc:
            return f"{role} file {path.name} cannot be read ({first_line(exc)})", []
        problem = nifti_integrity_problem(path)
        if problem:
            return f"{role} file {path.name} {problem}", []
        if header.dim != 3:
            return f"{role} file {path.name} is {header.dim}-D, not a 3-D volume", []
        if 0 in header.size:
            return f"{role} file {path.name} is empty (size {header.size})", []
        if header.components != 1:
            return f"{role} file {path.name} has {header.components} components per voxel, not 1", []
        headers[role] = header
    notes = []
    for role, header in headers.items():
        if role == "source" or _same_grid(headers["source"], header):
            continue
        fraction = _overlap_fraction(headers["source"], header)
        if fraction < MIN_OVERLAP:
            return (
                f"{role} covers only {fraction:.0%} of the source's physical extent (at least "
                f"{MIN_OVERLAP:.0%} needed): not the same subject or not co-registered"
            ), []
        notes.append(f"subject {pair.subject}: {role} will be resampled onto the source grid")
    return None, notes


def first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with a file/line banner; the useful part is usually the last line.
    return (lines[-1] if lines else type(exc).__name__)[:200]


# ----------------------------------------------------------------------------- full reads


def _read_full(path: Path, subject: str, role: str) -> sitk.Image:
    problem = nifti_integrity_problem(path)
    if problem:
        raise DiscoveryError(f"subject {subject}: {role} file {path.name} {problem}.")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = first_line(exc)
        raise DiscoveryError(f"subject {subject}: {role} file {path.name} cannot be read ({reason}).") from exc
    bad = nifti_non_finite_voxels(path)  # ITK's NIfTI reader turns NaN/inf into 0 without a word
    if bad:
        raise DiscoveryError(f"subject {subject}: {role} file {path.name} has {bad} NaN or infinite voxels.")
    return image


def _onto(reference: sitk.Image, image: sitk.Image, interpolator: int, default: float, pixel_type: int) -> sitk.Image:
    """``image`` on ``reference``'s grid: its own voxels when the grids agree, else resampled."""
    ref_h = _Header(3, reference.GetSize(), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection(), 1)
    img_h = _Header(3, image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), 1)
    if _same_grid(ref_h, img_h):
        image.CopyInformation(reference)  # equal within tolerance: make it exact for later checks
        return image
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default, pixel_type)


def load_pair(pair: SubjectPair) -> tuple[sitk.Image, sitk.Image, sitk.Image | None]:
    """Read a pair fully (integrity re-checked) with the target and the label mask on the source grid
    (linear / nearest-neighbour; outside the target's extent its minimum, i.e. air for CT, is used).
    Raises :class:`DiscoveryError` naming the subject and the file when one cannot be read."""
    source = _read_full(pair.source, pair.subject, "source")
    target = _read_full(pair.target, pair.subject, "target")
    mm = sitk.MinimumMaximumImageFilter()
    mm.Execute(target)
    target = _onto(source, target, sitk.sitkLinear, mm.GetMinimum(), sitk.sitkFloat32)
    mask = None
    if pair.mask is not None:
        mask = _read_full(pair.mask, pair.subject, "mask")
        mask = _onto(source, mask, sitk.sitkNearestNeighbor, 0.0, mask.GetPixelID())
    return source, target, mask


def load_other(pair: SubjectPair, key: str) -> sitk.Image:
    """One of a multi-input pair's other inputs, as stored (preparation resamples it onto the source's prepared
    grid in physical space: a subject's contrasts are co-registered); DiscoveryError naming the file."""
    return _read_full(dict(pair.others)[key], pair.subject, key)


def load_foreground(pair: SubjectPair, source: sitk.Image) -> sitk.Image | None:
    """The pair's foreground mask (if any) on ``source``'s grid, nearest-neighbour."""
    if pair.foreground is None:
        return None
    image = _read_full(pair.foreground, pair.subject, "foreground")
    return _onto(source, image, sitk.sitkNearestNeighbor, 0.0, image.GetPixelID())
