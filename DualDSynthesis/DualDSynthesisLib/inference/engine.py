"""Synthesis engine: a source volume in, the synthetic volume and D2's difficulty heatmap out, on its exact grid.

Pipeline (one call of :meth:`SynthesisEngine.run`):

1. ``preprocess.prepare_volume`` with the bundle's recorded :class:`PreprocessingSpec` (reorient to
   the canonical orientation, resample in-plane to the training spacing when it differs, intensity
   mapping, padding), exactly as in training.
2. G, then D2 on G's output, slice by slice in batches under ``torch.inference_mode`` (bf16/fp16
   autocast on CUDA). The heatmap is ``1 − sigmoid(D2(G(x)))`` brought to the slice grid with
   ``losses.confidence_to_grid``: the shipped D2 itself, never an approximation.
3. Back to target units with the target mapping's ``inverse`` and the bundle's reference parameters
   (Hounsfield units for CT; for MRI e.g. the normalised value times ``reference_scale``, the median
   intensity scale of the training targets, since an MRI has no absolute unit), then
   ``preprocess.restore_volume`` undoes padding, resampling and reorientation: both outputs have exactly
   the input's size, spacing, origin and direction (float32).

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

Memory: the prepared input slices and the two output arrays are allocated once; batches are
streamed through the networks; the input slices are released before the outputs are restored.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn.utils import fuse_conv_bn_eval

from ..core.vocabulary import modality_warning
from ..imaging import heatmap_kinds
from ..imaging import io as vio
from ..imaging.brainmask import BrainMaskError, estimate_brain_mask, mask_on_grid, strip, volume_ml
from ..imaging.bundle import BundleError, BundleMetadata, ModelBundle, load_bundle
from ..imaging.calibration import ErrorCalibration
from ..imaging.defaults import DEFAULT_MODEL
from ..imaging.device_prepare import prepare_volume_on_device
from ..imaging.devices import (
    DeviceError,
    auto_batch_size,
    autocast,
    free_cached_memory,
    is_out_of_memory,
    resolve_device,
)
from ..imaging.dicom_export import DicomRequest, check_dicom_request, write_dicom
from ..imaging.fingerprint import TrainingFingerprint, foreground_ml
from ..imaging.preprocess import (
    PreparedVolume,
    PreprocessError,
    prepare_volume,
    restore_volume,
    validate_volume,
)
from ..imaging.skull_policy import check_skull, decide_skull
from ..model.intensity_base import foreground_box
from ..model.losses import difficulty_from_logits, expected_error
from ..model.slicestack import slice_stack
from .contract import CancelCallback, ProgressCallback, SynthesisCancelled, SynthesisError, SynthesisResult
from .input_stats import InputStats

__all__ = [
    "DEFAULT_MODEL",
    "SynthesisCancelled",
    "SynthesisEngine",
    "SynthesisError",
    "SynthesisResult",
    "modality_warning",
    "synthesize_file",
]

_PREPARED = 0.1  # progress fraction at which preparation ends and the networks start
_NETWORKS_DONE = 0.9
_CROP_SAFE_NORMS = ("batch", "none")


# ----------------------------------------------------------------------------- helpers


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``module`` with every Conv2d → BatchNorm2d pair of a Sequential folded into one conv."""
    module = copy.deepcopy(module).eval()
    for seq in [m for m in module.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = torch.nn.Identity()
    return module


def _noop_progress(_fraction: float, _message: str) -> None:
    return None


# ----------------------------------------------------------------------------- engine


class SynthesisEngine:
    """Loads a model bundle once and synthesises any number of volumes with it.

    ``bundle``: a ``.safetensors`` path or a loaded :class:`ModelBundle` (left untouched: the engine
    runs BatchNorm-folded copies of its networks on ``device``). ``device``: ``auto`` (CUDA, then
    MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    ``batch_size``: slices per batch, None = automatic. ``crop=False`` processes whole slices
    (for verification; slower).
    """

    def __init__(
        self,
        bundle: str | Path | ModelBundle,
        device: str = "auto",
        batch_size: int | None = None,
        *,
        crop: bool = True,
        channels_last: bool = True,
        heatmap_source: str | None = None,
        device_preprocessing: bool | None = None,
    ) -> None:
        try:
            self.device = resolve_device(device)
        except DeviceError as exc:
            raise SynthesisError(str(exc)) from None
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise SynthesisError(f"the batch size must be a positive integer, got {batch_size!r}")
        self.bundle_path = None if isinstance(bundle, ModelBundle) else Path(bundle)  # named in DICOM exports
        if isinstance(bundle, ModelBundle):
            self.bundle = bundle
        else:
            try:
                self.bundle = load_bundle(bundle, "cpu")
            except BundleError as exc:
                raise SynthesisError(f"the model bundle could not be loaded: {exc}") from None
        meta = self.bundle.metadata
        try:
            self.arch = meta.architecture
            self.spec = meta.preprocessing
            self.output_params = self.spec.target.reference_params
            self.fingerprint = TrainingFingerprint.from_dict(meta.fingerprint) if meta.fingerprint else None
        except (PreprocessError, TypeError, ValueError) as exc:
            raise SynthesisError(f"the model bundle's metadata is unusable: {exc}") from None
        if self.spec.size_multiple % self.arch.size_multiple:
            raise SynthesisError(
                f"the model bundle pads slices to multiples of {self.spec.size_multiple}, "
                f"but its generator needs multiples of {self.arch.size_multiple}"
            )
        available = self.heatmap_sources
        if heatmap_source is None:
            heatmap_source = available[0] if available else None
        elif heatmap_source not in heatmap_kinds.names():
            raise SynthesisError(f"unknown heatmap source {heatmap_source!r}; choose one of "
                                 f"{', '.join(heatmap_kinds.names())}")
        elif heatmap_source not in available:
            raise SynthesisError(f"this model has no {heatmap_source} map; it offers "
                                 f"{', '.join(available) or 'no heatmap'}")
        self.heatmap_source = heatmap_source
        self.batch_size = batch_size
        self.crop = crop and self.arch.g_norm in _CROP_SAFE_NORMS and self.arch.d2_norm in _CROP_SAFE_NORMS
        self.channels_last = channels_last
        # Preprocessing on the device only on CUDA (on the CPU the host path is ~3× faster); tests force it.
        self.device_preprocessing = self.device.type == "cuda" if device_preprocessing is None \
            else device_preprocessing
        self._blank: dict[tuple[str, str | None], tuple[float, float]] = {}
        # Inference copies with BatchNorm folded into the preceding conv (exact up to float rounding,
        # ~10 % faster on the CPU); the bundle's own modules are left as they are.
        self._generator = fold_batchnorm(self.bundle.generator)
        self._local = None if self.bundle.local_discriminator is None else fold_batchnorm(
            self.bundle.local_discriminator)
        self._move_to(self.device)

    # ---- properties the Slicer logic reads ----

    @property
    def metadata(self) -> BundleMetadata:
        return self.bundle.metadata

    @property
    def source_modality(self) -> str:
        return self.bundle.metadata.source_modality

    @property
    def target_modality(self) -> str:
        return self.bundle.metadata.target_modality

    @property
    def heatmap_sources(self) -> tuple[str, ...]:
        """The maps this bundle can produce, the preferred first (``BundleMetadata.heatmap_sources``)."""
        return self.bundle.metadata.heatmap_sources

    @property
    def has_heatmap(self) -> bool:
        return self.heatmap_source is not None

    @property
    def heatmap_units(self) -> str:
        """What the heatmap's values mean, for legends and file headers."""
        if self.heatmap_source is None:
            return ""
        units = heatmap_kinds.target_units(self.spec.target, self.target_modality)
        return heatmap_kinds.kind(self.heatmap_source).units(units)

    # ---- internals ----

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
    def error_calibration(self) -> ErrorCalibration:
        return self.bundle.metadata.error_calibration

    @property
    def _d2_stride(self) -> int:
        return self.arch.d2_downsampling if heatmap_kinds.needs_d2(self.heatmap_source) else 1

    def _blank_response(self, heatmap: str | None) -> tuple[float, float]:
        """(G, heatmap) at the centre of a blank slice wide enough that no edge reaches the centre."""
        key = (str(self.device), heatmap)
        if key not in self._blank:
            step = math.lcm(self.spec.size_multiple, self._d2_stride)
            size = step * math.ceil((2 * self.arch.receptive_margin(heatmap_kinds.needs_d2(heatmap)) + step) / step)
            channels = 2 * self.spec.context_slices + 1
            syn, heat = self._infer(np.zeros((1, channels, size, size), np.float32), heatmap)
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

    # ---- public ----

    def run(
        self,
        image: sitk.Image,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        heatmap: bool = True,
        *,
        mask: sitk.Image | None = None,
        source_modality: str | None = None,
        skull: str = "auto",
    ) -> SynthesisResult:
        """Synthesise ``image``. ``progress(fraction, message)`` is called as work advances; ``cancel()``
        is checked between batches and raises :class:`SynthesisCancelled`. ``mask``: outputs are set to
        the target's background (0, or -1024 HU for CT) and difficulty 0 outside it. ``source_modality``:
        what the caller knows the input is (a DICOM modality tag on the image is used otherwise).
        ``skull`` (:data:`brainmask.SKULL_HANDLING`): "strip" synthesises inside the brain only (``mask`` is
        the brain when given, else it is estimated), "auto" strips inside a given mask or a whole head a
        stripped-only model gets (``skull_policy.decide_skull``; ``result.notes`` says what was done).
        ``image`` itself is never modified."""
        start = time.perf_counter()
        report = progress or _noop_progress
        warnings: list[str] = []
        notes: list[str] = []
        try:
            check_skull(skull, ct=not self.strips_skulls)
        except BrainMaskError as exc:
            raise SynthesisError(str(exc)) from None

        def check_cancel() -> None:
            if cancel is not None and cancel():
                raise SynthesisCancelled("synthesis cancelled")

        check_cancel()
        if source_modality is None and isinstance(image, sitk.Image) and image.HasMetaDataKey(vio.DICOM_MODALITY_TAG):
            source_modality = image.GetMetaData(vio.DICOM_MODALITY_TAG)
        mismatch = modality_warning(source_modality, self.source_modality)
        if mismatch:
            warnings.append(mismatch)
        source = self.heatmap_source if heatmap else None
        if heatmap and source is None:
            warnings.append(
                f"this model ({self.bundle.metadata.variant}) has neither an expected-error head nor a trained "
                "local discriminator, so no heatmap was produced"
            )
        report(0.0, "Preparing the volume")
        try:
            validate_volume(image, "the input volume", spec=self.spec)
        except PreprocessError as exc:
            raise SynthesisError(str(exc).rstrip(".")) from None
        if mask is not None:
            self._check_mask(mask)
        prepared = None

        def input_ml() -> float:  # "auto" may look at the prepared input; it is kept when the head is kept
            nonlocal prepared
            prepared = self._prepare(image, validated=True)
            return foreground_ml(prepared)

        decision = decide_skull(skull, mask_given=mask is not None, ct=not self.strips_skulls,
                                fingerprint=self.fingerprint, input_ml=input_ml)  # skull_policy.py: the one rule
        brain = None
        if decision.strip:
            report(0.02, "Extracting the brain")
            try:
                brain = mask if mask is not None else estimate_brain_mask(image)
                stripped = strip(image, brain)  # a stripped copy: the caller's image stays as it was
            except BrainMaskError as exc:
                if not decision.fallible:
                    raise SynthesisError(str(exc)) from None
                # auto: the user did not ask for stripping, so a failed extraction keeps the head and says so
                warnings.append(f"the whole head was synthesised as it is, because {exc}")
                brain = None
            check_cancel()  # brain extraction takes 10-20 s: honour a cancel before preparing again
        if brain is not None:
            image, mask, prepared = stripped, brain, None
            notes.append(decision.note(volume_ml(brain)))
        elif not decision.strip:
            notes.append(decision.note())
        if prepared is None:
            prepared = self._prepare(image, validated=brain is None)
        context = prepared.context
        slice_has_fg = prepared.foreground.any(axis=(1, 2))
        indices = np.flatnonzero(slice_has_fg)
        if indices.size == 0:
            raise SynthesisError("the input volume has no foreground (no voxel brighter than the background)")
        y0, y1, x0, x1 = self._crop_box(prepared.foreground, source)
        check_cancel()
        report(_PREPARED, "Synthesising")
        # The out-of-distribution statistics, behind the networks when they run on a device (input_stats.py)
        stats = None if self.fingerprint is None else InputStats(
            prepared, self.spec.source, background=self.device.type != "cpu" or self.device_preprocessing)
        device_warnings: list[str] = []
        syn, diff = self._run_networks(prepared.slices, indices, (y0, y1, x0, x1), source,
                                       device_warnings, report, check_cancel)
        if stats is not None:  # warn, and still synthesise: the user decides
            warnings.extend(stats.warnings(self.fingerprint))
        warnings.extend(device_warnings)
        prepared.slices = None  # type: ignore[assignment]
        check_cancel()
        report(_NETWORKS_DONE, "Restoring the input's geometry")
        target = self.spec.target
        synthetic = restore_volume(syn, context, sitk.sitkLinear, self._blank_synthetic(source))
        del syn
        heat_image = None
        if diff is not None:
            # Outside the source's foreground there is nothing to trust or distrust: exactly 0, so the
            # overlay never tints empty space. Outside the processed box it is 0 already (heat_fill).
            box = (slice(int(indices[0]), int(indices[-1]) + 1), slice(y0, y1), slice(x0, x1))
            np.copyto(diff[box], 0.0, where=~prepared.foreground[box])
            ceiling = heatmap_kinds.kind(source).ceiling
            upper = float(np.finfo(np.float32).max) if ceiling is None else ceiling
            if not context.resampled:  # restoring only moves voxels: clamp the array in place, no image copy
                np.clip(diff, 0.0, upper, out=diff)
            heat_image = restore_volume(diff, context, sitk.sitkLinear, 0.0)
            del diff
            if context.resampled:
                heat_image = sitk.Clamp(heat_image, sitk.sitkFloat32, 0.0, upper)
        prepared.foreground = None  # type: ignore[assignment]
        if mask is not None:
            synthetic, heat_image = self._apply_mask(mask, synthetic, heat_image, target.background_value)
        report(1.0, "Done")
        return SynthesisResult(synthetic, heat_image, warnings, str(self.device),
                               time.perf_counter() - start, self.target_modality,
                               source if heat_image is not None else None,
                               self.heatmap_units if heat_image is not None else "", notes)

    def _prepare(self, image: sitk.Image, validated: bool = False) -> PreparedVolume:
        """``validated``: :meth:`run` has just validated ``image`` with the bundle's spec (naming it)."""
        try:
            if self.device_preprocessing:  # the slices stay on the device for the networks
                return prepare_volume_on_device(image, self.spec, self.device, role="source", validated=validated)
            return prepare_volume(image, self.spec, role="source", validated=validated)
        except PreprocessError as exc:
            raise SynthesisError(str(exc).rstrip(".")) from None

    @property
    def strips_skulls(self) -> bool:
        """Whether skull stripping applies: brain MRI in and out (not CT, whose HU need the skull and body)."""
        return not (self.spec.source.absolute_units or self.spec.target.absolute_units)

    def run_array(self, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                  direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), **kwargs) -> SynthesisResult:
        """:meth:`run` on a ``[k, j, i]`` array with its geometry (LPS, as ITK)."""
        try:
            image = vio.array_to_image(array, spacing, origin, direction)
        except ValueError as exc:
            raise SynthesisError(str(exc)) from None
        return self.run(image, **kwargs)

    def _blank_synthetic(self, heatmap: str | None) -> float:
        """G's output on empty input, in target units: the synthetic volume's value outside the processed region."""
        return float(self.spec.target.inverse(np.float32(self._blank_response(heatmap)[0]), self.output_params))

    def _run_networks(self, slices, indices, box, heatmap, warnings, report, check_cancel):
        """G (and the heatmap) on ``indices`` inside ``box``. Elsewhere the synthetic holds G's blank response and
        the heatmap 0: it is zeroed outside the foreground anyway, and the foreground lies inside the box."""
        y0, y1, x0, x1 = box
        k, h, w = slices.shape
        target = self.spec.target
        syn = np.empty((k, h, w), np.float32)
        syn.fill(self._blank_synthetic(heatmap))
        diff = np.zeros((k, h, w), np.float32) if heatmap else None  # no pass over the array (calloc)
        batch = self._batch_size_for((y1 - y0) * (x1 - x0))
        done = 0
        while done < indices.size:
            check_cancel()
            idx = indices[done : done + batch]
            try:
                stack = slice_stack(slices, idx, self.spec.context_slices)[:, :, y0:y1, x0:x1]
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
            report(_PREPARED + (_NETWORKS_DONE - _PREPARED) * done / indices.size,
                   f"Synthesised {done}/{indices.size} slices")
        return syn, diff

    @staticmethod
    def _check_mask(mask: sitk.Image) -> None:
        try:
            validate_volume(mask, "the mask", allow_constant=True)
        except PreprocessError as exc:
            raise SynthesisError(str(exc).rstrip(".")) from None
        if mask.GetNumberOfComponentsPerPixel() != 1:
            raise SynthesisError("the mask must be a scalar label volume")

    @staticmethod
    def _apply_mask(mask, synthetic, heat_image, background):
        try:
            binary = mask_on_grid(mask, synthetic)
        except BrainMaskError as exc:
            raise SynthesisError(str(exc)) from None
        synthetic = sitk.Mask(synthetic, binary, outsideValue=float(background))
        if heat_image is not None:
            heat_image = sitk.Mask(heat_image, binary, outsideValue=0.0)
        return synthetic, heat_image


# ----------------------------------------------------------------------------- files


def synthesize_file(
    input: str | Path,
    output: str | Path | None,
    heatmap_path: str | Path | None = None,
    *,
    engine: SynthesisEngine | None = None,
    model: str | Path = DEFAULT_MODEL,
    device: str = "auto",
    batch_size: int | None = None,
    mask: str | Path | sitk.Image | None = None,
    png: str | Path | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    source_modality: str | None = None,
    dicom: DicomRequest | None = None,
    series_uid: str | None = None,
    skull: str = "auto",
) -> SynthesisResult:
    """Read ``input`` (file or DICOM folder; ``series_uid`` picks one of several series), synthesise,
    write ``output`` (and the heatmap, the overview PNG, a DICOM export folder). Every file is written
    under a temporary name and renamed only when all are done: a cancel or a failure leaves nothing.
    Existing outputs are refused unless ``overwrite``."""
    output = None if output is None else Path(output)
    outputs = vio.AtomicOutputs(overwrite)
    wanted = [p for p in (output, heatmap_path, png) if p is not None]
    if not wanted and dicom is None:
        raise SynthesisError("no output was asked for; give an output file or a DICOM export folder")
    if dicom is not None:
        check_dicom_request(dicom, input, outputs)
    for path in wanted:
        outputs.check(Path(path), (".png",) if path is png else vio.VOLUME_SUFFIXES)
    if len({Path(p).resolve() for p in wanted}) != len(wanted):
        raise SynthesisError("the synthetic, heatmap and PNG outputs must be different files")
    if Path(input).resolve() in {Path(p).resolve() for p in wanted}:
        raise SynthesisError("an output path is the input volume itself")
    if engine is None:
        engine = SynthesisEngine(model, device=device, batch_size=batch_size)
    if heatmap_path is not None and not engine.has_heatmap:
        raise SynthesisError(
            f"this model ({engine.metadata.variant}) has neither an expected-error head nor a trained local "
            "discriminator, so it cannot write a heatmap"
        )
    try:
        image = vio.read_volume(input, series_uid)
        mask_image = vio.read_volume(mask) if isinstance(mask, str | Path) else mask
    except vio.VolumeReadError as exc:
        raise SynthesisError(str(exc)) from None
    report = progress or _noop_progress
    result = engine.run(
        image,
        progress=lambda f, m: report(0.95 * f, m if f < 1.0 else "Synthesised"),  # one "Done", at the very end
        cancel=cancel,
        heatmap=heatmap_path is not None or png is not None or (dicom is not None and engine.has_heatmap),
        mask=mask_image,
        source_modality=source_modality,
        skull=skull,
    )
    if cancel is not None and cancel():
        raise SynthesisCancelled("synthesis cancelled")
    report(0.95, "Writing")
    with outputs.transaction():
        if output is not None:
            outputs.write_image(result.synthetic, output)
        if heatmap_path is not None:
            outputs.write_heatmap(result.heatmap, Path(heatmap_path), result.heatmap_units, result.heatmap_source)
        if png is not None:
            from ..imaging.overview import overview_image

            figure = overview_image(image, result.synthetic, result.heatmap, result.heatmap_units,
                                    result.heatmap_source)
            outputs.write_image(figure, Path(png), (".png",))
        if dicom is not None:
            write_dicom(dicom, outputs, input, series_uid, result, engine)
        if cancel is not None and cancel():
            raise SynthesisCancelled("synthesis cancelled")
    report(1.0, "Done")
    return result
