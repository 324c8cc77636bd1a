"""Training data in memory: every subject prepared once, slices sampled with foreground/tumour weights.

Each subject is read with :func:`pair_files.load_pair` (target and label mask already on the source
grid), the source goes through :func:`preprocess.prepare_volume`, the target and the mask through
:func:`preprocess.prepare_on_grid` (nearest-neighbour for the mask), so all three share one prepared
grid. Only normalised float32 slices, boolean foreground/tumour maps and the restore context are
kept; three 240×240×155 subjects take ~200 MB.

Sampling (:class:`SliceSampler`): a slice whose foreground covers at least ``FOREGROUND_MIN_FRACTION``
of the slice gets weight 1, other slices ``EMPTY_SLICE_WEIGHT`` (the generator still sees some empty
slices, so it learns to keep background at 0). When tumour masks exist, with probability
``tumour_fraction`` a slice is drawn uniformly among the slices that contain tumour instead. Random
left-right flips (``flip``) augment the batch. Under ``torchrun`` each rank samples from its own shard:
whole subjects (round robin) when there are at least as many training subjects as ranks, otherwise
every rank holds all subjects and takes every ``world_size``-th candidate slice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch
from DualDSynthesisLib.core.errors import DualDError
from DualDSynthesisLib.imaging.fingerprint import VolumeStats, volume_stats
from DualDSynthesisLib.imaging.preprocess import (
    IntensityParams,
    PreparedVolume,
    PreprocessingSpec,
    RestoreContext,
    prepare_on_grid,
    prepare_volume,
    source_mapping,
)
from DualDSynthesisLib.model.inputs import InputDeclaration
from DualDSynthesisLib.model.intensity import HounsfieldWindow, PercentileScale
from DualDSynthesisLib.model.slicestack import check_context, slice_stack

from .discovery import SubjectPair
from .input_dropout import input_batch
from .option_values import check_fraction
from .pair_files import load_foreground, load_other, load_pair

FOREGROUND_MIN_FRACTION = 0.01
EMPTY_SLICE_WEIGHT = 0.05
VAL_SPLITS = ("val", "validation")
TEST_SPLITS = ("test", "testing")


@dataclass
class PreparedSubject:
    name: str
    source: np.ndarray         # float32 [K, H, W], normalised
    target: np.ndarray         # float32 [K, H, W], normalised
    foreground: np.ndarray     # bool [K, H, W]: source ∪ target foreground (∪ the given foreground mask)
    tumour: np.ndarray | None  # bool [K, H, W] (label > 0) or None without a mask
    source_params: IntensityParams  # the intensity mappings' fitted parameters (e.g. ScaleParams)
    target_params: IntensityParams
    context: RestoreContext
    source_stats: VolumeStats | None = None  # for the bundle's training-data fingerprint
    # A multi-input model's other inputs the subject has (contrast → normalised [K, H, W] on the source's
    # prepared grid) and their statistics (the fingerprint per input).
    others: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    other_stats: dict[str, VolumeStats] = dataclasses.field(default_factory=dict)
    dropped_inputs: dict[str, str] = dataclasses.field(default_factory=dict)  # optional input → why it is unusable

    @property
    def crop(self) -> tuple[slice, slice]:
        """In-plane region of real data inside the padded slices (the padding is excluded from metrics)."""
        y0, y1, x0, x1 = self.context.crop
        return slice(y0, y1), slice(x0, x1)


# ----------------------------------------------------------------------------- spec


def inplane_spacing(image: sitk.Image) -> tuple[float, float]:
    """In-plane (x, y) spacing the volume will have after canonical reorientation."""
    d = np.abs(np.array(image.GetDirection()).reshape(3, 3))
    axis_of = [int(np.argmax(d[row])) for row in range(3)]
    sp = image.GetSpacing()
    return float(sp[axis_of[0]]), float(sp[axis_of[1]])


def base_spec(target_kind: Literal["mri", "ct"], spacing: tuple[float, float] | None, size_multiple: int,
              min_size: int = 32, source_norm: str = "p99.5", context_slices: int = 0) -> PreprocessingSpec:
    """Spec before the target's reference parameters are known (set by :func:`finish_spec`)."""
    target = HounsfieldWindow() if target_kind == "ct" else PercentileScale()
    return PreprocessingSpec(source=source_mapping(source_norm), target=target, spacing=spacing,
                             size_multiple=size_multiple, min_size=min_size, context_slices=context_slices)


def finish_spec(spec: PreprocessingSpec, target_params: Sequence[IntensityParams]) -> PreprocessingSpec:
    """The target mapping with its reference parameters (raw units at inference): for an MRI target the
    median of the training targets' (``reference_scale``); a CT target needs none."""
    return dataclasses.replace(spec, target=spec.target.with_reference(target_params))


# ----------------------------------------------------------------------------- preparation


def prepare_subject(pair: SubjectPair, spec: PreprocessingSpec, optional: Collection[str] = ()) -> PreparedSubject:
    """Read and prepare one pair. Raises ``DiscoveryError``/``PreprocessError`` naming the problem; an ``optional``
    input that cannot be read or prepared is left out instead, its reason in ``dropped_inputs``."""
    src_img, tgt_img, mask_img = load_pair(pair)
    fg_img = load_foreground(pair, src_img)
    src: PreparedVolume = prepare_volume(src_img, spec, "source")
    del src_img
    tgt = prepare_on_grid(tgt_img, src, spec, "target", sitk.sitkLinear)
    del tgt_img
    foreground = src.foreground | tgt.foreground
    tumour = None
    if mask_img is not None:
        tumour = prepare_on_grid(mask_img, src, spec, "mask", sitk.sitkNearestNeighbor).slices > 0
    if fg_img is not None:
        foreground |= prepare_on_grid(fg_img, src, spec, "mask", sitk.sitkNearestNeighbor).slices > 0
    stats = volume_stats(src, spec.source)  # before the foreground is merged with the target's: as the engine sees it
    others, other_stats, dropped = {}, {}, {}
    for key, _ in pair.others:  # each normalised by itself with the source mapping, as the engine does
        try:
            other = prepare_on_grid(load_other(pair, key), src, spec, "source", sitk.sitkLinear)
        except DualDError as exc:
            if key not in optional:
                raise
            # an optional input the subject cannot give is withheld, as input dropout trains the model for
            dropped[key] = str(exc).removeprefix(f"subject {pair.subject}: ").rstrip(".")
            continue
        others[key], other_stats[key] = other.slices, volume_stats(other, spec.source)
    return PreparedSubject(pair.subject, src.slices, tgt.slices, foreground, tumour, src.params, tgt.params,
                           src.context, stats, others, other_stats, dropped)


def choose_splits(pairs: Sequence[SubjectPair], val_subjects: Sequence[str] | None) -> tuple[list[SubjectPair],
                                                                                                 list[SubjectPair]]:
    """(training, validation) pairs. ``val_subjects`` (names) wins; then the data's split column/folders;
    else the last subject when there are at least two; test-split subjects are never used."""
    usable = [p for p in pairs if (p.split or "").lower() not in TEST_SPLITS]
    if not usable:
        raise ValueError("every subject is in the test split; nothing is left to train on")
    if val_subjects:
        names = {p.subject for p in usable}
        unknown = [v for v in val_subjects if v not in names]
        if unknown:
            raise ValueError(f"validation subject(s) {', '.join(unknown)} not among the subjects found "
                             f"({', '.join(sorted(names))})")
        val = [p for p in usable if p.subject in set(val_subjects)]
    elif any((p.split or "").lower() in VAL_SPLITS for p in usable):
        val = [p for p in usable if (p.split or "").lower() in VAL_SPLITS]
    elif len(usable) >= 2:
        val = [usable[-1]]
    else:
        val = []
    val_names = {p.subject for p in val}
    train = [p for p in usable if p.subject not in val_names]
    if not train:
        raise ValueError("no subject is left for training after taking out the validation subjects")
    return train, val


def shard_pairs(pairs: Sequence[SubjectPair], rank: int, world: int) -> tuple[list[SubjectPair], bool]:
    """(this rank's subjects, whether slices must also be sharded): whole subjects when there are enough."""
    if world <= 1:
        return list(pairs), False
    if len(pairs) >= world:
        return [p for i, p in enumerate(pairs) if i % world == rank], False
    return list(pairs), True


# ----------------------------------------------------------------------------- sampling


def pad_to(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre ``arr`` [K, h0, w0] in a [K, h, w] canvas of zeros (the background value): the one canvas
    of both samplers (this one and ``device_sampler``)."""
    k, h0, w0 = arr.shape
    if (h0, w0) == (h, w):
        return arr
    out = np.zeros((k, h, w), dtype=arr.dtype)
    y0, x0 = (h - h0) // 2, (w - w0) // 2
    out[:, y0 : y0 + h0, x0 : x0 + w0] = arr
    return out


def slice_boxes(mask: np.ndarray) -> np.ndarray:
    """Per-slice bounding box ``[K, 4]`` = (y0, y1, x0, x1) of a bool ``[K, H, W]`` mask; empty → zeros."""
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    out = np.zeros((len(mask), 4), np.int32)
    for k in range(len(mask)):
        ys, xs = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
        if ys.size:
            out[k] = (ys[0], ys[-1] + 1, xs[0], xs[-1] + 1)
    return out


class SliceSampler:
    """Draws batches ``[B, 1, H, W]`` of (source, target) slices from prepared subjects.

    All subjects are centred on one canvas (the largest prepared slice size) so any two slices can
    share a batch; the networks are fully convolutional (D1 pools adaptively), so the extra zero
    border changes nothing but speed."""

    def __init__(self, subjects: Sequence[PreparedSubject], rng: np.random.Generator, tumour_fraction: float = 0.5,
                 flip: bool = True, slice_shard: tuple[int, int] = (0, 1), crop: int = 0, context: int = 0,
                 inputs: InputDeclaration | None = None, input_dropout: float = 0.0) -> None:
        if not subjects:
            raise ValueError("no training subject to sample from")
        check_fraction(tumour_fraction, "--tumour-fraction")
        check_fraction(input_dropout, "--input-dropout")
        self.rng, self.flip = rng, flip
        self.inputs, self.input_dropout = inputs, input_dropout
        self.context = check_context(context)
        h = max(s.source.shape[1] for s in subjects)
        w = max(s.source.shape[2] for s in subjects)
        if crop and (crop > h or crop > w):
            raise ValueError(f"--crop-size {crop} is larger than the prepared slices ({h}×{w})")
        self.crop = crop
        self.shape = (crop, crop) if crop else (h, w)
        # Crop centres are drawn inside each slice's foreground (tumour for tumour draws) bounding box.
        self.fg_box = np.concatenate([slice_boxes(pad_to(s.foreground, h, w)) for s in subjects])
        self.tumour_box = np.concatenate([
            slice_boxes(pad_to(s.tumour, h, w)) if s.tumour is not None
            else slice_boxes(np.zeros((len(s.source), 1, 1), bool))
            for s in subjects
        ])
        self.source = np.concatenate([pad_to(s.source, h, w) for s in subjects])
        self.target = np.concatenate([pad_to(s.target, h, w) for s in subjects])
        # The other inputs (zeros where a subject lacks one) and, per slice, which optional ones it has.
        self.others, self.present = other_inputs(subjects, inputs, (h, w))
        fg_frac = np.concatenate([s.foreground.mean(axis=(1, 2)) for s in subjects])
        has_tumour = np.concatenate([
            s.tumour.any(axis=(1, 2)) if s.tumour is not None else np.zeros(len(s.source), bool) for s in subjects
        ])
        # First and last slice of each slice's own subject: a 2.5-D stack never reaches into the next one.
        sizes = [len(s.source) for s in subjects]
        starts = np.repeat(np.cumsum([0, *sizes[:-1]]), sizes)
        self.first, self.last = starts, starts + np.repeat(sizes, sizes) - 1
        subject_of = np.repeat(np.arange(len(subjects)), sizes)
        rank, world = slice_shard
        keep = np.arange(len(self.source)) % world == rank
        self.indices = np.flatnonzero(keep)
        weights = np.where(fg_frac[self.indices] >= FOREGROUND_MIN_FRACTION, 1.0, EMPTY_SLICE_WEIGHT)
        # Every subject gets the same total probability, however many slices it has (a sagittal 256-slice
        # scan must not outweigh a clinical head with 40 thick slices): sample per subject, not per slice.
        per_subject = np.bincount(subject_of[self.indices], weights=weights, minlength=len(subjects))
        weights = weights / per_subject[subject_of[self.indices]]
        self.weights = weights / weights.sum()
        self.tumour_indices = self.indices[has_tumour[self.indices]]
        self.tumour_fraction = tumour_fraction if len(self.tumour_indices) else 0.0
        self.foreground_slices = int((fg_frac[self.indices] >= FOREGROUND_MIN_FRACTION).sum())

    def __len__(self) -> int:
        return len(self.indices)

    def sample_indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice indices, and whether each was drawn for its tumour."""
        idx = self.rng.choice(self.indices, size=batch_size, p=self.weights)
        use_tumour = np.zeros(batch_size, bool)
        if self.tumour_fraction > 0:
            use_tumour = self.rng.random(batch_size) < self.tumour_fraction
            n = int(use_tumour.sum())
            if n:
                idx[use_tumour] = self.rng.choice(self.tumour_indices, size=n)
        return idx, use_tumour

    def _crop_origin(self, box: np.ndarray) -> tuple[int, int]:
        """Top-left corner of a ``crop``-sized window centred on a random point of ``box`` (y0, y1, x0, x1),
        kept inside the canvas; a slice without foreground gets a random window."""
        h, w = self.source.shape[1:]
        y0, y1, x0, x1 = (int(v) for v in box)
        if y1 <= y0:
            y0, y1, x0, x1 = 0, h, 0, w
        cy, cx = self.rng.integers(y0, y1), self.rng.integers(x0, x1)
        half = self.crop // 2
        return int(np.clip(cy - half, 0, h - self.crop)), int(np.clip(cx - half, 0, w - self.crop))

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source ``[B, C, H, W]``: ``2·context + 1`` channels per input, then a multi-input model's
        availability channels (``input_dropout.input_batch``); target ``[B, 1, H, W]``)."""
        idx, for_tumour = self.sample_indices(batch_size)
        first, last = self.first[idx], self.last[idx]
        stacks = [slice_stack(v, idx, self.context, first, last) for v in (self.source, *self.others)]
        if self.crop:
            c = self.crop
            srcs = [np.empty((batch_size, stacks[0].shape[1], c, c), np.float32) for _ in stacks]
            tgt = np.empty((batch_size, 1, c, c), np.float32)
            for b, (i, t) in enumerate(zip(idx, for_tumour, strict=True)):
                y, x = self._crop_origin(self.tumour_box[i] if t else self.fg_box[i])
                for src, stack in zip(srcs, stacks, strict=True):
                    src[b] = stack[b, :, y : y + c, x : x + c]
                tgt[b, 0] = self.target[i, y : y + c, x : x + c]
        else:
            srcs = stacks
            tgt = self.target[idx][:, None]
        if self.flip:
            flips = self.rng.random(batch_size) < 0.5
            for src in srcs:
                src[flips] = src[flips, :, :, ::-1]
            tgt[flips] = tgt[flips, :, :, ::-1]
        src = srcs[0]
        if self.inputs is not None and len(self.inputs) > 1:
            present = self.present[idx]  # one draw per sample and optional input, only for a multi-input model
            uniform = self.rng.random(present.shape) if present.shape[1] else None
            src = input_batch(self.inputs, srcs, present, self.input_dropout, uniform)
        return torch.from_numpy(np.ascontiguousarray(src)), torch.from_numpy(np.ascontiguousarray(tgt))


def other_inputs(subjects: Sequence[PreparedSubject], inputs: InputDeclaration | None,
                 canvas: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """A multi-input model's other inputs of every subject, concatenated on one ``canvas`` (zeros where a
    subject lacks one: [N, H, W] each, declaration order), and ``[N, len(inputs.optional)]`` bool: which
    optional inputs each slice's subject has. A subject without a required input is refused by name."""
    names = () if inputs is None else inputs.names[1:]
    sizes = [len(s.source) for s in subjects]
    present = np.zeros((sum(sizes), 0 if inputs is None else len(inputs.optional)), bool)
    volumes = []
    for name in names:
        parts = []
        for s in subjects:
            if name not in s.others and name in inputs.required:
                raise ValueError(f"subject {s.name} has no {name} image, a required input")
            parts.append(pad_to(s.others[name], *canvas) if name in s.others
                         else np.zeros((len(s.source), *canvas), np.float32))
        volumes.append(np.concatenate(parts))
    for column, name in enumerate(() if inputs is None else inputs.optional):
        present[:, column] = np.repeat([name in s.others for s in subjects], sizes)
    return volumes, present
