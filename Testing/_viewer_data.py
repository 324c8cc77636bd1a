"""Generated inputs for the viewer tests (session and browser): a small head-like volume, labels, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from DualDSynthesisLib.cli import synthesize as synth_cli


def small_volume(shape=(12, 64, 64), lesion_value=900.0) -> sitk.Image:
    """A head-like ellipsoid with texture and one bright 'lesion' (1.5 mm in-plane, 3 mm slices)."""
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    cy, cx, cz = shape[1] / 2, shape[2] / 2, shape[0] / 2
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + ((z - cz) * 3) ** 2)
    head = r < 0.42 * shape[2]
    array = np.where(head, 300 + 200 * np.sin(x / 7.0) + 100 * np.cos(y / 5.0), 0).astype(np.float32)
    lesion = np.sqrt((x - 1.25 * cx) ** 2 + (y - 0.8 * cy) ** 2 + ((z - cz) * 3) ** 2) < 0.1 * shape[2]
    array[lesion] = lesion_value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 3.0))
    return image


def labels_for(image: sitk.Image) -> sitk.Image:
    array = sitk.GetArrayFromImage(image)
    labels = np.zeros(array.shape, np.uint8)
    labels[array > 0] = 1
    labels[array >= 900] = 2
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


def write_bad_inputs(folder: Path) -> dict[str, Path]:
    """A text file, a 2-D image and a 4-D image: what the page must refuse like the CLI does."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.txt"
    text.write_text("not an image\n")
    flat = folder / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)), str(flat))
    four = folder / "series4d.nii.gz"
    volume = sitk.GetImageFromArray(np.random.default_rng(1).random((8, 16, 16)).astype(np.float32))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(four))  # a time series: a true 4-D image
    return {"non-image": text, "2-D": flat, "4-D": four}


def cli_error(path: Path, tmp_path: Path, capsys) -> str:
    """What duald-synthesize prints for ``path`` after 'duald-synthesize: error: '."""
    code = synth_cli.main(["-q", str(path), "-o", str(tmp_path / "cli_out.nii.gz")])
    err = capsys.readouterr().err.strip().splitlines()[0]
    assert code == synth_cli.EXIT_BAD_INPUT
    prefix = f"{synth_cli.PROG}: error: "
    assert err.startswith(prefix)
    return err[len(prefix) :]
