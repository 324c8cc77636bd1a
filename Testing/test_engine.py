"""Synthesis engine: geometry, orientation invariance, heatmap from D2, cancel, bad input, determinism."""

from __future__ import annotations

import dataclasses
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bundles import TINY, make_bundle
from DualDSynthesisLib.imaging.preprocess import foreground_mask
from DualDSynthesisLib.inference.engine import (
    SynthesisCancelled,
    SynthesisEngine,
    SynthesisError,
    modality_warning,
    synthesize_file,
)
from DualDSynthesisLib.model.networks import ArchitectureConfig


def head(size=(48, 48, 6), spacing=(1.0, 1.0, 1.0), direction=None, origin=(0.0, 0.0, 0.0),
         radius: float = 0.35) -> sitk.Image:
    """int16 ellipsoid 'head' with texture on a zero background; ``size`` is (i, j, k)."""
    nx, ny, nz = size
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    inside = (x / radius) ** 2 + (y / (radius * 1.2)) ** 2 + (z / 1.3) ** 2 < 1
    arr = (inside * (500 + 300 * np.sin(7 * x + 3 * y) + 100 * z)).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _oblique() -> tuple[float, ...]:
    a, b = math.radians(20), math.radians(10)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rz @ rx).ravel())


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="module")
def engine(bundle_dir: Path) -> SynthesisEngine:
    return SynthesisEngine(make_bundle(bundle_dir / "tiny.safetensors"), device="cpu", batch_size=2)


def _same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-12)


GEOMETRIES = {
    "identity_lps": {},
    "direction_-1-11": {"direction": (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), "origin": (10.0, -5.0, 3.0)},
    "oblique": {"direction": _oblique(), "origin": (-20.0, 4.0, 7.5)},
    "anisotropic_0.9x0.9x5.5": {"spacing": (0.9, 0.9, 5.5)},
    "inplane_0.5mm_vs_bundle_1mm": {"size": (80, 72, 4), "spacing": (0.5, 0.5, 2.0)},
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometry_is_preserved(engine: SynthesisEngine, name: str) -> None:
    image = head(**GEOMETRIES[name])
    result = engine.run(image)
    for out in (result.synthetic, result.heatmap):
        _same_geometry(out, image)
        assert out.GetPixelID() == sitk.sitkFloat32
    syn = sitk.GetArrayViewFromImage(result.synthetic)
    heat = sitk.GetArrayViewFromImage(result.heatmap)
    assert np.isfinite(syn).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert result.warnings == [] and result.device == "cpu" and result.seconds > 0


def test_lps_and_ras_give_the_same_values(engine: SynthesisEngine) -> None:
    lps = head(size=(40, 44, 5), spacing=(0.9, 1.1, 2.0), origin=(-20.0, -25.0, 5.0))
    n_i, n_j = lps.GetSize()[:2]
    arr = sitk.GetArrayFromImage(lps)
    ras = sitk.GetImageFromArray(np.ascontiguousarray(arr[:, ::-1, ::-1]))
    ras.SetSpacing(lps.GetSpacing())
    ras.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    ras.SetOrigin(lps.TransformIndexToPhysicalPoint((n_i - 1, n_j - 1, 0)))
    assert ras.TransformIndexToPhysicalPoint((0, 0, 0)) == lps.TransformIndexToPhysicalPoint((n_i - 1, n_j - 1, 0))
    a, b = engine.run(lps), engine.run(ras)
    for x, y in ((a.synthetic, b.synthetic), (a.heatmap, b.heatmap)):
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(x), sitk.GetArrayViewFromImage(y)[:, ::-1, ::-1])


def test_heatmap_comes_from_d2(bundle_dir: Path) -> None:
    logit = 0.7
    constant = SynthesisEngine(make_bundle(bundle_dir / "const.safetensors", constant_d2_logit=logit), "cpu")
    image = head()
    result = constant.run(image)
    heat = sitk.GetArrayFromImage(result.heatmap)
    fg = foreground_mask(sitk.GetArrayFromImage(image), "mri_percentile")
    assert result.heatmap_source == "d2" and "relative difficulty" in result.heatmap_units
    np.testing.assert_allclose(heat[fg], 1.0 - 1.0 / (1.0 + math.exp(-logit)), rtol=0, atol=1e-6)
    assert (heat[~fg] == 0).all()  # nothing outside the foreground is tinted


def test_crop_matches_whole_slices_inside_the_foreground(bundle_dir: Path) -> None:
    path = make_bundle(bundle_dir / "tiny.safetensors")
    image = head(size=(192, 176, 3), radius=0.12)
    cropped, whole = SynthesisEngine(path, "cpu"), SynthesisEngine(path, "cpu", crop=False)
    fg = sitk.GetArrayViewFromImage(image) > 0
    assert cropped._crop_box(np.broadcast_to(fg, fg.shape), "d2") != (0, 176, 0, 192)  # a real crop
    a, b = cropped.run(image), whole.run(image)
    for x, y in ((a.synthetic, b.synthetic), (a.heatmap, b.heatmap)):
        np.testing.assert_allclose(sitk.GetArrayViewFromImage(x)[fg], sitk.GetArrayViewFromImage(y)[fg],
                                   rtol=1e-5, atol=1e-4)


def test_receptive_margin_covers_the_generator() -> None:
    arch = ArchitectureConfig(g_base_width=2, g_depth=3, d2_base_width=2)
    g = arch.generator().eval()
    x = torch.randn(1, 1, 256, 256, requires_grad=True)
    g(x)[0, 0, 128, 128].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    assert arch.receptive_margin(with_d2=False) >= max(128 - int(rows.min()), int(rows.max()) - 128)


def test_cancel_at_half_stops_within_one_batch(engine: SynthesisEngine, tmp_path: Path) -> None:
    image = head(size=(40, 40, 12))
    calls = {"batches": 0, "at_cancel": None}
    real_infer = engine._infer

    def counting_infer(batch, with_heatmap):
        calls["batches"] += 1
        return real_infer(batch, with_heatmap)

    state = {"fraction": 0.0}

    def progress(fraction: float, _message: str) -> None:
        state["fraction"] = fraction

    def cancel() -> bool:
        if state["fraction"] >= 0.5 and calls["at_cancel"] is None:
            calls["at_cancel"] = calls["batches"]
        return state["fraction"] >= 0.5

    engine._infer = counting_infer
    try:
        with pytest.raises(SynthesisCancelled):
            engine.run(image, progress=progress, cancel=cancel)
        assert calls["at_cancel"] is not None and calls["batches"] - calls["at_cancel"] <= 1
        assert calls["batches"] < 12 // engine.batch_size
        source = tmp_path / "in.nii.gz"
        sitk.WriteImage(image, str(source))
        state["fraction"] = 0.0
        with pytest.raises(SynthesisCancelled):
            synthesize_file(source, tmp_path / "out.nii.gz", tmp_path / "heat.nii.gz", engine=engine,
                            png=tmp_path / "o.png", progress=progress, cancel=cancel)
    finally:
        del engine._infer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _nan_image() -> sitk.Image:
    arr = sitk.GetArrayFromImage(sitk.Cast(head(), sitk.sitkFloat32))
    arr[0, 0, :2] = np.nan
    arr[1, 1, 1] = np.inf
    return sitk.GetImageFromArray(arr)


BAD_IMAGES = {
    "2-D": (lambda: sitk.Image([40, 40], sitk.sitkFloat32), "2-D image; a 3-D volume is needed"),
    "4-D": (lambda: sitk.Image([40, 40, 4, 2], sitk.sitkFloat32), "4-D image; a 3-D volume is needed"),
    "empty": (lambda: sitk.Image([0, 40, 4], sitk.sitkFloat32), "is empty"),
    "constant": (lambda: sitk.Image([40, 40, 4], sitk.sitkInt16) + 7, "is constant (every voxel is 7)"),
    "nan_inf": (_nan_image, "has 3 NaN or infinite voxels"),
    "too_small": (lambda: head(size=(20, 20, 4)), "smaller than the minimum 32"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_input_gets_one_sentence(engine: SynthesisEngine, name: str) -> None:
    make, expected = BAD_IMAGES[name]
    with pytest.raises(SynthesisError) as info:
        engine.run(make())
    message = str(info.value)
    assert expected in message and "the input volume" in message and "\n" not in message


def test_input_without_foreground(engine: SynthesisEngine) -> None:
    arr = np.full((4, 40, 40), -3, np.int16)
    arr[0, 0, 0] = -10
    with pytest.raises(SynthesisError, match="foreground"):
        engine.run(sitk.GetImageFromArray(arr))


def test_unreadable_and_truncated_files(engine: SynthesisEngine, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not an image at all" * 10))
    good = _write(head(), tmp_path / "good.nii")
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (garbage, truncated):
        with pytest.raises(SynthesisError, match=rf"{path.name} could not be read as an image"):
            synthesize_file(path, tmp_path / "out.nii.gz", engine=engine)
    with pytest.raises(SynthesisError, match="does not exist"):
        synthesize_file(tmp_path / "missing.nii.gz", tmp_path / "out.nii.gz", engine=engine)
    assert not (tmp_path / "out.nii.gz").exists()


def test_bundle_that_fails_to_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(SynthesisError, match=r"could not be loaded.*bad\.safetensors"):
        SynthesisEngine(bad, "cpu")
    with pytest.raises(SynthesisError, match=r"could not be loaded.*does not exist"):
        SynthesisEngine(tmp_path / "none.safetensors", "cpu")
    with pytest.raises(SynthesisError, match="unknown device"):
        SynthesisEngine(make_bundle(tmp_path / "ok.safetensors"), "tpu")


def test_modality_mismatch_warns_naming_both(engine: SynthesisEngine) -> None:
    result = engine.run(head(), source_modality="CT")
    assert len(result.warnings) == 1 and "CT" in result.warnings[0] and "t1" in result.warnings[0]
    assert engine.run(head(), source_modality="T1w").warnings == []
    assert modality_warning("MR", "t1") is None and "t2" in modality_warning("t2", "t1")
    dicom_like = head()
    dicom_like.SetMetaData("0008|0060", "CT")
    assert "CT" in engine.run(dicom_like).warnings[0]


def test_existing_output_is_not_overwritten(engine: SynthesisEngine, tmp_path: Path) -> None:
    source = _write(head(), tmp_path / "in.nii.gz")
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        synthesize_file(source, out, engine=engine)
    assert out.read_bytes() == b"keep me"
    synthesize_file(source, out, engine=engine, overwrite=True)
    _same_geometry(sitk.ReadImage(str(out)), head())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "out.nii.gz"]


def test_bundle_without_d2(bundle_dir: Path, tmp_path: Path) -> None:
    unet = SynthesisEngine(make_bundle(bundle_dir / "unet.safetensors", with_d2=False), "cpu")
    result = unet.run(head())
    assert result.heatmap is None and "neither an expected-error head nor" in result.warnings[0]
    source = _write(head(), tmp_path / "in.nii.gz")
    with pytest.raises(SynthesisError, match="cannot write a heatmap"):
        synthesize_file(source, tmp_path / "o.nii.gz", tmp_path / "h.nii.gz", engine=unet)


def test_cpu_determinism(engine: SynthesisEngine) -> None:
    image = head(spacing=(0.9, 0.9, 5.5))
    a, b = engine.run(image), engine.run(image)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a.synthetic), sitk.GetArrayViewFromImage(b.synthetic))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a.heatmap), sitk.GetArrayViewFromImage(b.heatmap))


def test_mask_sets_background_outside(engine: SynthesisEngine) -> None:
    image = head()
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(image)
    mask[10:30, 10:30, :] = 1
    result = engine.run(image, mask=mask)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    syn, heat = sitk.GetArrayViewFromImage(result.synthetic), sitk.GetArrayViewFromImage(result.heatmap)
    assert (syn[~inside] == 0).all() and (heat[~inside] == 0).all() and syn[inside].max() > 0
    with pytest.raises(SynthesisError, match="does not cover"):
        engine.run(image, mask=sitk.Image(image.GetSize(), sitk.sitkUInt8))


def test_gpu_out_of_memory_halves_the_batch_then_uses_the_cpu(bundle_dir: Path) -> None:
    eng = SynthesisEngine(make_bundle(bundle_dir / "tiny.safetensors"), "cpu", batch_size=4)
    expected = eng.run(head())
    eng._blank[("cuda", "d2")] = eng._blank_response("d2")
    real_infer = eng._infer

    def infer(batch, with_heatmap):
        if eng.device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real_infer(batch, with_heatmap)

    eng._infer = infer
    eng.device = torch.device("cuda")  # pretend: every call on it runs out of memory
    result = eng.run(head())
    assert [w.split(";")[-1].strip() for w in result.warnings] == [
        "the batch size was reduced to 2", "the batch size was reduced to 1", "continuing on the CPU"]
    assert result.device == "cpu"
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(result.synthetic),  # batch 1 vs 4: float rounding only
                               sitk.GetArrayViewFromImage(expected.synthetic), rtol=1e-6, atol=0)


@pytest.mark.parametrize("context", [0, 1])
def test_device_preprocessing_forced_on_the_cpu_equals_the_host_path(tmp_path: Path, context: int) -> None:
    """The CUDA path (``prepare_volume_on_device``, slices kept as a tensor, stacks and batches built from
    it) forced onto the CPU gives the host path's synthesis and heatmap; the CPU default is the host path."""
    arch = dataclasses.replace(TINY, in_channels=2 * context + 1)
    bundle = make_bundle(tmp_path / f"ctx{context}.safetensors", arch, context_slices=context)
    host = SynthesisEngine(bundle, device="cpu", batch_size=3)
    device = SynthesisEngine(bundle, device="cpu", batch_size=3, device_preprocessing=True)
    assert host.device_preprocessing is False and device.device_preprocessing is True
    image = head(direction=_oblique(), spacing=(0.9, 1.1, 2.0))
    a, b = host.run(image), device.run(image)
    assert b.heatmap is not None and a.heatmap is not None
    for x, y in ((a.synthetic, b.synthetic), (a.heatmap, b.heatmap)):
        _same_geometry(x, y)
        np.testing.assert_allclose(sitk.GetArrayFromImage(y), sitk.GetArrayFromImage(x), rtol=1e-6, atol=1e-6)


def test_statistics_behind_the_device_networks_give_the_host_warnings(tmp_path: Path, monkeypatch) -> None:
    """With the networks on a device (here the forced device path) the out-of-distribution statistics run
    in a background thread (input_stats.py); the warnings equal those computed at once on the host path."""
    from DualDSynthesisLib.imaging.fingerprint import fingerprint, volume_stats
    from DualDSynthesisLib.inference import input_stats

    bundle = make_bundle(tmp_path / "fp.safetensors", TINY)
    host = SynthesisEngine(bundle, device="cpu", batch_size=3)
    device = SynthesisEngine(bundle, device="cpu", batch_size=3, device_preprocessing=True)
    trained = fingerprint([volume_stats(host._prepare(head(radius=r)), host.spec.source) for r in (0.3, 0.35)])
    host.fingerprint = device.fingerprint = trained
    modes = []
    real = input_stats.InputStats.__init__

    def spy(self, prepared, mapping, background):
        modes.append(background)
        real(self, prepared, mapping, background)

    monkeypatch.setattr(input_stats.InputStats, "__init__", spy)
    image = head(size=(64, 64, 6), spacing=(2.0, 2.0, 4.0))  # coarser than the training data: warns
    a, b = host.run(image), device.run(image)
    assert modes == [False, True]
    assert a.warnings == b.warnings and any("spacing" in w for w in a.warnings)
