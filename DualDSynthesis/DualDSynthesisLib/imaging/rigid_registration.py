"""Rigid registration of one input onto the reference input (SimpleITK, Mattes mutual information), and the
measures :mod:`input_alignment` decides with: the quick misalignment check, the post-registration quality
(the heads' Dice and how well the edges inside them line up) and how far a transform moves the head.

Everything runs on coarse isotropic *check grids* spanning the reference's field (:data:`COARSE_MM` for the quick
check and the first registration level, :data:`FINE_MM` for the second level and the quality measures), each
image smoothed before resampling so a thin-slice input is not aliased. Transforms map a point of the reference to
the input (SimpleITK's convention: the input resampled onto the reference is ``input(T(x))``); the rotation centre
is the reference head's centroid, so a transform's translation is how far that centroid moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..model.intensity import foreground_mask
from .grid import Grid

COARSE_MM = 4.0
FINE_MM = 2.0
# The quick check's trial poses: the identity against these shifts along and rotations about each axis. A pair is
# misaligned when one trial pose is better than the identity by more than CHECK_MARGIN of the identity's MI. On
# real pairs (benchmarks/align_thresholds.py) co-registered contrasts scored -0.18 to 0.06 (0.06: BraTS-MET T1/T2,
# whose MI optimum is itself 1.7 mm off: registered), the same moved 3-6 mm and 2-5 degrees 0.12 to 0.60. Trial
# poses of 2 mm / 2 degrees flagged co-registered pairs whose MI optimum lies only 1.1 mm away.
CHECK_SHIFT_MM = 3.0
CHECK_ROTATION_DEG = 3.0
CHECK_MARGIN = 0.01
# The edge alignment is measured this far inside both heads: there two scans of one head share the brain's fine
# edges, while the outlines, scalp and skull of two people's heads line up too once registered (at 6 mm, two
# patients' whole heads reached 0.64, above one patient's skull-stripped pair at 0.61; at 16 mm, 0.53 and 0.63).
EDGE_MARGIN_MM = 16.0
_BINS = 32
_SEED = 20231


@dataclass(frozen=True)
class Motion:
    """How far a transform moves the reference's head: the centroid's shift and the rotation angle."""

    shift_mm: float
    rotation_deg: float


@dataclass(frozen=True)
class Similarity:
    """An input against the reference on the 2 mm check grid, where the input has a field: the Dice of both
    heads, and how well their edges line up deep inside both heads (:func:`_edge_alignment`: 1/3 for
    unrelated images, 1 for the same edges)."""

    dice: float
    edges: float


def check_grid(reference: sitk.Image, spacing: float) -> Grid:
    """An isotropic grid of ``spacing`` mm over ``reference``'s field, in its orientation."""
    extent = [n * s for n, s in zip(reference.GetSize(), reference.GetSpacing(), strict=True)]
    size = tuple(max(1, math.ceil(e / spacing)) for e in extent)
    # the first voxel centre half a coarse voxel inside the field's corner (the field starts half a voxel out)
    corner = np.array(reference.GetSpacing()) * -0.5 + spacing / 2
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    origin = np.array(reference.GetOrigin()) + direction @ corner
    return Grid(size, (spacing,) * 3, tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel()))


def smoothed(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` as float32, ready for sampling at ``spacing`` mm: block-averaged by the whole factor its voxels
    fit into ``spacing`` (cheap, and it shrinks the image), then blurred to σ ≈ spacing / 2 along every axis."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    factors = [max(1, int(spacing // s)) for s in image.GetSpacing()]
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    # a block of b voxels already blurs like σ ≈ b / 2; only what is missing is added
    sigmas = [math.sqrt(max(0.0, (spacing / 2) ** 2 - (s / 2) ** 2)) for s in image.GetSpacing()]
    if max(sigmas) == 0.0:
        return image
    # a zero sigma is refused by the filter: a tiny one leaves that axis as it is
    return sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigmas])


def on_grid(image: sitk.Image, grid: Grid, transform: sitk.Transform | None = None,
            interpolator: int = sitk.sitkLinear, default: float = 0.0) -> sitk.Image:
    """``image`` (as it is) resampled onto ``grid`` through ``transform`` (reference → image; None: identity)."""
    return grid.resample(image, interpolator, default, transform)


def field_of(image: sitk.Image) -> sitk.Image:
    """A UInt8 image of ones on ``image``'s grid: resampled like an input, it marks where that input has data."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return ones


def head(image: sitk.Image | np.ndarray) -> np.ndarray:
    """The foreground (MRI threshold, holes filled per slice) of an image on a check grid, as a boolean array."""
    arr = sitk.GetArrayFromImage(image) if isinstance(image, sitk.Image) else image
    return foreground_mask(arr, "mri_percentile")


def centroid(mask: np.ndarray, grid: Grid) -> tuple[float, float, float]:
    """The physical centre of ``mask``'s voxels on ``grid`` (the grid's centre when the mask is empty)."""
    kji = np.argwhere(mask).mean(axis=0) if mask.any() else (np.array(grid.size[::-1]) - 1) / 2
    index = np.asarray(kji)[::-1]
    direction = np.array(grid.direction).reshape(3, 3)
    return tuple(float(v) for v in np.array(grid.origin) + direction @ (index * np.array(grid.spacing)))


def motion(transform: sitk.Euler3DTransform) -> Motion:
    """The centroid's shift and the rotation angle of a transform whose centre is the reference's centroid."""
    rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    angle = math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))
    return Motion(float(np.linalg.norm(transform.GetTranslation())), angle)


class Pair:
    """The reference and one input prepared once for everything here: each image blurred once at its own
    resolution for the fine grid (``fixed_smooth``, ``moving_smooth``), and per level (4 mm, 2 mm) the reference
    on its check grid, its head mask (grown by one voxel so the metric sees the head's edge) and the input on
    *its own* check grid (so the metric's gradient filter runs over a few voxels, not millions)."""

    def __init__(self, reference: sitk.Image, moving: sitk.Image) -> None:
        self.fixed_smooth, self.moving_smooth = smoothed(reference, FINE_MM), smoothed(moving, FINE_MM)
        fine_fixed = on_grid(self.fixed_smooth, check_grid(reference, FINE_MM))
        fine_moving = on_grid(self.moving_smooth, check_grid(moving, FINE_MM))
        self.levels: dict[float, tuple[sitk.Image, sitk.Image, sitk.Image]] = {}
        for spacing in (FINE_MM, COARSE_MM):
            fixed = fine_fixed if spacing == FINE_MM else on_grid(smoothed(fine_fixed, spacing),
                                                                  check_grid(reference, spacing))
            level_moving = fine_moving if spacing == FINE_MM else on_grid(smoothed(fine_moving, spacing),
                                                                          check_grid(moving, spacing))
            mask = sitk.GetImageFromArray(head(fixed).astype(np.uint8))
            mask.CopyInformation(fixed)
            self.levels[spacing] = (fixed, sitk.BinaryDilate(mask, [1, 1, 1]), level_moving)
        self.center = centroid(head(fine_fixed), Grid.from_image(fine_fixed))
        self.moving_field = field_of(moving)

    def method(self, spacing: float, sampling: float | None) -> sitk.ImageRegistrationMethod:
        """A registration method on ``spacing``'s level: Mattes MI over the reference's head, a random
        ``sampling`` fraction of it (None: every voxel), regular-step gradient descent scaled to 1 mm moves."""
        _fixed, mask, _moving = self.levels[spacing]
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_BINS)
        r.SetMetricFixedMask(mask)
        if sampling is None:
            r.SetMetricSamplingStrategy(r.NONE)
        else:
            r.SetMetricSamplingStrategy(r.RANDOM)
            r.SetMetricSamplingPercentage(sampling, _SEED)
        r.SetInterpolator(sitk.sitkLinear)
        # a slow step decay (0.8) and a small last step: a faster one stopped ~1.4° short on a 4° rotation
        r.SetOptimizerAsRegularStepGradientDescent(learningRate=spacing, minStep=0.005, numberOfIterations=100,
                                                   relaxationFactor=0.8, gradientMagnitudeTolerance=1e-8)
        r.SetOptimizerScalesFromPhysicalShift()
        return r

    def metric(self, spacing: float, transform: sitk.Transform) -> float:
        """Mattes MI of the pair under ``transform`` on ``spacing``'s level, every head voxel (lower is better;
        infinite when the input does not reach the reference's head there)."""
        fixed, _mask, moving = self.levels[spacing]
        r = self.method(spacing, None)
        r.SetInitialTransform(transform, inPlace=False)
        try:
            return float(r.MetricEvaluate(fixed, moving))
        except RuntimeError:  # ITK: "All samples map outside moving image buffer"
            return math.inf

    def euler(self, translation: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> sitk.Euler3DTransform:
        t = sitk.Euler3DTransform()
        t.SetCenter(self.center)
        t.SetTranslation(translation)
        return t


def _trial_poses(pair: Pair) -> list[sitk.Euler3DTransform]:
    poses = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            shifted = pair.euler(tuple(sign * CHECK_SHIFT_MM if a == axis else 0.0 for a in range(3)))
            rotated = pair.euler()
            angles = [sign * math.radians(CHECK_ROTATION_DEG) if a == axis else 0.0 for a in range(3)]
            rotated.SetRotation(*angles)
            poses += [shifted, rotated]
    return poses


def misalignment(pair: Pair) -> float:
    """How much better the best trial pose (±CHECK_SHIFT_MM along, ±CHECK_ROTATION_DEG about each axis) matches
    than the identity, as a fraction of the identity's mutual information: ≤ 0 when the identity is a local
    best (aligned); infinite when the input does not reach the reference's head at all."""
    identity = pair.metric(COARSE_MM, pair.euler())
    if not math.isfinite(identity):
        return math.inf
    best = min(pair.metric(COARSE_MM, pose) for pose in _trial_poses(pair))
    return (identity - best) / max(abs(identity), 1e-12)  # Mattes MI is negative: lower is better


def _moments_start(pair: Pair) -> sitk.Euler3DTransform:
    """The identity or the head centroids superposed, whichever matches better (inputs in different frames)."""
    moving = pair.levels[COARSE_MM][2]
    moving_center = centroid(head(moving), Grid.from_image(moving))
    candidates = [pair.euler(), pair.euler(tuple(np.subtract(moving_center, pair.center)))]
    return min(candidates, key=lambda t: pair.metric(COARSE_MM, t))


def register(pair: Pair, same_frame: bool = True) -> sitk.Euler3DTransform:
    """The rigid transform (reference → input) that best aligns the pair: Euler3D about the reference head's
    centroid, started at the identity (``same_frame``) or at the better of the identity and the head centroids
    superposed, refined on the 4 mm then the 2 mm check grid (30 %, then 5 % of the head's voxels sampled).
    ITK's ``RuntimeError`` passes through when the input leaves the reference's head during the search."""
    transform = pair.euler() if same_frame else _moments_start(pair)
    for spacing, sampling in ((COARSE_MM, 0.3), (FINE_MM, 0.05)):
        fixed, _mask, moving = pair.levels[spacing]
        r = pair.method(spacing, sampling)
        r.SetInitialTransform(transform, inPlace=True)
        r.Execute(fixed, moving)
    return transform


def similarity(pair: Pair, transform: sitk.Transform | None) -> Similarity:
    """The pair's :class:`Similarity` on the 2 mm check grid, the input resampled through ``transform``."""
    a = sitk.GetArrayFromImage(pair.levels[FINE_MM][0])
    grid = Grid.from_image(pair.levels[FINE_MM][0])
    b = sitk.GetArrayFromImage(on_grid(pair.moving_smooth, grid, transform))
    field = sitk.GetArrayFromImage(on_grid(pair.moving_field, grid, transform, sitk.sitkNearestNeighbor)) > 0
    head_a, head_b = head(a), head(b)
    within_a, within_b = head_a & field, head_b & field
    dice = 2 * np.count_nonzero(within_a & within_b) / max(1, np.count_nonzero(within_a) + np.count_nonzero(within_b))
    # deep inside both heads; the input's field's own edge is no head edge (its head may go on beyond it)
    deep_a = ndimage.distance_transform_edt(head_a, sampling=FINE_MM) > EDGE_MARGIN_MM
    deep_b = ndimage.distance_transform_edt(head_b | ~field, sampling=FINE_MM) > EDGE_MARGIN_MM
    # two voxels in from the field's edge, where the input drops to 0 (no edge of the head's)
    return Similarity(float(dice), _edge_alignment(a, b, deep_a & deep_b & ndimage.binary_erosion(field, iterations=2)))


MIN_EDGE_VOXELS = 64  # 2 mm voxels deep inside both heads: fewer cannot tell a head's edges from noise


def _edge_alignment(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float:
    """Mean cos² of the angle between ``a``'s and ``b``'s gradients over ``inside``, weighted by the product of
    their magnitudes: 1 when every edge of one lies along an edge of the other (whatever the contrast's
    polarity), 1/3 for unrelated edge directions in 3-D; NaN when ``inside`` has too few voxels to judge."""
    if np.count_nonzero(inside) < MIN_EDGE_VOXELS:
        return float("nan")
    ga, gb = (np.stack(np.gradient(v))[:, inside] for v in (a, b))
    dot, na, nb = (ga * gb).sum(axis=0), (ga * ga).sum(axis=0), (gb * gb).sum(axis=0)
    weight = np.sqrt(na * nb)
    cos2 = dot * dot / np.maximum(na * nb, 1e-30)
    total = float(weight.sum())
    return float((weight * cos2).sum() / total) if total > 0 else 0.0
