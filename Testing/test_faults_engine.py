"""Fault rows of the engine (issue 21): a model that writes one value everywhere, a mask on another grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bundles import T2_REFERENCE_SCALE, make_bundle
from DualDSynthesisLib.inference.engine import SynthesisEngine, SynthesisError
from test_engine import head


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("faults") / "tiny.safetensors")


def _constant_engine(bundle: Path, bias: float) -> SynthesisEngine:
    """An engine whose generator outputs ``bias`` everywhere (what a barely trained model comes close to)."""
    engine = SynthesisEngine(bundle, device="cpu", batch_size=2)
    with torch.no_grad():
        engine._generator.head.weight.zero_()
        engine._generator.head.bias.fill_(bias)
    return engine


def _constant_warnings(warnings: list[str]) -> list[str]:
    return [w for w in warnings if "produced no image" in w]


@pytest.mark.parametrize(("bias", "value"), [(-1.0, 0.0), (0.5, 0.5 * T2_REFERENCE_SCALE)])
def test_a_constant_synthetic_warns_naming_its_value(bundle: Path, bias: float, value: float) -> None:
    """A negative output is clipped to the target's background (an all-zero synthetic, as a 2-step duald-train
    bundle writes); a positive one is constant too. Either is one warning naming the value."""
    result = _constant_engine(bundle, bias).run(head())
    syn = sitk.GetArrayViewFromImage(result.synthetic)
    assert np.unique(syn).tolist() == [value]
    (warning,) = _constant_warnings(result.warnings)
    assert f"is {value:g} everywhere inside the input's foreground" in warning and warning.count(".") <= 1


def test_a_varying_synthetic_does_not_warn(bundle: Path) -> None:
    result = SynthesisEngine(bundle, device="cpu", batch_size=2).run(head())
    assert np.ptp(sitk.GetArrayViewFromImage(result.synthetic)) > 0
    assert _constant_warnings(result.warnings) == []


def _mask_on(size: tuple[int, int, int], spacing: tuple[float, float, float],
             origin: tuple[float, float, float]) -> sitk.Image:
    mask = sitk.Image(size, sitk.sitkUInt8) + 1  # every voxel inside
    mask.SetSpacing(spacing)
    mask.SetOrigin(origin)
    return mask


def test_a_mask_on_another_grid_that_barely_overlaps_says_so(bundle: Path) -> None:
    engine = SynthesisEngine(bundle, device="cpu", batch_size=2)
    image = head()  # 48×48×6 of 1 mm at the origin
    # 2 mm voxels, shifted so that only its first 4 columns (of 24) fall on the image: about 1/6 of the mask
    mask = _mask_on((24, 24, 3), (2.0, 2.0, 2.0), (40.0, 0.0, 0.0))
    result = engine.run(image, mask=mask, skull="keep")  # the mask only blanks the outputs outside it
    (warning,) = [w for w in result.warnings if "another grid" in w]
    assert "24×24×3 voxels of 2×2×2 mm" in warning and "48×48×6 voxels of 1×1×1 mm" in warning
    share = int(warning.split("(")[-1].split(" %")[0])
    assert 10 <= share <= 25
    syn = sitk.GetArrayViewFromImage(result.synthetic)
    assert (syn[:, :, :39] == 0).all()  # outside the mask: background


def test_a_brain_mask_that_leaves_no_input_is_refused_by_name(bundle: Path) -> None:
    # auto with a mask strips inside it (skull_policy): a mask beside the head leaves nothing to synthesise
    engine = SynthesisEngine(bundle, device="cpu", batch_size=2)
    with pytest.raises(SynthesisError, match="inside the brain mask the input is empty"):
        engine.run(head(), mask=_mask_on((24, 24, 3), (2.0, 2.0, 2.0), (40.0, 0.0, 0.0)))


def test_a_mask_on_another_grid_that_covers_the_image_is_a_note(bundle: Path) -> None:
    engine = SynthesisEngine(bundle, device="cpu", batch_size=2)
    image = head()
    mask = _mask_on((96, 96, 12), (0.5, 0.5, 0.5), (-0.25, -0.25, -0.25))  # the image's extent, finer
    result = engine.run(image, mask=mask)
    assert not [w for w in result.warnings if "another grid" in w]
    (note,) = [n for n in result.notes if "another grid" in n]
    assert "(100 %)" in note


def test_a_mask_on_the_same_grid_says_nothing(bundle: Path) -> None:
    engine = SynthesisEngine(bundle, device="cpu", batch_size=2)
    image = head()
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    mask.CopyInformation(image)
    result = engine.run(image, mask=mask)
    assert not [m for m in result.warnings + result.notes if "grid" in m]


def test_a_mask_on_another_grid_that_misses_the_image_is_refused(bundle: Path) -> None:
    engine = SynthesisEngine(bundle, device="cpu", batch_size=2)
    mask = _mask_on((10, 10, 3), (2.0, 2.0, 2.0), (500.0, 0.0, 0.0))
    with pytest.raises(SynthesisError, match=r"another grid .* none of its 0?\d* ?mL lands on the input") as caught:
        engine.run(head(), mask=mask)
    assert str(caught.value).count(".") <= 2  # one sentence (the decimal points of the spacings aside)
