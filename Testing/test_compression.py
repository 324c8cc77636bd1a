"""The .nii.gz outputs' gzip (imaging/compression.py): lossless, one ordinary gzip member, nothing left behind."""

from __future__ import annotations

import gzip
import importlib
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from DualDSynthesisLib.imaging import compression, io


def _image() -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(100, 30, (7, 20, 24)).astype(np.float32))
    image.SetSpacing((0.9, 1.1, 3.0))
    image.SetOrigin((-10.0, 5.0, 2.5))
    return image


def test_a_gzipped_nifti_reads_back_voxel_for_voxel(tmp_path) -> None:
    path = tmp_path / "s.nii.gz"
    io.write_image_file(_image(), path)
    back = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayFromImage(_image()))
    # NIfTI stores the geometry in float32, whichever writer compresses it
    assert np.allclose(back.GetSpacing(), _image().GetSpacing()) and np.allclose(back.GetOrigin(), _image().GetOrigin())
    with gzip.open(path, "rb") as f:  # Python's own gzip reads it too, as one stream
        assert len(f.read()) > 7 * 20 * 24 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.nii.gz"]  # the plain file is gone
    assert io.nifti_integrity_problem(path) is None  # the trailer check (one member) holds


def test_the_plain_file_is_removed_when_the_writer_fails(tmp_path) -> None:
    def broken(plain) -> None:
        plain.write_bytes(b"half a header")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        compression.write_gzipped(tmp_path / "x.nii.gz", broken)
    assert list(tmp_path.iterdir()) == []


def test_without_isal_zlib_writes_the_same_voxels(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "isal", None)  # python-isal not installed
    fallback = importlib.reload(compression)
    try:
        assert fallback.ENGINE == "zlib"
        fallback.write_gzipped(tmp_path / "z.nii.gz",
                               lambda plain: sitk.WriteImage(_image(), str(plain), useCompression=False))
        back = sitk.ReadImage(str(tmp_path / "z.nii.gz"))
        assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayFromImage(_image()))
    finally:
        monkeypatch.undo()
        importlib.reload(compression)
