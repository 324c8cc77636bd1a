"""One patient's input volumes, as they come, on the reference input's grid (issue 23: multi-sequence input).

The contrasts of one study come on different grids (resolution, slice thickness, orientation) and sometimes
from different frames of reference. :func:`align_inputs` brings every input onto the reference input's grid:

1. an input whose frame of reference (DICOM ``FrameOfReferenceUID``) differs from the reference's is always
   registered (rigid, Mattes mutual information; :mod:`rigid_registration`);
2. otherwise (same frame, or unknown as for NIfTI) its field must overlap the reference's, and a quick check on
   4 mm grids (is the identity better than ±3 mm / ±3° trial poses?) decides whether to register it;
3. the result must pass a quality check — the Dice of both heads and how well their edges line up, on 2 mm
   grids — or the input is refused as another patient's scan (in one frame, an input that fails is registered
   once more from its head's centroid and checked again), and its field must cover at least
   :data:`MIN_COVERED` of the reference's head;
4. it is resampled (linear) onto the reference grid; outside its field the value is its own background.

Every refusal is an :class:`InputAlignmentError` whose one sentence names the input. Nothing is written: the
caller gets :class:`AlignedInputs` (the images and a note per input saying what was done) or the error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..core.errors import DualDError
from . import rigid_registration as rr
from .grid import Grid

# The quality check, measured by benchmarks/align_thresholds.py on ../shared/data/brain-mri (8 subjects, 5 sources;
# each subject's T1 the reference): one head — its FLAIR and T2 as shipped (co-registered) and moved 3-6 mm /
# 2-5 degrees onto a 0.9x0.9x3 mm grid, 32 pairs — against another patient's FLAIR after a rigid registration
# (56 pairs, every ordered pair of subjects). Edge alignment: one head 0.629-0.926 (lowest: BraTS-GLI T1/FLAIR),
# another patient 0.348-0.551 (highest: two whole heads against TCGA's brain). Head Dice: one head 0.948-0.994,
# another patient 0.569-0.957: Dice alone cannot tell them apart (brains in one atlas space overlap well), it
# guards against registrations that end half off the head. Normalised mutual information, tried first, could not
# either (an earlier run over 5 subjects: one head 1.046-1.155, another patient 1.017-1.101).
MIN_DICE = 0.90
MIN_EDGES = 0.58
# A model reads every contrast at every voxel: an input that misses much of the reference's head leaves the
# synthesis there to the other inputs alone, so below this fraction of the head it is refused.
MIN_COVERED = 0.5


ON_REFERENCE_GRID = "on the reference grid"  # the note of an input taken as it is (nothing worth telling the user)


class InputAlignmentError(DualDError):
    """An input cannot be put on the reference grid (no overlap, another patient, too small a field)."""


@dataclass(frozen=True)
class AlignedInput:
    """One input on the reference grid: ``image`` (float32), the ``note`` saying what was done, the fraction of
    the reference's head its field ``covered``, and the rigid ``transform`` (reference → input) if registered."""

    name: str
    image: sitk.Image
    note: str
    covered: float
    transform: sitk.Euler3DTransform | None = None
    similarity: rr.Similarity | None = None

    @property
    def registered(self) -> bool:
        return self.transform is not None


@dataclass(frozen=True)
class AlignedInputs:
    """Every input on the reference input's grid, in the order given (the reference's own entry included)."""

    reference: str
    inputs: dict[str, AlignedInput]

    def __getitem__(self, name: str) -> AlignedInput:
        return self.inputs[name]

    @property
    def images(self) -> dict[str, sitk.Image]:
        return {name: a.image for name, a in self.inputs.items()}

    def arrays(self) -> dict[str, np.ndarray]:
        """``[k, j, i]`` float32 arrays on the reference grid, by input name."""
        return {name: sitk.GetArrayFromImage(a.image) for name, a in self.inputs.items()}

    def notes(self) -> list[str]:
        """One line per input: ``"<name>: <note>"``."""
        return [f"{name}: {a.note}" for name, a in self.inputs.items()]


def align_inputs(
    reference_name: str,
    images: Mapping[str, sitk.Image],
    frames: Mapping[str, str | None] | None = None,
    say: Callable[[str], None] | None = None,
) -> AlignedInputs:
    """``images`` (name → volume) on the grid of ``images[reference_name]``; ``frames``: each input's DICOM
    FrameOfReferenceUID when known (missing or None: unknown, e.g. NIfTI); ``say`` gets each input's note line.
    Raises :class:`InputAlignmentError` naming the first input that cannot be aligned."""
    if reference_name not in images:
        raise InputAlignmentError(f"the reference input {reference_name} is not among the inputs "
                                  f"({', '.join(images)}).")
    for name, image in images.items():
        _check_volume(name, image)
    reference = sitk.Cast(images[reference_name], sitk.sitkFloat32)
    if not rr.head(rr.on_grid(reference, rr.check_grid(reference, rr.FINE_MM))).any():
        raise InputAlignmentError(f"the reference input {reference_name} has no foreground (no voxel above "
                                  "the background), so nothing can be aligned to it.")
    frames = frames or {}
    aligned = {}
    for name, image in images.items():
        if name == reference_name:
            aligned[name] = AlignedInput(name, reference, "the reference (its grid is the output grid)", 1.0)
        else:
            same_frame = frames.get(name) is None or frames.get(reference_name) is None or (
                frames[name] == frames[reference_name])
            aligned[name] = _align_one(name, image, reference_name, reference, same_frame)
        if say is not None:
            say(f"{name}: {aligned[name].note}")
    return AlignedInputs(reference_name, aligned)


def _check_volume(name: str, image: sitk.Image) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputAlignmentError(f"input {name} is not a scalar 3-D volume ({image.GetDimension()}-D, "
                                  f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel).")


def _align_one(name: str, image: sitk.Image, ref_name: str, reference: sitk.Image,
               same_frame: bool) -> AlignedInput:
    """One input checked, registered if needed, and resampled onto ``reference``'s grid (or refused)."""
    moving = sitk.Cast(image, sitk.sitkFloat32)
    if same_frame and not _overlaps(moving, reference):
        raise InputAlignmentError(f"input {name} does not overlap the reference input {ref_name}: their fields "
                                  "share no point in the scanner's coordinates.")
    pair = rr.Pair(reference, moving)
    register = not same_frame or rr.misalignment(pair) > rr.CHECK_MARGIN
    transform = _registered(name, ref_name, pair, same_frame) if register else None
    quality = rr.similarity(pair, transform)
    if same_frame and not _passes(quality):
        # grossly misaligned in one frame (the quick check and a search from the identity only see small moves):
        # once more from the better of the identity and the head centroids superposed
        transform = _registered(name, ref_name, pair, same_frame=False)
        quality = rr.similarity(pair, transform)
    if not _passes(quality):
        raise InputAlignmentError(
            f"input {name} does not match the reference input {ref_name} even after a rigid registration "
            f"(head overlap Dice {quality.dice:.2f}, edge alignment {quality.edges:.2f}; scans of one head give "
            f"at least {MIN_DICE:.2f} and {MIN_EDGES:.2f}): is it another patient's scan?")
    covered = _coverage(pair, transform)
    if covered < MIN_COVERED:
        raise InputAlignmentError(f"input {name} covers only {covered:.0%} of the reference input {ref_name}'s "
                                  f"head (at least {MIN_COVERED:.0%} is needed).")
    return AlignedInput(name, _on_reference(moving, reference, transform),
                        _note(image, reference, transform, same_frame, covered), covered, transform, quality)


def _passes(quality: rr.Similarity) -> bool:
    # a head too small to have voxels EDGE_MARGIN_MM deep (a test phantom, a small animal) gives no edge score
    # (NaN): it is judged by its overlap alone
    return quality.dice >= MIN_DICE and (np.isnan(quality.edges) or quality.edges >= MIN_EDGES)


def _registered(name: str, ref_name: str, pair: rr.Pair, same_frame: bool) -> sitk.Euler3DTransform:
    try:
        return rr.register(pair, same_frame)
    except RuntimeError:  # ITK gives up when every sample of the reference's head falls outside the input
        raise InputAlignmentError(
            f"input {name} could not be registered to the reference input {ref_name}: the search moved it off "
            "the reference's head (no overlap after registration): is it another patient's scan?") from None


def _overlaps(moving: sitk.Image, reference: sitk.Image) -> bool:
    """Whether any point of ``moving``'s field lies in ``reference``'s (on the 4 mm check grid)."""
    field = rr.on_grid(rr.field_of(moving), rr.check_grid(reference, rr.COARSE_MM), None, sitk.sitkNearestNeighbor)
    return bool(sitk.GetArrayViewFromImage(field).any())


def _coverage(pair: rr.Pair, transform: sitk.Transform | None = None) -> float:
    """The fraction of the reference's head (on the 2 mm check grid) inside the input's field through
    ``transform`` (reference → input)."""
    fixed = pair.levels[rr.FINE_MM][0]
    head = rr.head(fixed)
    field = rr.on_grid(pair.moving_field, Grid.from_image(fixed), transform, sitk.sitkNearestNeighbor)
    return float(np.count_nonzero(head & (sitk.GetArrayViewFromImage(field) > 0)) / max(1, np.count_nonzero(head)))


def _background(image: sitk.Image) -> float:
    """The value an input takes outside its field: its own background, 0 for MRI (the lowest half-percent
    of its voxels when that is negative, e.g. air in CT), so the padding invents no tissue."""
    arr = sitk.GetArrayViewFromImage(image).reshape(-1)
    sample = arr[:: max(1, arr.size // 1_000_000)]
    return min(0.0, float(np.percentile(sample, 0.5)))


def _on_reference(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None) -> sitk.Image:
    grid = Grid.from_image(reference)
    if transform is None and grid.matches(moving):
        image = sitk.Image(moving)
        image.CopyInformation(reference)  # equal within the tolerance of "same grid": one geometry exactly
        return image
    return rr.on_grid(moving, grid, transform, sitk.sitkLinear, _background(moving))


def _grid_words(image: sitk.Image) -> str:
    """``0.9×0.9×3 mm`` and, when not LPS-like, the orientation code (``RAS``)."""
    spacing = "×".join(f"{s:.2g}" if s < 1 else f"{s:.3g}" for s in image.GetSpacing())
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    return f"{spacing} mm" + ("" if code == "LPS" else f", {code}")


def _note(image: sitk.Image, reference: sitk.Image, transform: sitk.Euler3DTransform | None, same_frame: bool,
          covered: float) -> str:
    """What was done to one input, in words (the note the CLI and the panel show)."""
    if transform is not None:
        m = rr.motion(transform)
        why = "" if same_frame else "; another frame of reference"
        note = (f"registered (rigid, mutual information{why}): moved {m.shift_mm:.1f} mm, rotated "
                f"{m.rotation_deg:.1f}°, resampled from {_grid_words(image)}")
    elif Grid.from_image(reference).matches(image):
        note = ON_REFERENCE_GRID
    else:
        note = f"resampled from {_grid_words(image)}"
    if covered < 0.995:  # noted when a visible part of the head lies outside the input's field
        note += f"; its field covers {covered:.0%} of the reference's head"
    return note
