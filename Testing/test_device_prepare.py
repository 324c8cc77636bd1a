"""device_prepare (forced onto the CPU) equals preprocess.prepare_volume; the faster hole filling is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from DualDSynthesisLib.imaging.device_prepare import percentile, prepare_volume_on_device
from DualDSynthesisLib.imaging.preprocess import PreprocessError, PreprocessingSpec, prepare_volume
from DualDSynthesisLib.model.intensity import (
    SOURCE_NORMS,
    HounsfieldWindow,
    PercentileScale,
    ScaleParams,
    _fill_holes_per_slice,
)
from scipy import ndimage

BRATS_T1 = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain-mri" / "BraTS-GLI-00001-000"
            / "BraTS-GLI-00001-000-t1n.nii.gz")
MRI = PercentileScale(reference_scale=500.0)
CT = HounsfieldWindow()


def _head(size=(44, 40, 7), dtype=np.int16, ct: bool = False, seed: int = 0) -> sitk.Image:
    """A noisy ellipsoid with a dark hole in its middle (filled by the foreground) and an RAS direction."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in size[::-1]), indexing="ij")
    r2 = (i / 0.8) ** 2 + (j / 0.7) ** 2 + (k / 1.4) ** 2
    arr = np.where(r2 < 1, 300 + 700 * (1 - r2) + 150 * i + rng.normal(0, 30, r2.shape), 0)
    arr[r2 < 0.05] = 0  # a hole inside the head
    if ct:
        arr = np.where(r2 < 1, arr, -1000) - 200
    img = sitk.GetImageFromArray(arr.astype(dtype))
    img.SetSpacing((0.9, 1.1, 2.0))
    img.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    return img


@pytest.mark.parametrize("case", ["mri", "mri_float32_resampled", "ct", "mri_given_scale", "peak", "zscore", "rank"])
def test_device_path_equals_the_host_path(case: str) -> None:
    ct = case == "ct"
    image = _head(dtype=np.float32 if "float32" in case else np.int16, ct=ct)
    spacing = (1.0, 1.0) if "resampled" in case else None
    source = CT if ct else SOURCE_NORMS.get(case, MRI)
    spec = PreprocessingSpec(source=source, target=MRI, spacing=spacing)
    params = ScaleParams(400.0) if case == "mri_given_scale" else None
    host = prepare_volume(image, spec, "source", params=params)
    dev = prepare_volume_on_device(image, spec, "cpu", "source", params=params)
    assert dev.context == host.context
    assert np.array_equal(dev.foreground, host.foreground)
    assert host.foreground.sum() > 0
    assert type(dev.params) is type(host.params)
    for name, value in vars(host.params).items():
        assert getattr(dev.params, name) == pytest.approx(value, rel=1e-6)
    assert dev.slices.dtype == torch.float32 and dev.slices.shape == host.slices.shape
    np.testing.assert_allclose(dev.slices.numpy(), host.slices, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not BRATS_T1.exists(), reason="shared data not present")
@pytest.mark.shared_data
def test_device_path_equals_the_host_path_on_a_real_t1() -> None:
    image = sitk.ReadImage(str(BRATS_T1))
    spec = PreprocessingSpec(source=MRI, target=MRI)
    host, dev = prepare_volume(image, spec), prepare_volume_on_device(image, spec, "cpu")
    assert np.array_equal(dev.foreground, host.foreground)
    np.testing.assert_allclose(dev.slices.numpy(), host.slices, rtol=1e-6, atol=1e-7)


def test_percentile_is_numpys_linear_interpolation() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 1000):
        values = rng.normal(size=n).astype(np.float32)
        for q in (0.0, 1.0, 50.0, 99.5, 100.0):
            assert percentile(torch.from_numpy(values), q) == pytest.approx(float(np.percentile(values, q)), rel=1e-6)


def test_masks_and_bad_volumes_are_refused_with_the_host_messages() -> None:
    spec = PreprocessingSpec(source=MRI, target=MRI)
    with pytest.raises(PreprocessError, match="label masks"):
        prepare_volume_on_device(_head(), spec, "cpu", "mask")  # type: ignore[arg-type]
    flat = sitk.GetImageFromArray(np.full((5, 40, 40), 7, np.int16))
    with pytest.raises(PreprocessError, match="constant"):
        prepare_volume_on_device(flat, spec, "cpu")


def test_hole_filling_equals_scipys_fill_holes_per_plane() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = tuple(int(v) for v in rng.integers(1, 24, size=3))
        mask = rng.random(shape) < rng.random()
        if rng.random() < 0.5:
            mask[:, : shape[1] // 3] = False  # a bounding box away from the border
        expected = np.stack([ndimage.binary_fill_holes(plane) for plane in mask])
        assert np.array_equal(_fill_holes_per_slice(mask.copy()), expected)


def test_device_hole_filling_equals_scipys_fill_holes_per_plane() -> None:
    """The device path's flood fill (forced on the CPU) gives exactly the host's mask, here on random masks and
    on a spiral corridor whose background needs many more iterations than one convergence check."""
    from DualDSynthesisLib.imaging.device_prepare import TORCH_OPS, fill_holes_per_slice

    rng = np.random.default_rng(1)
    masks = []
    for _ in range(200):
        shape = tuple(int(v) for v in rng.integers(1, 24, size=3))
        mask = rng.random(shape) < rng.random()
        if rng.random() < 0.5:
            mask[:, : shape[1] // 3] = False
        masks.append(mask)
    spiral = np.ones((2, 41, 41), bool)  # plane 0: walls with a one-voxel corridor winding inwards from the border
    y0, y1, x0, x1, y, x = 0, 40, 0, 40, 0, 0
    spiral[0, 0, 0] = False
    while y0 <= y1 and x0 <= x1:
        for x in range(x0, x1 + 1):
            spiral[0, y0, x] = False
        for y in range(y0, y1 + 1):
            spiral[0, y, x1] = False
        y0, x1 = y0 + 2, x1 - 2
        for x in range(x1 + 2, x0 - 1, -1):
            spiral[0, y1, x] = False
        for y in range(y1, y0 - 1, -1):
            spiral[0, y, x0] = False
        y1, x0 = y1 - 2, x0 + 2
    spiral[1] = spiral[0]
    spiral[1, [0, -1], :] = True  # plane 1: the border closed, so all of the corridor is a hole
    spiral[1, :, [0, -1]] = True
    masks.append(spiral)
    for mask in masks:
        expected = np.stack([ndimage.binary_fill_holes(plane) for plane in mask])
        got = fill_holes_per_slice(torch.from_numpy(mask), check_every=3)
        assert np.array_equal(got.numpy(), expected)
        assert np.array_equal(TORCH_OPS.fill_holes(torch.from_numpy(mask)), expected)
    assert not fill_holes_per_slice(torch.from_numpy(spiral))[0].all()  # the open corridor stays background
    assert fill_holes_per_slice(torch.from_numpy(spiral))[1].all()
