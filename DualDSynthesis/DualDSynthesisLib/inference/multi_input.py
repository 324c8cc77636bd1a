"""A multi-input model's other inputs in the engine: checked against the declaration, brought onto the reference
input's grid, prepared exactly like the reference, and compared with their own training fingerprints.

The reference input (``InputDeclaration.reference``) is the image the engine synthesises; the outputs are on its
grid. Every other input given (contrast → image) goes through:

1. :func:`checked_others`: the names against the bundle's declaration (``InputDeclaration.check_given``: an
   unknown contrast, one given twice, one the model does not read, a required one missing: one sentence naming
   the input); a one-input model given others is refused naming them;
2. :func:`onto_reference`: the one function that brings them onto the reference's grid, through
   ``imaging/input_alignment.align_inputs`` (resampling; a rigid registration when the frames of reference differ
   or the inputs are misaligned; refusals naming the input: no overlap, another patient, too small a field);
3. :func:`prepare_others`: each onto the reference's *prepared* grid (the same reorientation, in-plane
   resampling and padding; ``preprocess.prepare_on_grid``), normalised by itself with the bundle's source
   mapping, as in training. The networks then read the same crop box and slices of every input.

Torch-free (numpy, SimpleITK): the network pass moves the prepared slices to the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.vocabulary import canonical_contrast
from ..imaging.fingerprint import FingerprintError, TrainingFingerprint, ood_warnings, volume_stats
from ..imaging.input_alignment import ON_REFERENCE_GRID, InputAlignmentError, align_inputs
from ..imaging.preprocess import PreparedVolume, PreprocessError, PreprocessingSpec, prepare_on_grid, validate_volume
from ..model.inputs import InputDeclaration, InputError
from .contract import SynthesisError


def checked_others(inputs: InputDeclaration, others: Mapping[str, sitk.Image] | None) -> dict[str, sitk.Image]:
    """``others`` keyed by canonical contrast, in declaration order; :class:`SynthesisError` naming the input
    for anything the declaration does not accept (the reference itself given again included)."""
    others = dict(others or {})
    if len(inputs) == 1 and others:
        extra = ", ".join(others)
        raise SynthesisError(f"this model reads only {inputs.reference}; it does not use the {extra} input"
                             f"{'s' if len(others) > 1 else ''}")
    try:
        names = inputs.check_given([inputs.reference, *others])
    except InputError as exc:
        raise SynthesisError(str(exc).rstrip(".")) from None
    by_name = {canonical_contrast(n): image for n, image in others.items()}
    return {name: by_name[name] for name in names[1:]}


def read_others(paths: Mapping[str, str | Path] | None) -> dict[str, sitk.Image]:
    """The other inputs' files read (file or DICOM folder), a problem naming the input."""
    from ..imaging import io as vio

    images = {}
    for name, path in (paths or {}).items():
        try:
            images[name] = vio.read_volume(path)
        except vio.VolumeReadError as exc:
            raise SynthesisError(f"the {name} input: {str(exc).rstrip('.')}") from None
    return images


FRAME_OF_REFERENCE_TAG = "0020|0052"  # DICOM FrameOfReferenceUID, kept on an image read from a series


def _frame(image: sitk.Image) -> str | None:
    if not image.HasMetaDataKey(FRAME_OF_REFERENCE_TAG):
        return None
    return image.GetMetaData(FRAME_OF_REFERENCE_TAG).strip() or None


def onto_reference(reference: sitk.Image, others: Mapping[str, sitk.Image],
                   reference_name: str = "reference") -> tuple[dict[str, sitk.Image], list[str]]:
    """(every other input on ``reference``'s grid, notes saying what was done). The one seam where inputs are
    aligned: ``imaging/input_alignment.align_inputs`` resamples each onto the reference grid, registers it
    rigidly first when their DICOM frames of reference differ or a quick check finds it misaligned, and refuses
    (naming it) an input that does not overlap, fails the registration's quality check (another patient) or
    covers too little of the head. An input already on the reference grid is taken as it is."""
    if not others:
        return {}, []
    for name, image in others.items():
        try:
            validate_volume(image, f"the {name} input")
        except PreprocessError as exc:
            raise SynthesisError(str(exc).rstrip(".")) from None
    images = {reference_name: reference, **others}
    try:
        aligned = align_inputs(reference_name, images, {name: _frame(image) for name, image in images.items()})
    except InputAlignmentError as exc:
        raise SynthesisError(str(exc).rstrip(".")) from None
    placed = {name: aligned[name].image for name in others}
    notes = [f"the {name} input: {aligned[name].note}" for name in others if aligned[name].note != ON_REFERENCE_GRID]
    return placed, notes


def prepare_others(others: Mapping[str, sitk.Image], prepared: PreparedVolume,
                   spec: PreprocessingSpec) -> dict[str, PreparedVolume]:
    """Each other input (on the reference's original grid) on the reference's prepared grid, normalised."""
    out = {}
    for name, image in others.items():
        try:
            out[name] = prepare_on_grid(image, prepared, spec, "source", sitk.sitkLinear)
        except PreprocessError as exc:
            raise SynthesisError(f"the {name} input cannot be prepared: {str(exc).rstrip('.')}") from None
    return out


def other_warnings(fingerprint: TrainingFingerprint | None, prepared: Mapping[str, PreparedVolume],
                   spec: PreprocessingSpec) -> list[str]:
    """The out-of-distribution warnings of each other input against its own training fingerprint, each naming
    the input (an input the model recorded no fingerprint of is not compared)."""
    warnings: list[str] = []
    recorded = dict(fingerprint.others) if fingerprint is not None else {}
    for name, volume in prepared.items():
        if name not in recorded:
            continue
        try:
            found = ood_warnings(recorded[name], volume_stats(volume, spec.source))
        except FingerprintError as exc:
            found = [str(exc)]
        warnings.extend(f"the {name} input: {w[0].lower()}{w[1:].rstrip('.')}" for w in found)
    return warnings


def input_volumes(inputs: InputDeclaration, prepared: Mapping[str, PreparedVolume]) -> list[np.ndarray | None]:
    """The other inputs' prepared slices in declaration order (None: not given), for the network pass."""
    return [prepared[name].slices if name in prepared else None for name in inputs.names[1:]]
