"""Heatmap storage: 8 (or 16) bits with the scale in the header, read back by ITK within half a level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from DualDSynthesisLib.imaging import io as vio
from DualDSynthesisLib.imaging.heatmap_file import LEVELS, WIDE_LEVELS, stored_levels, stored_units

UNITS = "expected absolute error (t2 intensity units)"


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((0.9, 0.8, 2.5))
    image.SetOrigin((10.0, -4.0, 3.0))
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    return image


def _write(image: sitk.Image, path: Path, units: str = UNITS, source: str = "expected_error") -> sitk.Image:
    outputs = vio.AtomicOutputs()
    with outputs.transaction():
        outputs.write_heatmap(image, path, units, source)
    return sitk.ReadImage(str(path))


def _stored_type(path: Path) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData("datatype")  # the NIfTI header's own code: 2 uint8, 512 uint16, 16 float32


def _smooth_map(rng: np.random.Generator, high: float) -> np.ndarray:
    values = rng.uniform(0.0, high, size=(6, 20, 24))
    values[:, :3] = 0.0  # background: exactly 0, as the engine writes it
    return values


@pytest.mark.parametrize("name", ["heat.nii.gz", "heat.nii"])
def test_nifti_heatmap_is_uint8_with_scale_and_units(tmp_path: Path, rng, name: str) -> None:
    values = _smooth_map(rng, 0.93)  # a D2 map: 0..1
    image = _image(values)
    back = _write(image, tmp_path / name, "relative difficulty (1 − D2 confidence, 0–1)", "d2")
    assert _stored_type(tmp_path / name) == "2"
    assert back.GetPixelID() == sitk.sitkFloat32  # ITK applied scl_slope
    got = sitk.GetArrayFromImage(back)
    assert np.abs(got - values).max() <= values.max() / (2 * LEVELS) * 1.001
    assert got[:, :3].max() == 0.0
    assert back.GetSpacing() == pytest.approx(image.GetSpacing())
    assert back.GetOrigin() == pytest.approx(image.GetOrigin())
    assert back.GetDirection() == pytest.approx(image.GetDirection())
    assert stored_units(back) == "relative difficulty (1 - D2 confidence, 0-1)"  # ASCII in the header
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left over


def test_outliers_switch_to_uint16_so_the_bulk_keeps_its_levels(tmp_path: Path, rng) -> None:
    values = _smooth_map(rng, 1.0) * 700 + 500  # the bulk: 500..1200
    values[:, :3] = 0.0
    values[0, 5, 5] = 90_000.0  # a few extreme voxels, as the expected-error head gives at edges
    image = _image(values)
    assert stored_levels(image) == WIDE_LEVELS
    back = sitk.GetArrayFromImage(_write(image, tmp_path / "heat.nii.gz"))
    assert _stored_type(tmp_path / "heat.nii.gz") == "512"
    assert np.abs(back - values).max() <= 90_000.0 / (2 * WIDE_LEVELS) * 1.001
    assert stored_levels(_image(_smooth_map(rng, 1200.0))) == LEVELS  # no outliers: 8 bits suffice


def test_nrrd_heatmap_keeps_float_snapped_to_levels_with_units(tmp_path: Path, rng) -> None:
    values = _smooth_map(rng, 40.0)
    back = _write(_image(values), tmp_path / "heat.nrrd")
    got = sitk.GetArrayFromImage(back)
    assert back.GetPixelID() == sitk.sitkFloat32
    assert np.abs(got - values).max() <= values.max() / (2 * LEVELS) * 1.001
    assert len(np.unique(got)) <= LEVELS + 1
    assert stored_units(back) == UNITS and back.GetMetaData("DualD_heatmap_source") == "expected_error"


def test_all_zero_heatmap_round_trips(tmp_path: Path) -> None:
    back = _write(_image(np.zeros((3, 8, 8))), tmp_path / "heat.nii.gz")
    assert not sitk.GetArrayViewFromImage(back).any()


def test_non_finite_heatmap_is_refused(tmp_path: Path) -> None:
    values = np.ones((3, 8, 8))
    values[1, 2, 2] = np.nan
    with pytest.raises(vio.DualDError, match="NaN or infinite"):
        _write(_image(values), tmp_path / "heat.nii.gz")
    assert not list(tmp_path.iterdir())
