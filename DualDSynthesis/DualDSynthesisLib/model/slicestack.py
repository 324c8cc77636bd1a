"""The slice-stack seam: a prepared volume and slice indices → the generator's ``[B, C, H, W]`` input.

With ``context`` adjacent slices on each side (2.5-D input), channel ``c`` of sample ``b`` is slice
``indices[b] + c − context``; beyond the first and last slice the edge slice is repeated (the volume
is not wrapped and no zeros are invented, so a top slice looks like a slightly thicker slab, not like
the head ends there). ``context = 0`` is plain 2-D: one channel, the slice itself.

Training (the sampler, validation) and inference (the engine) build their batches only through
:func:`slice_stack`, so the channel order a bundle was trained with is the one it is run with. Plain
indexing works on numpy arrays and on torch tensors alike (the index array is moved to the tensor's
device), so this module needs no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_CONTEXT_SLICES = 8


def check_context(context: Any) -> int:
    """``context`` as an int in [0, MAX_CONTEXT_SLICES], or ``ValueError`` naming it."""
    if isinstance(context, bool) or not isinstance(context, int | np.integer) or not 0 <= context <= MAX_CONTEXT_SLICES:
        raise ValueError(f"context slices must be an integer from 0 to {MAX_CONTEXT_SLICES}, got {context!r}")
    return int(context)


def channels(context: int) -> int:
    """Generator input channels for ``context`` slices on each side."""
    return 2 * check_context(context) + 1


def stack_indices(num_slices: int, indices: Any, context: int, first: Any = None, last: Any = None) -> np.ndarray:
    """``[B, 2·context + 1]`` slice numbers, clamped to ``[0, num_slices − 1]`` (edge slices repeat).

    ``first``/``last`` (one per index) clamp to a narrower range: when several subjects' slices are
    concatenated in one array, a stack never reaches into the neighbouring subject."""
    context = check_context(context)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if num_slices < 1:
        raise ValueError("the volume has no slices")
    if idx.size and (idx.min() < 0 or idx.max() >= num_slices):
        raise ValueError(f"slice indices must lie in [0, {num_slices - 1}], got {idx.min()}..{idx.max()}")
    lo = np.zeros_like(idx) if first is None else np.asarray(first, dtype=np.int64).reshape(-1)
    hi = np.full_like(idx, num_slices - 1) if last is None else np.asarray(last, dtype=np.int64).reshape(-1)
    offsets = np.arange(-context, context + 1, dtype=np.int64)
    return np.clip(idx[:, None] + offsets[None, :], lo[:, None], hi[:, None])


def slice_stack(volume: Any, indices: Any, context: int, first: Any = None, last: Any = None) -> Any:
    """``volume[K, H, W]`` (numpy or torch) → ``[B, 2·context + 1, H, W]`` for the slices ``indices``
    (``first``/``last``: see :func:`stack_indices`)."""
    if volume.ndim != 3:
        raise ValueError(f"expected a [slices, height, width] volume, got {volume.ndim} dimensions")
    if not isinstance(indices, np.ndarray):
        indices = np.asarray(indices.cpu() if hasattr(indices, "cpu") else indices)
    idx = stack_indices(int(volume.shape[0]), indices, context, first, last)
    if isinstance(volume, np.ndarray):
        return volume[idx]
    import torch  # only when given a tensor: the module itself stays torch-free

    return volume[torch.as_tensor(idx, device=volume.device)]
