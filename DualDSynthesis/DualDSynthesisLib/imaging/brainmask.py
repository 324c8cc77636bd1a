"""Brain extraction for whole-head MRI: the brain mask that ``--skull strip`` synthesises inside.

A model trained on skull-stripped brains has never seen scalp, fat, bone marrow or neck, and a whole head
also shifts a foreground normalisation (the rank or percentile of brain tissue among all head voxels).
Stripping the input first gives the model what it was trained on; outside the brain the outputs are the
target's background, so nothing is invented there (docs/generalisation.md, "skull handling", has the
leave-one-source-out numbers that decided this).

The mask comes from FSL's Brain Extraction Tool algorithm (Smith 2002, a deformable surface) as
implemented by the ``brainextractor`` package. BET's surface model assumes isotropic voxels (on a
0.7 × 0.7 × 4 mm clinical grid the package fails outright), so the volume is resampled to
:data:`BET_SPACING_MM` first and the mask brought back to the input grid by nearest neighbour.
A user-supplied brain mask (``--mask`` with ``--skull strip``, or a segmentation in Slicer) skips all
of this.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import SimpleITK as sitk

from ..core.errors import DualDError
from .preprocess import Grid

# What a whole-head input gets (``--skull``): "strip" synthesises inside the brain only, "keep" synthesises
# the whole input, "auto" strips a whole head only when the model never saw one (its training fingerprint
# holds skull-stripped brains only) and the target is an MRI contrast (a CT needs the skull and the body).
SKULL_HANDLING = ("auto", "keep", "strip")
BET_SPACING_MM = 1.5
# An adult brain (with the cerebellum and brainstem BET keeps) is about 1,000-1,800 mL; outside this range
# the surface collapsed into part of the brain or leaked into the scalp, and the mask is refused.
PLAUSIBLE_BRAIN_ML = (600.0, 2500.0)


class BrainMaskError(DualDError):
    """Brain extraction is unavailable or gave an implausible mask; the message says what to do."""


def _isotropic(image: sitk.Image, spacing: float) -> sitk.Image:
    size = [max(1, math.ceil(n * s / spacing)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), (spacing,) * 3, image.GetDirection(), 0.0, sitk.sitkFloat32)


def estimate_brain_mask(image: sitk.Image, plausible_ml: tuple[float, float] = PLAUSIBLE_BRAIN_ML) -> sitk.Image:
    """A UInt8 brain mask (1 = brain) on ``image``'s grid, for a T1- or T2-weighted whole head."""
    try:
        import nibabel as nib
        from brainextractor import BrainExtractor
    except ImportError:
        raise BrainMaskError(
            "automatic brain extraction needs the brainextractor package (pip install brainextractor); "
            "or give a brain mask") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise BrainMaskError("brain extraction needs a scalar 3-D volume")
    iso = _isotropic(image, BET_SPACING_MM)
    data = np.transpose(sitk.GetArrayFromImage(iso), (2, 1, 0))  # ITK [k, j, i] → nibabel [i, j, k]
    if not np.isfinite(data).all() or float(data.max()) <= float(data.min()):
        raise BrainMaskError("brain extraction needs a volume with finite, varying intensities")
    nifti = nib.Nifti1Image(data.astype(np.float32), np.diag([BET_SPACING_MM] * 3 + [1.0]))
    with contextlib.redirect_stdout(io.StringIO()):  # the package reports every iteration on stdout
        bet = BrainExtractor(img=nifti)
        bet.run()
        voxels = bet.compute_mask() > 0
    mask = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(voxels, (2, 1, 0))).astype(np.uint8))
    mask.CopyInformation(iso)
    mask = sitk.BinaryFillhole(mask)
    mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ml = volume_ml(mask)
    if not plausible_ml[0] <= ml <= plausible_ml[1]:
        raise BrainMaskError(
            f"brain extraction found {ml:.0f} mL, not a plausible brain ({plausible_ml[0]:.0f}–"
            f"{plausible_ml[1]:.0f} mL); give a brain mask instead")
    return mask


def volume_ml(mask: sitk.Image) -> float:
    """The volume of a mask's nonzero voxels in mL, on its own grid."""
    # Counted on the mask's own buffer: a view of a temporary image (NotEqual's) may read freed memory.
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return float(count) * math.prod(mask.GetSpacing()) / 1000.0


def mask_on_grid(mask: sitk.Image, image: sitk.Image, what: str = "the mask") -> sitk.Image:
    """``mask`` (nonzero = inside; any grid: resampled by nearest neighbour) as UInt8 0/1 on ``image``'s grid;
    :class:`BrainMaskError` naming ``what`` when it covers no voxel of ``image``."""
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if Grid.from_image(binary).matches(image):
        binary.CopyInformation(image)
    else:
        binary = sitk.Resample(binary, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(binary).any():
        raise BrainMaskError(f"{what} does not cover any voxel of the input volume")
    return binary


def strip(image: sitk.Image, brain: sitk.Image) -> sitk.Image:
    """A copy of ``image`` with every voxel outside ``brain`` set to 0, the background of every MRI intensity
    mapping. ``image`` is untouched."""
    return sitk.Mask(image, mask_on_grid(brain, image, "the brain mask"), outsideValue=0.0)
