"""Training slices resident on the device: batches are drawn, cropped and flipped there, with no host sync.

:class:`DeviceSliceSampler` is the device-side counterpart of :class:`dataset.SliceSampler`. It keeps
every prepared slice of the training subjects in one ``[N, H, W]`` tensor per side on ``device`` (all
subjects centred on one canvas, as the host sampler does) and draws each batch with a
``torch.Generator`` living on that device: subject, slice, tumour-or-not, crop window and flip are
all sampled with device tensors and the batch is one gather, so a CUDA training loop never waits
on the host for its data.

Sampling is the host sampler's (foreground slices weight 1, slices with less than
``FOREGROUND_MIN_FRACTION`` foreground ``EMPTY_SLICE_WEIGHT``; with probability ``tumour_fraction``
a slice is drawn uniformly among the slices with tumour; crops centred on a random point of the
slice's foreground, or tumour, bounding box; left-right flips with probability 1/2) with one
deliberate change: **each training subject gets equal total probability**. The subject is drawn
first, uniformly, then a slice within it, so a subject with twice the slices (or a finer slice
spacing) is not seen twice as often. A subject without tumour slices always gets the foreground
draw, so the tumour fraction holds among the subjects that have tumour masks.

2.5-D input: for ``context = c`` the source is ``[B, 2c + 1, h, w]``, channel ``j`` being slice
``k + j − c`` of the same subject with the edge slices repeated; the channel order comes from
:func:`slicestack.stack_indices`, the one definition training and inference share (computed once per
slice at construction, so no index goes back to the host per batch). The target stays ``[B, 1, h, w]``.

Storage: ``float16`` by default on CUDA (``float32`` on the CPU, exactly the host sampler's values).
The normalised values lie in [0, 2] (the mapping's clip), where float16's spacing is at most 2⁻¹⁰
(rounding error ≤ 4.9e-4, ≤ 2.4e-4 below 1): five times finer than the bf16 rounding that autocast
applies to the source at the first convolution anyway, and ~100× below the L1 reconstruction level
(~0.05) the loss works at. It halves the memory (8 subjects of 155 × 256² per side: 0.33 GB instead of
0.65 GB). Batches are always returned as float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from DualDSynthesisLib.model.inputs import InputDeclaration
from DualDSynthesisLib.model.slicestack import check_context, stack_indices

from .dataset import EMPTY_SLICE_WEIGHT, FOREGROUND_MIN_FRACTION, PreparedSubject, other_inputs, pad_to, slice_boxes
from .input_dropout import input_batch
from .option_values import check_fraction

# Largest storage rounding error allowed (documented above): the tests check the batches against it.
FLOAT16_MAX_ERROR = 2.0**-11 * 2


class DeviceSliceSampler:
    """Draws ``(source [B, 2c+1, h, w], target [B, 1, h, w])`` float32 batches on ``device``.

    ``seed`` seeds the sampler's own ``torch.Generator`` on ``device`` (so the draws do not depend on
    torch's global RNG); ``storage``: the dtype slices are kept in (None: float16 on CUDA, float32
    elsewhere); the other arguments are :class:`dataset.SliceSampler`'s."""

    def __init__(self, subjects: Sequence[PreparedSubject], device: torch.device | str = "cpu", seed: int = 0,
                 tumour_fraction: float = 0.5, flip: bool = True, slice_shard: tuple[int, int] = (0, 1),
                 crop: int = 0, context: int = 0, storage: torch.dtype | None = None,
                 inputs: InputDeclaration | None = None, input_dropout: float = 0.0) -> None:
        if not subjects:
            raise ValueError("no training subject to sample from")
        check_fraction(tumour_fraction, "--tumour-fraction")
        check_fraction(input_dropout, "--input-dropout")
        self.inputs, self.input_dropout = inputs, input_dropout
        self.device = torch.device(device)
        self.context = check_context(context)
        self.flip = flip
        if storage is None:
            storage = torch.float16 if self.device.type == "cuda" else torch.float32
        if storage not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"slice storage must be float32, float16 or bfloat16, got {storage}")
        h = max(s.source.shape[1] for s in subjects)
        w = max(s.source.shape[2] for s in subjects)
        if crop and (crop > h or crop > w):
            raise ValueError(f"--crop-size {crop} is larger than the prepared slices ({h}×{w})")
        self.crop = crop
        self.canvas = (h, w)
        self.shape = (crop, crop) if crop else (h, w)
        counts = [len(s.source) for s in subjects]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n, kmax, n_subj = int(offsets[-1]), max(counts), len(subjects)

        # Slices: filled subject by subject so the host holds one padded subject at a time.
        self.source = torch.empty((n, h, w), dtype=storage, device=self.device)
        self.target = torch.empty((n, h, w), dtype=storage, device=self.device)
        rank, world = slice_shard
        fg_p = np.zeros((n_subj, kmax))  # per-subject slice probabilities of a foreground draw ...
        tu_p = np.zeros((n_subj, kmax))  # ... and of a tumour draw
        has_tumour = np.zeros(n_subj, bool)
        fg_box, tu_box, table = [], [], []
        self.foreground_slices = 0
        for s, (subject, k0) in enumerate(zip(subjects, offsets[:-1], strict=True)):
            k = len(subject.source)
            for dst, arr in ((self.source, subject.source), (self.target, subject.target)):
                dst[k0 : k0 + k] = torch.from_numpy(pad_to(arr, h, w)).to(self.device, storage)
            fg_box.append(slice_boxes(pad_to(subject.foreground, h, w)))
            tumour = subject.tumour if subject.tumour is not None else np.zeros((k, 1, 1), bool)
            tu_box.append(slice_boxes(pad_to(tumour, h, w)) if subject.tumour is not None else slice_boxes(tumour))
            table.append(k0 + stack_indices(k, np.arange(k), self.context))
            keep = (k0 + np.arange(k)) % world == rank  # the host sampler's slice sharding
            fg_frac = subject.foreground.mean(axis=(1, 2))
            weights = np.where(fg_frac >= FOREGROUND_MIN_FRACTION, 1.0, EMPTY_SLICE_WEIGHT) * keep
            if weights.sum() == 0:
                raise ValueError(f"subject {subject.name} has no slice on this rank's shard")
            fg_p[s, :k] = weights / weights.sum()
            self.foreground_slices += int(((fg_frac >= FOREGROUND_MIN_FRACTION) & keep).sum())
            with_tumour = tumour.any(axis=(1, 2)) & keep
            if with_tumour.any():
                has_tumour[s] = True
                tu_p[s, :k] = with_tumour / with_tumour.sum()
        self.num_slices = int(sum(((offsets[s] + np.arange(c)) % world == rank).sum() for s, c in enumerate(counts)))
        self.tumour_fraction = tumour_fraction if has_tumour.any() else 0.0

        def dev(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(a, dtype=dtype).to(self.device)

        # Inverse-CDF tables (float64: no slice with a positive weight is lost to rounding), sampled
        # with a batched searchsorted: unlike torch.multinomial, no per-call validation on the host.
        self._fg_cdf = dev(np.cumsum(fg_p, axis=1), torch.float64)
        self._tu_cdf = dev(np.cumsum(tu_p, axis=1), torch.float64)
        self._counts = dev(np.array(counts), torch.int64)
        self._offsets = dev(offsets[:-1], torch.int64)
        self._has_tumour = dev(has_tumour, torch.bool)
        self._fg_box = dev(np.concatenate(fg_box), torch.int64)
        self._tu_box = dev(np.concatenate(tu_box), torch.int64)
        self._table = dev(np.concatenate(table), torch.int64)  # [N, 2c + 1] source slices of each slice
        # A multi-input model's other inputs (zeros where a subject lacks one) and which optional ones each has;
        # filled one input at a time, so the host holds one padded copy of one input at a time.
        others, present = other_inputs(subjects, inputs, (h, w))
        self.others = [torch.from_numpy(v).to(self.device, storage) for v in others]
        del others
        self._present = dev(present, torch.bool)
        self._canvas_box = dev(np.array([0, h, 0, w]), torch.int64)  # built once: a per-batch copy would sync
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self.num_slices

    @property
    def num_subjects(self) -> int:
        return len(self._counts)

    def rng_state(self) -> torch.Tensor:
        """The generator's state (for a checkpoint); :meth:`set_rng_state` restores it."""
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device, dtype=torch.float64)

    def sample_indices(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global slice indices ``[B]`` (int64, on the device), and whether each was drawn for its tumour."""
        subject = torch.randint(self.num_subjects, (batch_size,), generator=self.generator, device=self.device)
        for_tumour = (self._rand(batch_size) < self.tumour_fraction) & self._has_tumour[subject]
        cdf = torch.where(for_tumour[:, None], self._tu_cdf[subject], self._fg_cdf[subject])
        local = torch.searchsorted(cdf, self._rand(batch_size, 1), right=True)[:, 0]
        local = torch.minimum(local, self._counts[subject] - 1)  # u ≥ the last cdf value by rounding
        return self._offsets[subject] + local, for_tumour

    def _windows(self, idx: torch.Tensor, for_tumour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column indices ``[B, h]``, ``[B, w]`` of each sample's window, flips included."""
        b = idx.numel()
        h, w = self.canvas
        if self.crop:
            c = self.crop
            box = torch.where(for_tumour[:, None], self._tu_box[idx], self._fg_box[idx])
            empty = (box[:, 1] <= box[:, 0])[:, None]
            box = torch.where(empty, self._canvas_box, box)
            u = self._rand(b, 2)  # integers in [lo, hi), as rng.integers(lo, hi)
            cy = box[:, 0] + (u[:, 0] * (box[:, 1] - box[:, 0])).long()
            cx = box[:, 2] + (u[:, 1] * (box[:, 3] - box[:, 2])).long()
            y = (cy - c // 2).clamp(0, h - c)
            x = (cx - c // 2).clamp(0, w - c)
            span_y = span_x = torch.arange(c, device=self.device)
        else:
            y = x = torch.zeros(b, dtype=torch.int64, device=self.device)
            span_y, span_x = torch.arange(h, device=self.device), torch.arange(w, device=self.device)
        cols = span_x.expand(b, -1)
        if self.flip:
            flips = self._rand(b) < 0.5
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        return y[:, None] + span_y, x[:, None] + cols

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, for_tumour = self.sample_indices(batch_size)
        rows, cols = self._windows(idx, for_tumour)
        r, c = rows[:, None, :, None], cols[:, None, None, :]
        table = self._table[idx][:, :, None, None]
        src = self.source[table, r, c].float()
        tgt = self.target[idx[:, None, None, None], r, c]
        if self.inputs is not None and len(self.inputs) > 1:  # input_dropout.py: only a multi-input model draws
            present = self._present[idx]
            uniform = self._rand(*present.shape) if present.shape[1] else None
            stacks = [src, *(v[table, r, c].float() for v in self.others)]
            src = input_batch(self.inputs, stacks, present, self.input_dropout, uniform)
        return src, tgt.float()
