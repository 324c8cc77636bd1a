"""Plausibility bounds on sizes, spacings and memory (no torch, SimpleITK, Slicer or Qt import).

A wrong header (a 50 mm in-plane spacing) or edited bundle metadata (a 0.001 mm model spacing) would
otherwise ask ITK or numpy for tens of gigabytes and fail with an allocation traceback, taking a whole
cohort down; these checks turn such input into one sentence before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Iterator

SPACING_RANGE_MM = (0.05, 20.0)  # a model's in-plane spacing outside this is edited or broken metadata
MAX_SLICE_SIDE = 4096  # voxels per side of a resampled slice: more means a wrong spacing, not anatomy
BYTES_PER_PREPARED_VOXEL = 16  # prepared slices, synthetic, heatmap and restore buffers (float32 each)
# Voxels per slab of a voxel-wise pass that works in float64: its temporaries stay ~32 MB, not a whole-volume copy
# (the quantisation of a 512×512×300 map at once took ~2 GB).
SLAB_VOXELS = 1 << 22


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def spacing_problem(spacing: tuple[float, ...]) -> str | None:
    lo, hi = SPACING_RANGE_MM
    if all(lo <= v <= hi for v in spacing):
        return None
    return f"spacing must be between {lo} and {hi} mm, got {list(spacing)!r}."


def slice_size_problem(name: str, width: int, height: int, padded_voxels: int) -> str | None:
    """Why a volume with ``width``×``height`` resampled slices (``padded_voxels`` once padded) cannot be
    prepared, or None."""
    if max(width, height) > MAX_SLICE_SIDE:
        return (f"{name} would have {width}×{height}-voxel slices after resampling to the model's spacing, more "
                f"than the maximum {MAX_SLICE_SIDE} per side (is its voxel spacing right?).")
    needed = padded_voxels * BYTES_PER_PREPARED_VOXEL
    available = available_memory()
    if available is not None and needed > available:
        return (f"{name} needs about {needed / 2**30:.1f} GB of memory once resampled, more than the "
                f"{available / 2**30:.1f} GB available.")
    return None


def slabs(depth: int, slice_voxels: int) -> Iterator[slice]:
    """Consecutive ranges of ``depth`` slices of ``slice_voxels`` voxels each, about :data:`SLAB_VOXELS` a range."""
    step = max(1, SLAB_VOXELS // max(1, slice_voxels))
    for k in range(0, depth, step):
        yield slice(k, k + step)
