"""A multi-input model's other inputs in the engine: checked against the declaration, brought onto the reference
input's grid, prepared exactly like the reference, and compared with their own training fingerprints.

The reference input (``InputDeclaration.reference``) is the image the engine synthesises; the outputs are on its
grid. Every other input given (contrast → image) goes through:

1. :func:`checked_others`: the names against the bundle's declaration (``InputDeclaration.check_given``: an
   unknown contrast, one given twice, one the model does not read, a required one missing: one sentence naming
   the input); a one-input model given others is refused naming them;
2. :func:`onto_reference`: the one function that brings them onto the reference's grid. Here plain physical-
   space resampling (linear, 0 outside, the background of every MRI mapping); the registration and the overlap
   refusals of ``imaging/input_alignment.py`` replace it;
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


def onto_reference(reference: sitk.Image, others: Mapping[str, sitk.Image]) -> tuple[dict[str, sitk.Image],
                                                                                     list[str]]:
    """(every other input on ``reference``'s grid, notes saying what was done). The one seam where inputs are
    aligned: plain resampling in physical space (linear, 0 outside), for inputs of one study in one frame."""
    placed, notes = {}, []
    for name, image in others.items():
        try:
            validate_volume(image, f"the {name} input")
        except PreprocessError as exc:
            raise SynthesisError(str(exc).rstrip(".")) from None
        image = sitk.Cast(image, sitk.sitkFloat32) if image.GetPixelID() != sitk.sitkFloat32 else image
        same = (image.GetSize() == reference.GetSize() and np.allclose(image.GetSpacing(), reference.GetSpacing())
                and np.allclose(image.GetOrigin(), reference.GetOrigin())
                and np.allclose(image.GetDirection(), reference.GetDirection()))
        if same:
            image = sitk.Image(image)
            image.CopyInformation(reference)
        else:
            image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            if not sitk.GetArrayViewFromImage(image).any():
                raise SynthesisError(f"the {name} input does not overlap the reference input in physical space; "
                                     "is it from this study?")
            notes.append(f"the {name} input was resampled onto the reference input's grid")
        placed[name] = image
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
