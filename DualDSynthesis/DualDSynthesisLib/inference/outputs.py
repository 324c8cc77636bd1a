"""The engine's outputs after the networks: back on the input's grid, masked, and checked (torch-free).

:func:`restore_outputs` brings the networks' two arrays (on the prepared grid) back to the input's exact
grid; it takes them out of the dict it is given, so each array is freed as soon as its image exists (a
512×512×300 volume's arrays are 0.3 GB each). :func:`check_mask` refuses an unusable user's mask and, with
:func:`mask_grid_message`, says when it lies on another grid and how much of it lands on the input;
:func:`apply_mask` sets the outputs to background outside it; :func:`check_output_paths` refuses bad output
paths before any work. :func:`constant_value` finds a synthetic
image that holds one value on the whole foreground (what an untrained model writes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..imaging import heatmap_kinds
from ..imaging import io as vio
from ..imaging.atomic import same_file
from ..imaging.brainmask import BrainMaskError, mask_on_grid, volume_ml
from ..imaging.grid import Grid
from ..imaging.preprocess import PreparedVolume, PreprocessError, restore_volume, validate_volume
from .contract import SynthesisError, SynthesisResult

if TYPE_CHECKING:
    from ..imaging.dicom_export import DicomRequest

_CHUNK = 16  # slices per chunk of the constant-value scan
MASK_WARN_SHARE = 0.9  # a mask on another grid of which less lands on the input is a warning, else a note


def restore_outputs(outputs: dict[str, np.ndarray | None], prepared: PreparedVolume,
                    box: tuple[slice, slice, slice], source: str | None,
                    blank: float) -> tuple[sitk.Image, sitk.Image | None]:
    """(synthetic, heatmap) images on the input's grid from ``outputs`` ("synthetic", "heatmap": arrays on the
    prepared grid, emptied here). ``box``: the processed region; ``blank``: the synthetic's value where
    resampling reaches outside the slices. Frees ``prepared.foreground`` once the heatmap no longer needs it."""
    context = prepared.context
    synthetic = restore_volume(outputs.pop("synthetic"), context, sitk.sitkLinear, blank)
    if outputs.get("heatmap") is None:
        prepared.foreground = None  # type: ignore[assignment]
        return synthetic, None
    # Outside the source's foreground there is nothing to trust or distrust: exactly 0, so the
    # overlay never tints empty space. Outside the processed box it is 0 already.
    np.copyto(outputs["heatmap"][box], 0.0, where=~prepared.foreground[box])
    prepared.foreground = None  # type: ignore[assignment]
    ceiling = heatmap_kinds.kind(source).ceiling
    upper = float(np.finfo(np.float32).max) if ceiling is None else ceiling
    if not context.resampled:  # restoring only moves voxels: clamp the array in place, no image copy
        np.clip(outputs["heatmap"], 0.0, upper, out=outputs["heatmap"])
    heat_image = restore_volume(outputs.pop("heatmap"), context, sitk.sitkLinear, 0.0)
    if context.resampled and not _within(heat_image, 0.0, upper):  # a clamp in range would copy for nothing
        heat_image = sitk.Clamp(heat_image, sitk.sitkFloat32, 0.0, upper)
    return synthetic, heat_image


def _within(image: sitk.Image, low: float, high: float) -> bool:
    extremes = sitk.MinimumMaximumImageFilter()
    extremes.Execute(image)
    return low <= extremes.GetMinimum() and extremes.GetMaximum() <= high


def constant_value(values: np.ndarray, foreground: np.ndarray, indices: np.ndarray,
                   box: tuple[int, int, int, int]) -> float | None:
    """The one value ``values`` [K, H, W] holds on every foreground voxel of the slices ``indices`` inside
    ``box`` (y0, y1, x0, x1), or None when it varies (usually seen in the first chunk)."""
    y0, y1, x0, x1 = box
    low, high = math.inf, -math.inf
    for start in range(0, indices.size, _CHUNK):
        idx = indices[start : start + _CHUNK]
        inside = values[idx, y0:y1, x0:x1][foreground[idx, y0:y1, x0:x1]]
        if inside.size:
            low, high = min(low, float(inside.min())), max(high, float(inside.max()))
        if high > low:
            return None
    return low if low == high else None


def _grid_words(image: sitk.Image) -> str:
    size = "×".join(str(n) for n in image.GetSize())
    spacing = "×".join(f"{s:.2g}" for s in image.GetSpacing())
    return f"{size} voxels of {spacing} mm"


def mask_grid_message(mask: sitk.Image, image: sitk.Image) -> tuple[str, bool] | None:
    """None when ``mask`` is on ``image``'s grid; else a sentence saying the grids differ and how much of the
    mask lands on the image, and whether that share is small enough to warn. :class:`BrainMaskError` when
    none of it lands on the image."""
    if Grid.from_image(mask).matches(image):
        return None
    total = volume_ml(mask)
    differ = f"the mask is on another grid ({_grid_words(mask)}) than the input volume ({_grid_words(image)})"
    try:
        landed = volume_ml(mask_on_grid(mask, image))
    except BrainMaskError:
        raise BrainMaskError(f"{differ}, and none of its {total:.0f} mL lands on the input; "
                             "give a mask that covers the input volume") from None
    share = landed / total if total > 0 else 0.0
    return (f"{differ}; resampled onto the input's grid, {landed:.0f} of its {total:.0f} mL "
            f"({100 * share:.0f} %) land on the input", share < MASK_WARN_SHARE)


def check_mask(mask: sitk.Image, image: sitk.Image, warnings: list[str], notes: list[str]) -> None:
    """Refuse an unusable mask (:class:`SynthesisError`); say when it lies on another grid (a warning when little
    of it lands on the input, a note otherwise)."""
    try:
        validate_volume(mask, "the mask", allow_constant=True)
    except PreprocessError as exc:
        raise SynthesisError(str(exc).rstrip(".")) from None
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise SynthesisError("the mask must be a scalar label volume")
    try:
        message = mask_grid_message(mask, image)
    except BrainMaskError as exc:
        raise SynthesisError(str(exc)) from None
    if message is not None:
        (warnings if message[1] else notes).append(message[0])


def apply_mask(mask: sitk.Image, synthetic: sitk.Image, heat_image: sitk.Image | None,
               background: float) -> tuple[sitk.Image, sitk.Image | None]:
    """The outputs with the target's ``background`` (and heatmap 0) outside ``mask`` (any grid)."""
    binary = mask_on_grid(mask, synthetic)
    synthetic = sitk.Mask(synthetic, binary, outsideValue=float(background))
    if heat_image is not None:
        heat_image = sitk.Mask(heat_image, binary, outsideValue=0.0)
    return synthetic, heat_image


def check_output_paths(input: str | Path, output: Path | None, heatmap_path: str | Path | None,
                       png: str | Path | None, dicom: DicomRequest | None, outputs: vio.AtomicOutputs,
                       others: Mapping[str, str | Path] | None = None) -> None:
    """Refuse, before any work, outputs that are missing, unwritable by name, existing, repeated or an input
    (``others``: a multi-input model's other input files, by contrast)."""
    wanted = [p for p in (output, heatmap_path, png) if p is not None]
    if not wanted and dicom is None:
        raise SynthesisError("no output was asked for; give an output file or a DICOM export folder")
    if dicom is not None:
        from ..imaging.dicom_export import check_dicom_request  # pydicom: only for a DICOM export

        check_dicom_request(dicom, input, outputs)
    for path in wanted:
        outputs.check(Path(path), (".png",) if path is png else vio.VOLUME_SUFFIXES)
    if len({Path(p).resolve() for p in wanted}) != len(wanted):
        raise SynthesisError("the synthetic, heatmap and PNG outputs must be different files")
    if any(same_file(input, p) for p in wanted):  # a link or a second name of the input included
        raise SynthesisError("an output path is the input volume itself")
    for name, path in (others or {}).items():
        if any(same_file(path, p) for p in wanted):
            raise SynthesisError(f"an output path is the {name} input itself")


def write_overview(outputs: vio.AtomicOutputs, png: Path, source: sitk.Image, result: SynthesisResult) -> None:
    """The overview PNG (input, synthetic, heatmap) among the run's atomic outputs."""
    from ..imaging.overview import overview_image

    figure = overview_image(source, result.synthetic, result.heatmap, result.heatmap_units, result.heatmap_source)
    outputs.write_image(figure, png, (".png",))
