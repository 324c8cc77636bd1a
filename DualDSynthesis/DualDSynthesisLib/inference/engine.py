"""Synthesis engine: a source volume in, the synthetic volume and D2's difficulty heatmap out, on its exact grid.

Pipeline (one call of :meth:`SynthesisEngine.run`):

1. ``preprocess.prepare_volume`` with the bundle's recorded :class:`PreprocessingSpec` (reorient to
   the canonical orientation, resample in-plane to the training spacing when it differs, intensity
   mapping, padding), exactly as in training.
2. G, then D2 on G's output, slice by slice in batches under ``torch.inference_mode`` (bf16/fp16
   autocast on CUDA). The heatmap is ``1 − sigmoid(D2(G(x)))`` brought to the slice grid with
   ``losses.confidence_to_grid``: the shipped D2 itself, never an approximation.
3. Back to target units with the target mapping's ``inverse`` and the bundle's reference parameters (HU for
   CT; for MRI the median intensity scale of the training targets), then ``preprocess.restore_volume``
   undoes padding, resampling and reorientation: both outputs are on exactly the input's grid (float32).

Speed without changing what the networks compute where it matters (crop, skip empty slices, fill the rest
with the networks' response to a blank input): ``network_pass.py``. Memory: the prepared slices and the two
output arrays are allocated once; the input slices are released before the outputs are restored, each output
array as soon as its image exists. Files: ``network_pass.py`` (the networks), ``outputs.py`` (restoring, the
output checks), ``multi_input.py`` (a multi-input model's other inputs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..core.vocabulary import modality_warning
from ..imaging import heatmap_kinds
from ..imaging import io as vio
from ..imaging.brainmask import BrainMaskError, estimate_brain_mask, strip, volume_ml
from ..imaging.bundle import BundleError, BundleMetadata, ModelBundle, load_bundle
from ..imaging.calibration import ErrorCalibration
from ..imaging.concurrent_writes import side_by_side
from ..imaging.defaults import DEFAULT_MODEL
from ..imaging.device_prepare import prepare_volume_on_device
from ..imaging.devices import DeviceError, resolve_device
from ..imaging.fingerprint import TrainingFingerprint, foreground_ml
from ..imaging.preprocess import PreparedVolume, PreprocessError, prepare_volume, validate_volume
from ..imaging.skull_policy import check_skull, decide_skull
from . import multi_input as multi
from .contract import CancelCallback, ProgressCallback, SynthesisCancelled, SynthesisError, SynthesisResult
from .input_stats import InputStats
from .network_pass import NETWORKS_DONE, PREPARED, NetworkPass, fold_batchnorm
from .outputs import apply_mask, check_mask, check_output_paths, constant_value, restore_outputs, write_overview

if TYPE_CHECKING:
    from ..imaging.dicom_export import DicomRequest
    from ..model.inputs import InputDeclaration

__all__ = ["DEFAULT_MODEL", "SynthesisCancelled", "SynthesisEngine", "SynthesisError", "SynthesisResult",
           "modality_warning", "synthesize_file"]

_CROP_SAFE_NORMS = ("batch", "none")


def _noop_progress(_fraction: float, _message: str) -> None:
    return None


# ----------------------------------------------------------------------------- engine


class SynthesisEngine(NetworkPass):
    """Loads a model bundle once and synthesises any number of volumes with it.

    ``bundle``: a ``.safetensors`` path (folded in place) or a loaded :class:`ModelBundle` (left untouched:
    the engine runs BatchNorm-folded copies of its networks). ``device``: ``auto`` (CUDA, then MPS, then
    CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
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
        self.heatmap_source = self._chosen_heatmap_source(heatmap_source)
        self.batch_size = batch_size
        self.crop = crop and self.arch.g_norm in _CROP_SAFE_NORMS and self.arch.d2_norm in _CROP_SAFE_NORMS
        self.channels_last = channels_last
        # Preprocessing on the device only on CUDA (on the CPU the host path is ~3× faster); tests force it.
        self.device_preprocessing = self.device.type == "cuda" if device_preprocessing is None \
            else device_preprocessing
        self._blank: dict[tuple[str | bool | None, ...], tuple[float, float]] = {}
        # BatchNorm folded into the preceding conv (exact up to float rounding, ~10 % faster on the CPU): in
        # copies when the caller gave a loaded bundle (left as it is), in place when the engine loaded it.
        own = self.bundle_path is not None
        self._generator = fold_batchnorm(self.bundle.generator, in_place=own)
        self._local = None if self.bundle.local_discriminator is None else fold_batchnorm(
            self.bundle.local_discriminator, in_place=own)
        self._move_to(self.device)

    def _chosen_heatmap_source(self, heatmap_source: str | None) -> str | None:
        """The map asked for, or the bundle's preferred one (None: it offers none)."""
        available = self.heatmap_sources
        if heatmap_source is None:
            heatmap_source = available[0] if available else None
        elif heatmap_source not in heatmap_kinds.names():
            raise SynthesisError(f"unknown heatmap source {heatmap_source!r}; choose one of "
                                 f"{', '.join(heatmap_kinds.names())}")
        elif heatmap_source not in available:
            raise SynthesisError(f"this model has no {heatmap_source} map; it offers "
                                 f"{', '.join(available) or 'no heatmap'}")
        return heatmap_source

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
    def no_heatmap_reason(self) -> str:
        """Why a model without a heatmap has none: one clause, shared by the engine's and the CLI's sentences."""
        return (f"({self.metadata.variant}) has neither an expected-error head nor a trained local "
                "discriminator")

    @property
    def heatmap_units(self) -> str:
        """What the heatmap's values mean, for legends and file headers."""
        if self.heatmap_source is None:
            return ""
        units = heatmap_kinds.target_units(self.spec.target, self.target_modality)
        return heatmap_kinds.kind(self.heatmap_source).units(units)

    # ---- internals ----

    @property
    def error_calibration(self) -> ErrorCalibration:
        return self.bundle.metadata.error_calibration

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
        others: Mapping[str, sitk.Image] | None = None,
    ) -> SynthesisResult:
        """Synthesise ``image``, the reference input (``others``: a multi-input model's other inputs, any grid:
        ``multi_input.py``). ``progress(fraction, message)`` is called as work advances; ``cancel()`` is checked
        between batches and raises :class:`SynthesisCancelled`. ``mask``: outputs are set to the target's
        background (0, or -1024 HU for CT) and difficulty 0 outside it. ``source_modality``: what the caller
        knows the input is (else a DICOM modality tag on the image). ``skull`` (``vocabulary.SKULL_HANDLING``):
        "strip" synthesises inside the brain only (``mask`` is the brain when given, else it is estimated),
        "auto" strips inside a given mask or a whole head a stripped-only model gets (``skull_policy``;
        ``result.notes`` says what was done). ``image`` is never modified; once prepared the engine holds no
        reference to it, so a caller that handed it over gets its memory back before the networks run."""
        start = time.perf_counter()
        report = progress or _noop_progress
        warnings: list[str] = []
        notes: list[str] = []
        try:
            check_skull(skull, ct=not self.strips_skulls)
        except BrainMaskError as exc:
            raise SynthesisError(str(exc)) from None
        others = multi.checked_others(self.metadata.inputs, others)  # named refusals before any work

        def check_cancel() -> None:
            if cancel is not None and cancel():
                raise SynthesisCancelled("synthesis cancelled")

        check_cancel()
        source = self._request_warnings(image, heatmap, source_modality, warnings)
        report(0.0, "Preparing the volume")
        prepared, mask, others = self._prepare_input(image, mask, skull, warnings, notes, report, check_cancel,
                                                     others)
        del image
        outputs, box = self._network_step(prepared, source, warnings, report, check_cancel, others)
        check_cancel()
        report(NETWORKS_DONE, "Restoring the input's geometry")
        given = tuple(name in others for name in self.metadata.inputs.optional)
        synthetic, heat_image = restore_outputs(outputs, prepared, box, source, self._blank_synthetic(source, given))
        if mask is not None:
            try:
                synthetic, heat_image = apply_mask(mask, synthetic, heat_image, self.spec.target.background_value)
            except BrainMaskError as exc:
                raise SynthesisError(str(exc)) from None
        report(1.0, "Done")
        return SynthesisResult(synthetic, heat_image, warnings, str(self.device),
                               time.perf_counter() - start, self.target_modality,
                               source if heat_image is not None else None,
                               self.heatmap_units if heat_image is not None else "", notes)

    def _request_warnings(self, image: sitk.Image, heatmap: bool, source_modality: str | None,
                          warnings: list[str]) -> str | None:
        """The heatmap source to run (None: no heatmap), after warning about the input's modality and a
        heatmap the model cannot make."""
        if source_modality is None and isinstance(image, sitk.Image) and image.HasMetaDataKey(vio.DICOM_MODALITY_TAG):
            source_modality = image.GetMetaData(vio.DICOM_MODALITY_TAG)
        mismatch = modality_warning(source_modality, self.source_modality)
        if mismatch:
            warnings.append(mismatch)
        source = self.heatmap_source if heatmap else None
        if heatmap and source is None:
            warnings.append(f"this model {self.no_heatmap_reason}, so no heatmap was produced")
        return source

    def _prepare_input(self, image: sitk.Image, mask: sitk.Image | None, skull: str, warnings: list[str],
                       notes: list[str], report: ProgressCallback, check_cancel: Callable[[], None],
                       others: Mapping[str, sitk.Image]) -> tuple[PreparedVolume, sitk.Image | None,
                                                                  dict[str, PreparedVolume]]:
        """(the prepared input, the mask to apply to the outputs, the other inputs prepared on its grid):
        validation, the other inputs onto the input's grid, the skull handling (of every input), preparation."""
        try:
            validate_volume(image, "the input volume", spec=self.spec)
        except PreprocessError as exc:
            raise SynthesisError(str(exc).rstrip(".")) from None
        others, placed = multi.onto_reference(image, others, self.metadata.inputs.reference)
        notes.extend(placed)
        if mask is not None:
            check_mask(mask, image, warnings, notes)
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
            others = {name: strip(other, brain) for name, other in others.items()}  # the same brain for every input
            notes.append(decision.note(volume_ml(brain)))
        elif not decision.strip:
            notes.append(decision.note())
        if prepared is None:
            try:
                prepared = self._prepare(image, validated=brain is None)
            except SynthesisError as exc:
                if brain is None:
                    raise
                raise SynthesisError(f"inside the brain mask the input is empty ({exc}); check that the mask "
                                     "belongs to this volume, or use --skull keep to only blank outside it") from None
        return prepared, mask, multi.prepare_others(others, prepared, self.spec)

    def _network_step(self, prepared: PreparedVolume, source: str | None, warnings: list[str],
                      report: ProgressCallback, check_cancel: Callable[[], None],
                      others: Mapping[str, PreparedVolume],
                      ) -> tuple[dict[str, np.ndarray | None], tuple[slice, slice, slice]]:
        """The networks over ``prepared``'s foreground slices (with the other inputs' slices), with every input's
        statistics and the synthetic's sanity check: ({"synthetic", "heatmap"} arrays on the prepared grid, the
        processed box)."""
        slice_has_fg = prepared.foreground.any(axis=(1, 2))
        indices = np.flatnonzero(slice_has_fg)
        if indices.size == 0:
            raise SynthesisError("the input volume has no foreground (no voxel brighter than the background)")
        y0, y1, x0, x1 = self._crop_box(prepared.foreground, source)
        check_cancel()
        report(PREPARED, "Synthesising")
        # The out-of-distribution statistics, behind the networks when they run on a device (input_stats.py)
        stats = None if self.fingerprint is None else InputStats(
            prepared, self.spec.source, background=self.device.type != "cpu" or self.device_preprocessing)
        device_warnings: list[str] = []
        syn, diff = self._run_networks(prepared.slices, indices, (y0, y1, x0, x1), source,
                                       device_warnings, report, check_cancel,
                                       multi.input_volumes(self.metadata.inputs, others))
        if stats is not None:  # warn, and still synthesise: the user decides
            warnings.extend(stats.warnings(self.fingerprint))
        warnings.extend(multi.other_warnings(self.fingerprint, others, self.spec))
        warnings.extend(device_warnings)
        prepared.slices = None  # type: ignore[assignment]
        value = constant_value(syn, prepared.foreground, indices, (y0, y1, x0, x1))
        if value is not None:
            warnings.append(f"the synthetic image is {value:g} everywhere inside the input's foreground, so the model "
                            "produced no image (is it trained?); do not use this result")
        box = (slice(int(indices[0]), int(indices[-1]) + 1), slice(y0, y1), slice(x0, x1))
        return {"synthetic": syn, "heatmap": diff}, box

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
    others: Mapping[str, str | Path] | None = None,
) -> SynthesisResult:
    """Read ``input`` (file or DICOM folder; ``series_uid`` picks one of several series) and a multi-input model's
    ``others`` (contrast → file), synthesise, write ``output`` (and the heatmap, the overview PNG, a DICOM export
    folder), each under a temporary name renamed when all are done: a cancel or a failure leaves nothing."""
    output = None if output is None else Path(output)
    outputs = vio.AtomicOutputs(overwrite)
    check_output_paths(input, output, heatmap_path, png, dicom, outputs, others)
    if engine is None:
        engine = SynthesisEngine(model, device=device, batch_size=batch_size)
    if heatmap_path is not None and not engine.has_heatmap:
        raise SynthesisError(f"this model {engine.no_heatmap_reason}, so it cannot write a heatmap")
    images, mask_image, other_images = _read_inputs(input, series_uid, mask, engine.metadata.inputs, others)
    report = progress or _noop_progress
    source = images[0] if png is not None else None  # the overview shows it; else the engine frees it once prepared
    result = engine.run(
        images.pop(),  # handed over: this frame keeps no reference
        progress=lambda f, m: report(0.95 * f, m if f < 1.0 else "Synthesised"),  # one "Done", at the very end
        cancel=cancel, mask=mask_image, source_modality=source_modality, skull=skull, others=other_images,
        heatmap=heatmap_path is not None or png is not None or (dicom is not None and engine.has_heatmap),
    )
    if cancel is not None and cancel():
        raise SynthesisCancelled("synthesis cancelled")
    report(0.95, "Writing")
    with outputs.transaction():
        writes = [] if output is None else [lambda: outputs.write_image(result.synthetic, output)]
        if heatmap_path is not None:
            writes.append(lambda: outputs.write_heatmap(result.heatmap, Path(heatmap_path), result.heatmap_units,
                                                        result.heatmap_source))
        side_by_side(writes)
        if png is not None:
            write_overview(outputs, Path(png), source, result)
        if dicom is not None:
            from ..imaging import dicom_export  # pydicom takes ~0.5 s to import: only a DICOM export needs it

            dicom_export.write_dicom(dicom, outputs, input, series_uid, result, engine)
        if cancel is not None and cancel():
            raise SynthesisCancelled("synthesis cancelled")
    report(1.0, "Done")
    return result


def _read_inputs(input: str | Path, series_uid: str | None, mask: str | Path | sitk.Image | None,
                 inputs: InputDeclaration, others: Mapping[str, str | Path] | None,
                 ) -> tuple[list[sitk.Image], sitk.Image | None, dict[str, sitk.Image]]:
    """([the input volume], the mask image, the other inputs) read from files; a list, so that the caller can hand
    the volume over. The other inputs' names are checked against the model's before any file is read."""
    multi.checked_others(inputs, others)
    try:
        images = [vio.read_volume(input, series_uid)]
        mask_image = vio.read_volume(mask) if isinstance(mask, str | Path) else mask
    except vio.VolumeReadError as exc:
        raise SynthesisError(str(exc)) from None
    return images, mask_image, multi.read_others(others)
