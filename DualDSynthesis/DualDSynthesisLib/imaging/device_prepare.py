"""Inference preprocessing with the voxel work on a torch device: :func:`prepare_volume` with tensors out.

Profile of ``preprocess.prepare_volume`` on a 240×240×155 int16 T1 (2-core CPU, ~0.11 s before this
module's companion change to ``_fill_holes_per_slice``): hole filling of the foreground ~45 %, the
int16 → float32 cast ~13 %, the validation's min/max ~8 %, the intensity mapping ~10 %, the scale's
percentile ~9 %, reorientation ~4 %, padding and copies the rest.

Here the geometry (validation, ``DICOMOrient``, in-plane resampling) stays SimpleITK's
(:func:`preprocess.prepare_geometry`, a permutation or a resampling on the CPU); a volume that needs
no resampling travels to the device in its own pixel type (int16: half the bytes of float32), through
pinned host memory with a non-blocking copy, and is cast there. On the device: the robust maximum,
the foreground threshold, the per-plane hole filling (:func:`fill_holes_per_slice`: a flood fill from each
plane's border, where the host labels components with scipy), the scale's percentile, the intensity mapping
and the padding; the foreground then comes to the host once (the engine's crop box and slice skipping read
it). The slices stay on the device for the networks.

The foreground threshold, the fit and the mapping are the mapping class's own methods
(``model.intensity``), run on tensors with :data:`TORCH_OPS` for the reductions numpy and torch spell
differently (the percentile by numpy's linear interpolation, in float64), so the result equals
``prepare_volume``'s within float rounding; the tests force this path on the CPU and compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch

from ..model.intensity import ArrayOps, IntensityParams, PreprocessError
from .preprocess import PreprocessingSpec, RestoreContext, prepare_geometry


@dataclass
class DevicePreparedVolume:
    """:class:`preprocess.PreparedVolume` with its arrays as tensors on the device."""

    slices: torch.Tensor  # float32 [K, H, W], normalised, padded
    foreground: np.ndarray  # bool [K, H, W] on the host (the engine's crop box and slice skipping read it)
    params: IntensityParams
    context: RestoreContext


def percentile(values: torch.Tensor, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of a 1-D tensor, on its device.

    ``kthvalue`` instead of ``torch.quantile``: no 16 M-element limit, and the two order statistics
    are interpolated in float64 as numpy does."""
    n = values.numel()
    pos = q / 100.0 * (n - 1)
    lo = int(np.floor(pos))
    a = float(torch.kthvalue(values, lo + 1).values)
    b = float(torch.kthvalue(values, min(lo + 2, n)).values)
    return a + (b - a) * (pos - lo)


def _to_device(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    """A copy of ``arr`` on ``device``; through pinned memory with a non-blocking copy when that is a GPU.
    (A copy also on the CPU: ``arr`` may be a read-only view of a SimpleITK image.)"""
    dtype = torch.from_numpy(np.empty(0, arr.dtype)).dtype
    pinned = torch.empty(arr.shape, dtype=dtype, pin_memory=device.type == "cuda")
    pinned.numpy()[...] = arr
    return pinned.to(device, non_blocking=True) if device.type == "cuda" else pinned


def fill_holes_per_slice(mask: torch.Tensor, check_every: int = 16) -> torch.Tensor:
    """``intensity_base._fill_holes_per_slice`` on ``mask``'s device (a new tensor): in each plane, background
    4-connected to the plane's border stays background, the rest (foreground and holes) is foreground.

    A flood fill: the border's background grows by one 4-neighbour step per iteration, inside the background,
    until an iteration changes nothing (read every ``check_every`` iterations, one host sync each). Exact, as
    the host's labelling is. Only planes with foreground, inside their joint bounding box grown by one voxel
    (everything outside it is background reached from the border; the host path's argument)."""
    filled = mask.clone()
    planes = mask.flatten(1).any(dim=1).nonzero().flatten()
    if planes.numel() == 0:
        return filled
    rows = mask.any(dim=0).any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).any(dim=0).nonzero().flatten()
    y0, y1 = max(0, int(rows[0]) - 1), int(rows[-1]) + 2
    x0, x1 = max(0, int(cols[0]) - 1), int(cols[-1]) + 2
    background = ~mask[planes, y0:y1, x0:x1]
    reach = torch.zeros_like(background)
    for edge in ((slice(None), 0), (slice(None), -1), (slice(None), slice(None), 0), (slice(None), slice(None), -1)):
        reach[edge] = background[edge]
    while True:
        before = reach
        for _ in range(check_every):
            grown = reach.clone()
            grown[:, 1:] |= reach[:, :-1]
            grown[:, :-1] |= reach[:, 1:]
            grown[:, :, 1:] |= reach[:, :, :-1]
            grown[:, :, :-1] |= reach[:, :, 1:]
            reach = grown & background
        if torch.equal(reach, before):
            break
    filled[planes, y0:y1, x0:x1] = ~reach
    return filled


class TorchOps(ArrayOps):
    """:class:`intensity.ArrayOps` for tensors, on their device."""

    def percentile(self, values: torch.Tensor, q: float) -> float:
        return percentile(values, q)

    def mean_std(self, values: torch.Tensor) -> tuple[float, float]:
        v = values.double()
        return float(v.mean()), float(v.std(correction=0))

    def to_host(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()

    def fill_holes(self, mask: torch.Tensor) -> np.ndarray:
        return fill_holes_per_slice(mask).cpu().numpy()


TORCH_OPS = TorchOps()


def prepare_volume_on_device(image: sitk.Image, spec: PreprocessingSpec, device: torch.device | str,
                             role: Literal["source", "target"] = "source",
                             params: IntensityParams | None = None, validated: bool = False) -> DevicePreparedVolume:
    """:func:`preprocess.prepare_volume` (sources and targets; masks stay on the host path) with the
    voxel work on ``device``; raises :class:`PreprocessError` as it does (``validated``: see
    :func:`preprocess.prepare_geometry`)."""
    device = torch.device(device)
    mapping = spec.mapping(role)
    if mapping is None:
        raise PreprocessError("label masks are prepared on the host with preprocess.prepare_volume.")
    on_grid, context = prepare_geometry(image, spec, role, cast=False, validated=validated)
    raw = _to_device(sitk.GetArrayViewFromImage(on_grid), device)  # [K, H, W] in the image's pixel type
    arr = raw.float()  # float32, as sitk.Cast gives (every ITK pixel type converts exactly or rounds alike)
    del raw
    fg_host = mapping.foreground(arr, TORCH_OPS)  # the threshold and the hole filling on the device
    fg = _to_device(fg_host, device)
    if params is None:
        params = mapping.fit(arr, fg, TORCH_OPS)
    inner = mapping.forward(arr, params)
    if mapping.zero_outside_foreground:
        inner = inner.masked_fill(~fg, 0.0)
    y0, y1, x0, x1 = context.crop
    slices = torch.zeros(context.padded_shape, dtype=torch.float32, device=device)
    slices[:, y0:y1, x0:x1] = inner
    foreground_padded = np.zeros(context.padded_shape, dtype=bool)
    foreground_padded[:, y0:y1, x0:x1] = fg_host
    return DevicePreparedVolume(slices, foreground_padded, params, context)
