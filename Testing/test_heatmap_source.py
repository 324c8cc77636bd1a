"""``--heatmap-source``: the bundle's preferred map by default, the other on request, one line when it is missing;
the written file says which map it holds and in what units."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from bundles import TINY, make_bundle
from DualDSynthesisLib.cli import synthesize as cli
from DualDSynthesisLib.imaging.heatmap_file import stored_units
from test_engine import head


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with G's expected-error head and a trained D2."""
    return make_bundle(tmp_path_factory.mktemp("both") / "both.safetensors", replace(TINY, g_error_head=True))


@pytest.fixture(scope="module")
def d2_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("d2") / "d2.safetensors")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("in") / "sub_t1.nii.gz"
    sitk.WriteImage(head(), str(path))
    return path


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["-q", "--device", "cpu", *argv])
    return code, capsys.readouterr().err


def _heat(capsys, model: Path, source: Path, out: Path, *extra: str) -> sitk.Image:
    code, err = _run(capsys, str(source), "-o", str(out / "syn.nii.gz"), "--heatmap", str(out / "heat.nii.gz"),
                     "--model", str(model), *extra)
    assert code == 0, err
    return sitk.ReadImage(str(out / "heat.nii.gz"))


def test_default_is_expected_error_and_d2_on_request(both: Path, source: Path, tmp_path: Path, capsys) -> None:
    default = _heat(capsys, both, source, tmp_path / "a")
    assert stored_units(default) == "expected absolute error (t2 intensity units)"
    d2 = _heat(capsys, both, source, tmp_path / "b", "--heatmap-source", "d2")
    assert stored_units(d2) == "relative difficulty (1 - D2 confidence, 0-1)"
    values = sitk.GetArrayViewFromImage(d2)
    assert values.max() <= 1.0 and values.max() > 0
    assert not np.allclose(sitk.GetArrayViewFromImage(default), values)  # two different maps


def test_missing_map_is_one_line(d2_only: Path, source: Path, tmp_path: Path, capsys) -> None:
    code, err = _run(capsys, str(source), "-o", str(tmp_path / "syn.nii.gz"), "--heatmap", str(tmp_path / "h.nii"),
                     "--model", str(d2_only), "--heatmap-source", "expected_error")
    assert code == cli.EXIT_BAD_INPUT
    assert err.strip() == "duald-synthesize: error: this model has no expected_error map; it offers d2"
    assert not list(tmp_path.iterdir())
    assert stored_units(_heat(capsys, d2_only, source, tmp_path / "c")).startswith("relative difficulty")


def test_help_names_both_maps_and_the_default(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--heatmap-source {expected_error,d2}" in text
    assert "default: the model's first, expected_error when it has one" in text


def test_dicom_parametric_map_names_the_map_and_its_units(both: Path, source: Path, tmp_path: Path, capsys) -> None:
    import pydicom

    code, err = _run(capsys, str(source), "--model", str(both), "--dicom-out", str(tmp_path / "dicom"))
    assert code == 0, err
    pm = pydicom.dcmread(tmp_path / "dicom" / "DIFFICULTY" / "PM00001.dcm")
    assert pm.ContentDescription == "expected absolute error (t2 intensity units)"
    assert pm.ContentLabel == "EXPECTED_ERROR"
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "EXPECTED ERROR" and mapping.DoubleFloatRealWorldValueLastValueMapped > 0


def test_overview_captions_the_heatmap_with_its_units(tmp_path: Path) -> None:
    from DualDSynthesisLib.imaging.overview import CAPTION_HEIGHT, heatmap_caption, overview_image

    image = sitk.Cast(head(spacing=(1.0, 1.0, 8.0)), sitk.sitkFloat32)  # 48 mm cube: three 256-wide panels
    heat = image * 0.5  # an expected-error map of ~50-450 units inside the head, 0 outside
    units = "expected absolute error (t2 intensity units)"
    assert heatmap_caption(units) == "heatmap: expected absolute error (t2 intensity units)"
    assert heatmap_caption("") == "heatmap: relative difficulty (1 - D2 confidence, 0-1)"  # the kind's own sentence
    figure = sitk.GetArrayFromImage(overview_image(image, image, heat, units, "expected_error"))
    strip, panels = figure[:CAPTION_HEIGHT], figure[CAPTION_HEIGHT:]
    assert figure.shape[1] == 3 * 256 + 2 * 4
    # the colour bar under the heatmap column runs from dark (0) to pale yellow (its top value)
    bar = panels[3 * 256 + 2 * 4 + 4 : 3 * 256 + 2 * 4 + 12, 2 * (256 + 4) + 30 :].astype(int)
    assert bar[..., 0].max() > 240 and bar[..., 1].max() > 240 and bar[..., :, :].min() < 60
    third = 2 * (256 + 4)
    assert (strip[:, third:] > 200).any()  # text over the heatmap column
    assert (strip[:, :third] > 200).any()  # and over the others
    # Scaled to its own range (0 to its 99th percentile), not clipped at 1 as a D2 map would be: both
    # pale (high) and red-purple with little green (mid) appear inside the head, not one saturated colour.
    over = panels[:256, third:].astype(int)
    red, green = over[..., 0], over[..., 1]
    assert ((red > 200) & (green > 150)).any() and ((red > 100) & (green < 90)).any()
