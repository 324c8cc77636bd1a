"""Preprocessing shared by training and inference (SimpleITK + numpy only; no Slicer/Qt/vtk).

The model bundle records a :class:`PreprocessingSpec`; training and the inference engine both call
:func:`prepare_volume` with it, so a volume is always seen by the networks exactly as in training:

1. reorient to the canonical orientation with ``sitk.DICOMOrient`` (a pure axis permutation/flip: an
   oblique volume keeps its residual obliquity, nothing is interpolated);
2. resample in-plane (along the volume's own axes, slice positions untouched) to the spec's spacing,
   if it has one and it differs from the volume's;
3. map intensities to the normalised space (:class:`IntensityMapping`), background at 0;
4. pad every axial slice, centred, with 0 up to a multiple of ``size_multiple``.

:func:`restore_volume` undoes 4→2 (geometry only: apply ``IntensityMapping.inverse`` to the values
yourself) and returns an image with exactly the original size, spacing, origin and direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from ..core.limits import slabs, slice_size_problem, spacing_problem
from ..model.intensity import (
    CT_BODY_THRESHOLD_HU,
    CT_HU_RANGE,
    SOURCE_NORMS,
    IntensityMapping,
    IntensityParams,
    PreprocessError,
    foreground_mask,
    source_mapping,
)
from ..model.slicestack import check_context
from .grid import Grid

__all__ = [  # the intensity names and Grid (grid.py) are re-exported: callers prepare volumes through this module
    "CT_BODY_THRESHOLD_HU", "CT_HU_RANGE", "SOURCE_NORMS", "Grid", "IntensityMapping", "IntensityParams",
    "PreparedVolume", "PreprocessError", "PreprocessingSpec", "RestoreContext", "foreground_mask", "prepare_on_grid",
    "prepare_volume", "restore_volume", "source_mapping", "validate_volume",
]

_SPACING_RTOL = 1e-3  # in-plane spacings closer than this (relative) are not resampled
_ROLES = ("source", "target", "mask")


# ----------------------------------------------------------------------------- spec


def _check_orientation(code: Any, slice_axis: str) -> str:
    if not isinstance(code, str) or len(code) != 3:
        raise PreprocessError(f"orientation must be a 3-letter code such as 'LPS', got {code!r}.")
    code = code.upper()
    letters = set(code)
    if len(letters) != 3 or not all(len(letters & set(pair)) == 1 for pair in ("RL", "AP", "SI")):
        raise PreprocessError(f"orientation {code!r} must use one letter of each of R/L, A/P and S/I.")
    if slice_axis == "axial" and code[2] not in "SI":
        raise PreprocessError(f"orientation {code!r} does not put S/I third, so its slices are not axial.")
    return code


@dataclass(frozen=True)
class PreprocessingSpec:
    """How volumes are prepared for the networks; stored in the bundle's JSON metadata."""

    source: IntensityMapping
    target: IntensityMapping
    orientation: str = "LPS"
    slice_axis: str = "axial"
    spacing: tuple[float, float] | None = None
    size_multiple: int = 16
    min_size: int = 32
    context_slices: int = 0  # adjacent slices on each side fed to G as channels (2.5-D); see slicestack

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "context_slices", check_context(self.context_slices))
        except ValueError as exc:
            raise PreprocessError(f"{exc}.") from None
        if not isinstance(self.source, IntensityMapping) or not isinstance(self.target, IntensityMapping):
            raise PreprocessError("source and target must be IntensityMapping objects.")
        if self.slice_axis != "axial":
            raise PreprocessError(f"only axial slices are supported, got slice_axis {self.slice_axis!r}.")
        object.__setattr__(self, "orientation", _check_orientation(self.orientation, self.slice_axis))
        if self.spacing is not None:
            try:
                sp = tuple(float(v) for v in self.spacing)
            except (TypeError, ValueError) as exc:
                raise PreprocessError(f"spacing must be two numbers (mm), got {self.spacing!r}.") from exc
            if len(sp) != 2 or not all(math.isfinite(v) and v > 0 for v in sp):
                raise PreprocessError(f"spacing must be two positive numbers (mm, x then y), got {self.spacing!r}.")
            if spacing_problem(sp):
                raise PreprocessError(spacing_problem(sp))
            object.__setattr__(self, "spacing", sp)
        for name in ("size_multiple", "min_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < 1:
                raise PreprocessError(f"{name} must be a positive integer, got {value!r}.")
            object.__setattr__(self, name, int(value))

    def mapping(self, role: str) -> IntensityMapping | None:
        """The mapping for ``role`` ('source', 'target'; 'mask' has none: label values are kept)."""
        if role not in _ROLES:
            raise PreprocessError(f"role must be one of {', '.join(_ROLES)}, got {role!r}.")
        return None if role == "mask" else getattr(self, role)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.to_dict(),
            "target": self.target.to_dict(),
            "orientation": self.orientation,
            "slice_axis": self.slice_axis,
            "spacing": None if self.spacing is None else [self.spacing[0], self.spacing[1]],
            "size_multiple": self.size_multiple,
            "min_size": self.min_size,
            "context_slices": self.context_slices,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessingSpec:
        if not isinstance(d, dict):
            raise PreprocessError(f"preprocessing metadata must be a JSON object, got {type(d).__name__}.")
        missing = [k for k in ("source", "target") if k not in d]
        if missing:
            raise PreprocessError(f"preprocessing metadata lacks {' and '.join(missing)}.")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:  # a newer writer's setting this reader would silently ignore
            raise PreprocessError(f"preprocessing metadata has unknown setting(s) {', '.join(unknown)}; "
                                  "this model needs a newer DualD.")
        return cls(
            source=IntensityMapping.from_dict(d["source"]),
            target=IntensityMapping.from_dict(d["target"]),
            orientation=d.get("orientation", "LPS"),
            slice_axis=d.get("slice_axis", "axial"),
            spacing=d.get("spacing"),
            size_multiple=d.get("size_multiple", 16),
            min_size=d.get("min_size", 32),
            context_slices=d.get("context_slices", 0),
        )


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class RestoreContext:
    """Everything :func:`restore_volume` needs to undo :func:`prepare_volume`."""

    original: Grid  # the input image's grid (restored exactly)
    original_orientation: str  # its closest orientation code, e.g. 'RAS'
    original_pixel_type: str  # e.g. '16-bit signed integer' (informative; restore gives float32)
    canonical: Grid  # after DICOMOrient
    prepared: Grid  # after in-plane resampling (== canonical when not resampled)
    flip_axes: tuple[bool, bool, bool]  # canonical axes to flip ...
    permutation: tuple[int, int, int]  # ... then sitk.PermuteAxes order, to get back to the original
    crop: tuple[int, int, int, int]  # y0, y1, x0, x1 of the data inside the padded slices
    padded_shape: tuple[int, int, int]  # K, H, W of PreparedVolume.slices

    @property
    def resampled(self) -> bool:
        return self.prepared != self.canonical


@dataclass
class PreparedVolume:
    slices: np.ndarray  # float32 [K, H, W], normalised, canonical orientation, padded
    foreground: np.ndarray  # bool [K, H, W], False in the padding
    params: IntensityParams | None  # the intensity mapping's parameters used (None for label masks)
    context: RestoreContext


def _axis_mapping(original: Grid, canonical: Grid) -> tuple[tuple[bool, bool, bool], tuple[int, int, int]]:
    """Flips and permutation taking the canonical image back to the original axes.

    DICOMOrient only permutes and negates direction columns, so each canonical axis c is ±1 times
    exactly one original axis o; undo = flip the negated ones, then PermuteAxes(order[o] = c)."""
    d_orig = np.array(original.direction).reshape(3, 3)
    d_can = np.array(canonical.direction).reshape(3, 3)
    m = d_orig.T @ d_can  # m[o, c] = <original axis o, canonical axis c>
    orig_of = [int(np.argmax(np.abs(m[:, c]))) for c in range(3)]
    if sorted(orig_of) != [0, 1, 2] or not np.allclose(np.abs(m[orig_of, range(3)]), 1.0, atol=1e-5):
        raise PreprocessError("reorientation was not a pure axis permutation, which should not happen.")
    flips = tuple(bool(m[orig_of[c], c] < 0) for c in range(3))
    order = tuple(orig_of.index(o) for o in range(3))
    return flips, order  # type: ignore[return-value]


def _prepared_grid(canonical: Grid, spacing: tuple[float, float] | None) -> Grid:
    """Canonical grid resampled in-plane to ``spacing`` along its own axes, centred on the same extent."""
    if spacing is None or np.allclose(canonical.spacing[:2], spacing, rtol=_SPACING_RTOL, atol=0):
        return canonical
    new_sp = np.array([spacing[0], spacing[1], canonical.spacing[2]])
    old_sp = np.array(canonical.spacing)
    old_size = np.array(canonical.size)
    new_size = np.maximum(1, np.round(old_size * old_sp / new_sp)).astype(int)
    new_size[2] = old_size[2]
    d = np.array(canonical.direction).reshape(3, 3)
    centre = np.array(canonical.origin) + d @ ((old_size - 1) * old_sp / 2)
    origin = centre - d @ ((new_size - 1) * new_sp / 2)
    return Grid(
        tuple(int(v) for v in new_size),
        tuple(float(v) for v in new_sp),
        tuple(float(v) for v in origin),
        canonical.direction,
    )


def _padded(n: int, spec: PreprocessingSpec) -> int:
    m = spec.size_multiple
    return int(math.ceil(max(n, spec.min_size) / m) * m)


def _check_inplane(grid: Grid, spec: PreprocessingSpec, name: str) -> None:
    w, h = grid.size[0], grid.size[1]
    if min(w, h) < spec.min_size:
        raise PreprocessError(
            f"{name} has {w}×{h}-voxel slices after resampling, smaller than the minimum {spec.min_size}."
        )
    problem = slice_size_problem(name, w, h, _padded(w, spec) * _padded(h, spec) * grid.size[2])
    if problem:  # a wrong spacing (50 mm) must be one sentence, not ITK's failed allocation mid-cohort
        raise PreprocessError(problem)


# ----------------------------------------------------------------------------- validation


def _as_scalar(image: sitk.Image, name: str) -> sitk.Image:
    n = image.GetNumberOfComponentsPerPixel()
    if n != 1:
        raise PreprocessError(f"{name} has {n} components per voxel (a vector/colour image); a scalar one is needed.")
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise PreprocessError(f"{name} has complex voxels; a real-valued scalar volume is needed.")
    if "vector" in image.GetPixelIDTypeAsString():
        return sitk.VectorIndexSelectionCast(image, 0)
    return image


def validate_volume(
    image: sitk.Image, name: str, spec: PreprocessingSpec | None = None, allow_constant: bool = False
) -> None:
    """Raise :class:`PreprocessError` (one sentence naming ``name``) if ``image`` cannot be prepared.

    Checks: a ``sitk.Image``; 3-D (2-D/4-D named); no zero-size axis; one real component; no NaN/inf
    (counted); not constant (unless ``allow_constant``, for label masks); and, with ``spec``, slices at
    least ``spec.min_size`` voxels wide after the in-plane resampling."""
    if not isinstance(image, sitk.Image):
        raise PreprocessError(f"{name} is a {type(image).__name__}, not a SimpleITK image.")
    dim = image.GetDimension()
    if dim != 3:
        raise PreprocessError(f"{name} is a {dim}-D image; a 3-D volume is needed.")
    size = image.GetSize()
    if 0 in size:
        raise PreprocessError(f"{name} is empty (size {size[0]}×{size[1]}×{size[2]}).")
    image = _as_scalar(image, name)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        view = sitk.GetArrayViewFromImage(image)
        bad = int(view.size - np.count_nonzero(np.isfinite(view)))
        if bad:
            raise PreprocessError(f"{name} has {bad} NaN or infinite voxel{'s' if bad != 1 else ''}.")
    if not allow_constant:
        mm = sitk.MinimumMaximumImageFilter()
        mm.Execute(image)
        if mm.GetMinimum() == mm.GetMaximum():
            raise PreprocessError(f"{name} is constant (every voxel is {mm.GetMinimum():g}).")
    if spec is not None:
        # Which original axes become the canonical in-plane axes: the ones closest to x and y.
        d = np.abs(np.array(image.GetDirection()).reshape(3, 3))
        axis_of = [int(np.argmax(d[row])) for row in range(3)]
        if sorted(axis_of) == [0, 1, 2]:
            sp = image.GetSpacing()
            canon = Grid(
                tuple(size[a] for a in axis_of),
                tuple(sp[a] for a in axis_of),
                (0.0, 0.0, 0.0),
                (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
            )
            _check_inplane(_prepared_grid(canon, spec.spacing), spec, name)


# ----------------------------------------------------------------------------- prepare / restore


def _finish(
    image: sitk.Image, context: RestoreContext, mapping: IntensityMapping | None, params: IntensityParams | None
) -> PreparedVolume:
    """Intensity mapping, foreground and padding of a float32 image on the prepared grid."""
    arr = sitk.GetArrayViewFromImage(image)  # [K, H, W] view, no copy
    y0, y1, x0, x1 = context.crop
    slices = np.zeros(context.padded_shape, dtype=np.float32)
    inner = slices[:, y0:y1, x0:x1]
    if mapping is None:  # label mask: values kept as they are
        fg = arr != 0
        params = None
        inner[...] = arr
    else:
        fg = mapping.foreground(arr)
        params = mapping.fit(arr, fg) if params is None else params
        # A slab of slices at a time: the mappings are voxel-wise (same values), and one of them (rank's
        # np.interp) works in float64, a whole-volume copy twice the float32 volume's size.
        for slab in slabs(len(arr), arr[:1].size):
            mapping.forward(arr[slab], params, out=inner[slab])
        if mapping.zero_outside_foreground:
            inner[~fg] = 0.0  # background exactly 0, as in the convention
    foreground = np.zeros(context.padded_shape, dtype=bool)
    foreground[:, y0:y1, x0:x1] = fg
    return PreparedVolume(slices=slices, foreground=foreground, params=params, context=context)


def _to_prepared_grid(canonical: sitk.Image, context: RestoreContext, interpolator: int, default: float,
                      cast: bool = True) -> sitk.Image:
    if context.resampled:
        return context.prepared.resample(canonical, interpolator, default)
    if canonical.GetPixelID() == sitk.sitkFloat32 or not cast:
        return canonical
    return sitk.Cast(canonical, sitk.sitkFloat32)


def prepare_geometry(image: sitk.Image, spec: PreprocessingSpec, role: Literal["source", "target", "mask"] = "source",
                     cast: bool = True, validated: bool = False) -> tuple[sitk.Image, RestoreContext]:
    """Steps 1-2 of :func:`prepare_volume`: the image on the prepared grid (float32; with ``cast=False`` an
    image that needed no resampling keeps its pixel type) and the restore context. ``validated``: the caller
    has just run :func:`validate_volume` with this ``spec`` (the engine, naming the input), so it is skipped."""
    if not validated:
        validate_volume(image, role, spec=spec, allow_constant=role == "mask")
    image = _as_scalar(image, role)
    original = Grid.from_image(image)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    canonical = sitk.DICOMOrient(image, spec.orientation)
    canon_grid = Grid.from_image(canonical)
    flips, order = _axis_mapping(original, canon_grid)
    prepared = _prepared_grid(canon_grid, spec.spacing)
    _check_inplane(prepared, spec, role)
    w, h, k = prepared.size
    hp, wp = _padded(h, spec), _padded(w, spec)
    y0, x0 = (hp - h) // 2, (wp - w) // 2
    context = RestoreContext(original, code, image.GetPixelIDTypeAsString(), canon_grid, prepared, flips, order,
                             (y0, y0 + h, x0, x0 + w), (k, hp, wp))
    mapping = spec.mapping(role)
    interpolator = sitk.sitkNearestNeighbor if role == "mask" else sitk.sitkLinear
    default = 0.0 if mapping is None else mapping.background_value
    return _to_prepared_grid(canonical, context, interpolator, default, cast), context


def prepare_volume(image: sitk.Image, spec: PreprocessingSpec, role: Literal["source", "target", "mask"] = "source",
                   params: IntensityParams | None = None, validated: bool = False) -> PreparedVolume:
    """Reorient, resample in-plane, normalise and pad ``image`` as ``spec`` says (see the module doc).

    ``params`` overrides the volume's fitted intensity parameters; role 'mask' keeps the values (labels);
    ``validated``: see :func:`prepare_geometry`."""
    resampled, context = prepare_geometry(image, spec, role, validated=validated)
    return _finish(resampled, context, spec.mapping(role), params)


def prepare_on_grid(
    image: sitk.Image,
    reference: PreparedVolume,
    spec: PreprocessingSpec,
    role: Literal["source", "target", "mask"] = "target",
    interpolator: int = sitk.sitkLinear,
    params: IntensityParams | None = None,
) -> PreparedVolume:
    """Bring a second volume (the target, or a label mask with ``sitk.sitkNearestNeighbor``) onto
    exactly the prepared grid of ``reference``; its context is the reference's, so restoring gives the
    reference's original geometry. On the reference's original grid the same reorient/resample steps
    are taken; any other grid is resampled directly (in physical space) onto the prepared grid."""
    mapping = spec.mapping(role)
    validate_volume(image, role, allow_constant=role == "mask")
    image = _as_scalar(image, role)
    context = reference.context
    default = 0.0 if mapping is None else mapping.background_value
    if context.original.matches(image):
        canonical = sitk.DICOMOrient(image, spec.orientation)
        if not context.canonical.matches(canonical):
            raise PreprocessError(f"{role} reorients differently from the reference volume.")
        on_grid = _to_prepared_grid(canonical, context, interpolator, default)
        del canonical
    else:
        on_grid = context.prepared.resample(image, interpolator, default)
    return _finish(on_grid, context, mapping, params)


def restore_volume(
    slices: np.ndarray, context: RestoreContext, interpolator: int = sitk.sitkLinear, default_value: float = 0.0
) -> sitk.Image:
    """Undo the padding, the in-plane resampling and the reorientation of ``slices`` [K, H, W].

    Geometry only: values are returned as given (apply ``IntensityMapping.inverse`` before or after;
    ``default_value`` fills points the resampling cannot reach, so use -1024 for HU). The float32
    result has exactly the original image's size, spacing, origin and direction. A caller that keeps no
    reference to ``slices`` (``restore_volume(arrays.pop(...), ...)``) has it freed before the resampling."""
    slices = np.asarray(slices, dtype=np.float32)
    if slices.shape != context.padded_shape:
        raise PreprocessError(f"slices have shape {slices.shape}, expected {context.padded_shape}.")
    y0, y1, x0, x1 = context.crop
    canonical = slices[:, y0:y1, x0:x1]
    # Undo the reorientation as numpy views (what sitk.Flip then sitk.PermuteAxes do, voxel moves only), so
    # the voxels are copied once into the result instead of once per step. The array is [k, j, i]: ITK axis
    # a is numpy axis 2 − a, and PermuteAxes' output axis d is its input axis permutation[d].
    flips = tuple(slice(None, None, -1) if flip else slice(None) for flip in reversed(context.flip_axes))
    order = [2 - context.permutation[2 - n] for n in range(3)]
    # GetImageFromArray copies a strided view itself: no contiguous copy first (one volume less at the peak).
    if not context.resampled:
        image = sitk.GetImageFromArray(canonical[flips].transpose(order))
    else:
        image = sitk.GetImageFromArray(canonical)
        del slices, canonical  # freed here when the caller handed ``slices`` over (kept no reference)
        image = context.canonical.resample(context.prepared.apply_to(image), interpolator, default_value)
        if any(context.flip_axes) or order != [0, 1, 2]:  # else already in the original's voxel order
            image = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image)[flips].transpose(order))
    if image.GetSize() != context.original.size:
        raise PreprocessError(
            f"restored grid {image.GetSize()} does not match the original {context.original.size}; "
            "the restore context does not belong to these slices."
        )
    return context.original.apply_to(image)
