"""Tests for DualDSynthesisLib.imaging.preprocess on small generated volumes (plus one shared-data check)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from DualDSynthesisLib.imaging.preprocess import (
    IntensityMapping,
    PreprocessError,
    PreprocessingSpec,
    foreground_mask,
    prepare_on_grid,
    prepare_volume,
    restore_volume,
    validate_volume,
)
from DualDSynthesisLib.model.intensity import HounsfieldWindow, HUWindow, PercentileScale, ScaleParams

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

MRI = PercentileScale(reference_scale=500.0)
CT = HounsfieldWindow()


def _spec(**kw) -> PreprocessingSpec:
    return PreprocessingSpec(source=MRI, target=MRI, **kw)


def _rotation(a: float, b: float, c: float) -> tuple[float, ...]:
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


def _phantom(
    size=(40, 36, 6),
    spacing=(1.0, 1.0, 1.0),
    origin=(-20.0, -18.0, 3.0),
    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
    dtype=np.int16,
) -> sitk.Image:
    """Smooth, asymmetric 'head': a blob with background 0, so every axis flip is visible."""
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in size[::-1]), indexing="ij")
    r2 = ((i - 0.1) / 0.8) ** 2 + ((j + 0.05) / 0.7) ** 2 + (k / 1.5) ** 2
    arr = np.where(r2 < 1, 300 + 700 * (1 - r2) + 150 * i + 80 * j + 40 * k, 0)
    img = sitk.GetImageFromArray(arr.astype(dtype))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection()


# ----------------------------------------------------------------------------- intensities


def test_mri_forward_inverse_round_trip():
    rng = np.random.default_rng(0)
    arr = rng.uniform(0, 1000, size=(4, 8, 8)).astype(np.float32)
    arr[:, :2] = 0
    fg = foreground_mask(arr, "mri_percentile")
    params = MRI.fit(arr, fg)
    assert isinstance(params, ScaleParams) and params.scale == pytest.approx(np.percentile(arr[fg], 99.5))
    norm = MRI.forward(arr, params)
    assert norm.dtype == np.float32 and norm[:, :2].max() == 0
    np.testing.assert_allclose(MRI.inverse(norm, params), arr, rtol=1e-5, atol=1e-3)
    with pytest.raises(PreprocessError, match="needs ScaleParams parameters, got float"):
        MRI.forward(arr, 400.0)  # type: ignore[arg-type]


def test_ct_forward_inverse_round_trip():
    hu = np.linspace(-1024, 3071, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    window = CT.fit(hu)
    assert window == HUWindow(-1024.0, 3071.0) and CT.units_per_normalised(window) == 4095.0
    norm = CT.forward(hu, window)
    assert norm.min() == 0.0 and norm.max() == pytest.approx(1.0)
    np.testing.assert_allclose(CT.inverse(norm, window), hu, atol=0.05)
    # out-of-range HU are clipped, air is background (0)
    assert CT.forward(np.array([[[-3000.0, 5000.0]]]), window).tolist() == [[[0.0, 1.0]]]


def test_foreground_mask_rules():
    arr = np.zeros((3, 20, 20), np.float32)
    arr[:, 4:16, 4:16] = 800
    arr[:, 8:12, 8:12] = -5  # negative ringing inside: a hole, filled
    arr[:, 0, :] = 3  # faint edge noise: below 5 % of the robust max
    fg = foreground_mask(arr, "mri_percentile")
    assert fg[:, 4:16, 4:16].all() and fg.sum() == 3 * 12 * 12
    ct = np.full((2, 20, 20), -1000, np.float32)
    ct[:, 3:17, 3:17] = 40
    ct[:, 8:12, 8:12] = -900  # air inside the body (e.g. a sinus): filled
    assert foreground_mask(ct, "ct_hu").sum() == 2 * 14 * 14


def test_spec_dict_round_trip_and_validation():
    spec = PreprocessingSpec(source=MRI, target=CT, spacing=(0.9, 0.8))
    again = PreprocessingSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    bad = spec.to_dict() | {"orientation": "LPA"}
    with pytest.raises(PreprocessError, match="R/L, A/P and S/I"):
        PreprocessingSpec.from_dict(bad)
    with pytest.raises(PreprocessError, match="lacks target"):
        PreprocessingSpec.from_dict({"source": MRI.to_dict()})
    with pytest.raises(PreprocessError, match="unknown intensity kind"):
        IntensityMapping.from_dict({"kind": "pet"})
    # the kinds bundles already hold keep their four keys, value for value
    assert CT.to_dict() == {"kind": "ct_hu", "percentile": 99.5, "clip": [0.0, 2.0], "reference_scale": None}
    assert MRI.to_dict() == {"kind": "mri_percentile", "percentile": 99.5, "clip": [0.0, 2.0], "reference_scale": 500.0}
    with pytest.raises(PreprocessError, match="size_multiple"):
        PreprocessingSpec.from_dict(spec.to_dict() | {"size_multiple": 0})


# ----------------------------------------------------------------------------- geometry round trips

OBLIQUE = _rotation(0.15, -0.1, 0.35)
CASES = {
    "identity-lps": ({}, None),
    "flipped-xy": ({"direction": (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)}, None),
    "oblique": ({"direction": OBLIQUE, "origin": (5.0, -7.0, 11.0)}, None),
    "anisotropic": ({"spacing": (0.9, 0.9, 5.5)}, None),
    "permuted-axes": ({"direction": (0, 0, 1.0, 1.0, 0, 0, 0, 1.0, 0), "size": (36, 6, 40)}, None),
    "spec-spacing": ({"size": (64, 56, 5), "spacing": (1.0, 1.0, 2.0)}, (1.4, 1.2)),
    "spec-spacing-oblique": ({"size": (48, 44, 5), "spacing": (1.1, 1.1, 3.0), "direction": OBLIQUE}, (0.9, 1.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prepare_restore_round_trip(case):
    kw, spacing = CASES[case]
    img = _phantom(**kw)
    spec = _spec(spacing=spacing)
    pv = prepare_volume(img, spec)
    _, h, w = pv.slices.shape
    assert pv.slices.dtype == np.float32 and pv.foreground.shape == pv.slices.shape
    assert h % 16 == 0 and w % 16 == 0 and min(h, w) >= 32
    y0, _, _, x1 = pv.context.crop
    assert not pv.foreground[:, :y0].any() and not pv.foreground[:, :, x1:].any()
    restored = restore_volume(pv.slices, pv.context)
    _assert_same_geometry(restored, img)
    raw = sitk.GetArrayFromImage(img).astype(np.float32)
    back = MRI.inverse(sitk.GetArrayFromImage(restored), pv.params)
    inside = raw > 0
    if spacing is None:  # no interpolation anywhere: exact up to float32 rounding
        np.testing.assert_allclose(back[inside], raw[inside], rtol=1e-5)
    else:  # resampled down and up again: smooth data survives, edges blur
        interior = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.Cast(img > 0, sitk.sitkUInt8), [2, 2, 0])) > 0
        err = np.abs(back - raw)[interior]
        assert np.median(err) < 0.01 * raw.max() and err.max() < 0.1 * raw.max()
    labels = restore_volume(pv.foreground.astype(np.float32), pv.context, sitk.sitkNearestNeighbor)
    _assert_same_geometry(labels, img)


def test_prepared_grid_is_canonical_and_resampled_in_plane_only():
    img = _phantom(size=(64, 56, 5), spacing=(1.0, 1.0, 2.0), direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    pv = prepare_volume(img, _spec(spacing=(1.4, 1.2)))
    grid = pv.context.prepared
    assert grid.spacing == (1.4, 1.2, 2.0)
    assert grid.size == (46, 47, 5)
    assert grid.direction == (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    assert pv.context.original_orientation == "RAS"


def test_lps_and_ras_array_order_give_identical_slices():
    lps = _phantom(origin=(-20.0, -18.0, 3.0))
    ras = sitk.DICOMOrient(lps, "RAS")  # same anatomy, other voxel order
    assert ras.GetDirection() != lps.GetDirection()
    a, b = prepare_volume(lps, _spec()), prepare_volume(ras, _spec())
    np.testing.assert_array_equal(a.slices, b.slices)
    np.testing.assert_array_equal(a.foreground, b.foreground)
    assert a.params == b.params
    assert a.context.prepared.matches(b.context.prepared)
    _assert_same_geometry(restore_volume(b.slices, b.context), ras)


def test_prepare_on_grid_matches_reference_grid():
    src = _phantom(size=(48, 44, 5))
    spec = PreprocessingSpec(source=MRI, target=CT, spacing=(1.3, 1.3))
    ref = prepare_volume(src, spec)
    # a CT-like target on another grid (RAS order, finer spacing) covering the same space
    tgt = sitk.Resample(
        sitk.DICOMOrient(src, "RAS"),
        [96, 88, 5],
        sitk.Transform(),
        sitk.sitkLinear,
        (src.GetOrigin()[0] + 47.25, src.GetOrigin()[1] + 43.25, src.GetOrigin()[2]),
        (0.5, 0.5, 1.0),
        (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0),
        -1024.0,
        sitk.sitkFloat32,
    )
    on = prepare_on_grid(tgt, ref, spec, role="target")
    assert on.slices.shape == ref.slices.shape and on.context is ref.context
    assert on.params == HUWindow() and on.slices.min() >= 0.0 and on.slices.max() <= 1.0
    labels = sitk.Cast(src > 600, sitk.sitkUInt8)
    mask = prepare_on_grid(labels, ref, spec, role="mask", interpolator=sitk.sitkNearestNeighbor)
    assert set(np.unique(mask.slices)) <= {0.0, 1.0} and mask.slices.any() and mask.params is None
    empty = prepare_on_grid(labels * 0, ref, spec, role="mask", interpolator=sitk.sitkNearestNeighbor)
    assert not empty.slices.any()  # an empty label map is allowed


def test_restore_rejects_wrong_shape():
    pv = prepare_volume(_phantom(), _spec())
    with pytest.raises(PreprocessError, match="expected"):
        restore_volume(pv.slices[:, 1:], pv.context)


# ----------------------------------------------------------------------------- validation


def test_validate_volume_messages():
    with pytest.raises(PreprocessError, match="2-D"):
        validate_volume(sitk.Image([8, 8], sitk.sitkFloat32), "input")
    with pytest.raises(PreprocessError, match="4-D"):
        validate_volume(sitk.Image([8, 8, 8, 2], sitk.sitkFloat32), "input")
    with pytest.raises(PreprocessError, match="constant"):
        validate_volume(sitk.Image([8, 8, 8], sitk.sitkInt16) + 7, "input")
    arr = np.ones((4, 8, 8), np.float32)
    arr[0, 0, :3] = np.nan
    arr[1, 1, 1] = np.inf
    with pytest.raises(PreprocessError, match="input has 4 NaN or infinite voxels"):
        validate_volume(sitk.GetImageFromArray(arr), "input")
    with pytest.raises(PreprocessError, match="components"):
        validate_volume(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), "input")
    with pytest.raises(PreprocessError, match="smaller than the minimum 32"):
        prepare_volume(_phantom(size=(20, 36, 4)), _spec())
    with pytest.raises(PreprocessError, match="smaller than the minimum"):
        prepare_volume(_phantom(size=(40, 36, 4)), _spec(spacing=(2.0, 2.0)))


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_volume_round_trip_geometry():
    path = SHARED_DATA / "brain-mri" / "BraTS-MET-00110-000" / "BraTS-MET-00110-000-t1.nii.gz"
    if not path.is_file():
        pytest.skip(f"shared data not available at {path}")
    img = sitk.ReadImage(str(path))
    pv = prepare_volume(img, _spec())
    assert pv.context.original_orientation == "RAS"
    assert 0.1 < pv.foreground.mean() < 0.3
    restored = restore_volume(pv.slices, pv.context)
    _assert_same_geometry(restored, img)
    raw = sitk.GetArrayFromImage(img).astype(np.float32)
    fg = raw > 0.05 * pv.params.scale
    np.testing.assert_allclose(MRI.inverse(sitk.GetArrayFromImage(restored), pv.params)[fg], raw[fg], rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_restore_moves_voxels_as_sitk_flip_and_permute_do(case):
    # restore_volume undoes the reorientation with numpy views; SimpleITK's own filters are the reference
    kw, spacing = CASES[case]
    img = _phantom(**kw)
    pv = prepare_volume(img, _spec(spacing=spacing))
    ctx = pv.context
    y0, y1, x0, x1 = ctx.crop
    ref = ctx.prepared.apply_to(sitk.GetImageFromArray(pv.slices[:, y0:y1, x0:x1]))
    if ctx.resampled:
        ref = ctx.canonical.resample(ref, sitk.sitkLinear, 0.0)
    ref = sitk.PermuteAxes(sitk.Flip(ref, list(ctx.flip_axes)), list(ctx.permutation))
    restored = restore_volume(pv.slices, ctx)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(restored), sitk.GetArrayViewFromImage(ref))
