"""The networks' side of the engine: G (and the heatmap's network) over a prepared volume, batch by batch.

:class:`NetworkPass` is the part of :class:`engine.SynthesisEngine` that runs the networks: BatchNorm-folded
copies of the bundle's networks on a device, batches of slice stacks, and the fall-back to smaller batches
(then the CPU) when a GPU runs out of memory. It reads the engine's ``spec``, ``arch``, ``device``,
``batch_size``, ``crop``, ``channels_last``, ``heatmap_source``, ``output_params`` and ``error_calibration``.

Speed without changing what the networks compute where it matters:

- **Crop.** Every slice is cropped to the foreground bounding box of the whole volume plus a margin
  of at least the receptive-field radius of D2∘G (plus the heatmap's interpolation), rounded up to a
  multiple of the generator's down-sampling factor and of D2's stride so that pooling and stride
  grids stay aligned. Inside the bounding box the outputs therefore equal those of a slice with
  unlimited zero background (identical up to float rounding). Cropping needs per-sample
  normalisation to be absent ("batch" in eval mode or "none"); with instance/layer norm the whole
  slice is processed.
- **Skip.** Slices with no foreground voxel are not run.
- **Fill.** Outside the processed region (skipped slices, outside the crop) the outputs hold the
  networks' own response to pure background: G and D2 are run once on a blank slice (twice the
  margin wide) and the centre values are used. So even there the heatmap is D2's value, and the
  synthetic value is G's, for a background input far from any edge.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn.utils import fuse_conv_bn_eval

from ..imaging import heatmap_kinds
from ..imaging.devices import auto_batch_size, autocast, free_cached_memory, is_out_of_memory
from ..model.intensity_base import foreground_box
from ..model.losses import difficulty_from_logits, expected_error
from ..model.slicestack import slice_stack

if TYPE_CHECKING:
    from ..imaging.bundle import BundleMetadata

PREPARED = 0.1  # progress fraction at which preparation ends and the networks start
NETWORKS_DONE = 0.9


def fold_batchnorm(module: torch.nn.Module, in_place: bool = False) -> torch.nn.Module:
    """An eval-mode copy of ``module`` (``in_place``: ``module`` itself) with every Conv2d → BatchNorm2d pair of
    a Sequential folded into one conv."""
    module = (module if in_place else copy.deepcopy(module)).eval()
    for seq in [m for m in module.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = torch.nn.Identity()
    return module


class NetworkPass:
    """G and the heatmap over a prepared volume; mixed into :class:`engine.SynthesisEngine`."""

    _blank: dict[tuple[str | bool | None, ...], tuple[float, float]]
    metadata: BundleMetadata
    _generator: torch.nn.Module
    _local: torch.nn.Module | None

    def _move_to(self, device: torch.device) -> None:
        self.device = device
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self._generator = self._generator.to(device, memory_format=fmt).eval()
        if self._local is not None:
            self._local = self._local.to(device, memory_format=fmt).eval()

    def _infer(self, batch: np.ndarray | torch.Tensor, heatmap: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """G (and the ``heatmap`` map) for ``batch`` [B, C, h, w] of normalised slice stacks (a host array or
        a tensor on any device, e.g. the device-prepared volume's slices)."""
        x = (batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device):
            out = self._generator(x)
            pred = out[:, :1]
            heat = None
            if heatmap == heatmap_kinds.D2:
                heat = difficulty_from_logits(self._local(pred), tuple(pred.shape[-2:]))
            elif heatmap == heatmap_kinds.EXPECTED_ERROR:
                heat = expected_error(out[:, 1:]) * self._error_units
        syn = pred.float()[:, 0].cpu().numpy()
        return syn, None if heat is None else heat[:, 0].float().cpu().numpy()

    @property
    def _error_units(self) -> float:
        """Target units per normalised unit (the expected-error head works in normalised units), times the
        bundle's held-out calibration factor (``calibration.py``; 1.0 when uncalibrated)."""
        return self.spec.target.units_per_normalised(self.output_params) * self.error_calibration.scale

    @property
    def _d2_stride(self) -> int:
        return self.arch.d2_downsampling if heatmap_kinds.needs_d2(self.heatmap_source) else 1

    def _blank_response(self, heatmap: str | None, given: tuple[bool, ...] = ()) -> tuple[float, float]:
        """(G, heatmap) at the centre of a blank slice wide enough that no edge reaches the centre; ``given``: which
        of a multi-input model's optional inputs are given (their availability channels are 1 even there)."""
        key = (str(self.device), heatmap, *given)  # a one-input model's: (device, heatmap)
        if key not in self._blank:
            step = math.lcm(self.spec.size_multiple, self._d2_stride)
            size = step * math.ceil((2 * self.arch.receptive_margin(heatmap_kinds.needs_d2(heatmap)) + step) / step)
            inputs = self.metadata.inputs
            blank = np.zeros((1, 2 * self.spec.context_slices + 1, size, size), np.float32)
            optional = iter(given or (False,) * len(inputs.optional))
            stacks = [blank if spec.required or next(optional) else None for spec in inputs.inputs]
            syn, heat = self._infer(inputs.stack_inputs(stacks), heatmap)
            c = size // 2
            self._blank[key] = (float(syn[0, c, c]), float(heat[0, c, c]) if heat is not None else 0.0)
        return self._blank[key]

    def _crop_box(self, foreground: np.ndarray, heatmap: str | None) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the processed region of every slice (see the module docstring)."""
        _k, h, w = foreground.shape
        if not self.crop:
            return 0, h, 0, w
        _zs, rows, cols = foreground_box(foreground)
        step = math.lcm(self.spec.size_multiple, self._d2_stride)
        margin = self.arch.receptive_margin(heatmap_kinds.needs_d2(heatmap))
        smallest = max(self.spec.min_size, 16, self.arch.size_multiple)

        def span(lo: int, hi: int, n: int) -> tuple[int, int]:
            start = max(0, (lo - margin) // step * step)
            end = min(n, -(-(hi + margin) // step) * step)
            if end - start < smallest:  # cannot happen with real margins; kept for tiny test nets
                start, end = 0, n
            return start, end

        y0, y1 = span(int(rows.start), int(rows.stop), h)
        x0, x1 = span(int(cols.start), int(cols.stop), w)
        return y0, y1, x0, x1

    def _batch_size_for(self, pixels: int) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return auto_batch_size(self.device, pixels, bytes_per_pixel=4 * 12 * self.arch.g_base_width)

    def _blank_synthetic(self, heatmap: str | None, given: tuple[bool, ...] = ()) -> float:
        """G's output on empty input, in target units: the synthetic volume's value outside the processed region."""
        blank = self._blank_response(heatmap, given)[0]
        return float(self.spec.target.inverse(np.float32(blank), self.output_params))

    def _run_networks(self, slices, indices, box, heatmap, warnings, report, check_cancel, others=()):
        """G (and the heatmap) on ``indices`` inside ``box``. Elsewhere the synthetic holds G's blank response and
        the heatmap 0: it is zeroed outside the foreground anyway, and the foreground lies inside the box.
        ``others``: a multi-input model's other inputs' prepared slices in declaration order (None: not given)."""
        y0, y1, x0, x1 = box
        k, h, w = slices.shape
        target = self.spec.target
        inputs = self.metadata.inputs
        if isinstance(slices, torch.Tensor):  # device-prepared reference: the others join it there
            others = [None if v is None else torch.from_numpy(v).to(slices.device) for v in others]
        given = tuple(v is not None for name, v in zip(inputs.names[1:], others, strict=True)
                      if name in inputs.optional)
        syn = np.empty((k, h, w), np.float32)
        syn.fill(self._blank_synthetic(heatmap, given))
        diff = np.zeros((k, h, w), np.float32) if heatmap else None  # no pass over the array (calloc)
        batch = self._batch_size_for((y1 - y0) * (x1 - x0))
        done = 0
        while done < indices.size:
            check_cancel()
            idx = indices[done : done + batch]
            try:
                stack = slice_stack(slices, idx, self.spec.context_slices)[:, :, y0:y1, x0:x1]
                if len(inputs) > 1:  # model/inputs.py: every input's stack, then the availability channels
                    stack = inputs.stack_inputs([stack, *(None if v is None else slice_stack(
                        v, idx, self.spec.context_slices)[:, :, y0:y1, x0:x1] for v in others)])
                if isinstance(stack, np.ndarray):
                    stack = np.ascontiguousarray(stack)
                out, difficulty = self._infer(stack, heatmap)
            except Exception as exc:  # only GPU out-of-memory is handled; everything else propagates
                if not is_out_of_memory(exc) or self.device.type == "cpu":
                    raise
                free_cached_memory(self.device)
                if batch > 1:
                    batch //= 2
                    warnings.append(f"{self.device} ran out of memory; the batch size was reduced to {batch}")
                else:
                    warnings.append(f"{self.device} ran out of memory even one slice at a time; continuing on the CPU")
                    self._move_to(torch.device("cpu"))
                continue
            syn[idx, y0:y1, x0:x1] = target.inverse(out, self.output_params)
            if diff is not None:
                diff[idx, y0:y1, x0:x1] = difficulty
            done += idx.size
            report(PREPARED + (NETWORKS_DONE - PREPARED) * done / indices.size,
                   f"Synthesised {done}/{indices.size} slices")
        return syn, diff
