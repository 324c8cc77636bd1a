"""Brain extraction and skull stripping (``--skull``): BET on a phantom head, the strip copy, the engine's modes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk
from bundles import make_bundle
from DualDSynthesisLib.imaging.brainmask import BrainMaskError, estimate_brain_mask, strip
from DualDSynthesisLib.imaging.fingerprint import fingerprint, volume_stats
from DualDSynthesisLib.inference.engine import SynthesisCancelled, SynthesisEngine, SynthesisError
from test_engine import head

SPACING = 1.5


def phantom_head() -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """A T1-like head at 1.5 mm: a textured brain ellipsoid (~1,300 mL), a dark CSF and bone layer, then a
    bright scalp (fat) shell. Returns the image, the true brain and the scalp, as [k, j, i] masks."""
    n = (100, 128, 128)
    z, y, x = np.meshgrid(*[(np.arange(s) - s / 2 + 0.5) * SPACING for s in n], indexing="ij")
    r = np.sqrt((x / 65) ** 2 + (y / 80) ** 2 + (z / 58) ** 2)  # 1 at the brain's surface
    brain = r < 1.0
    scalp = (r >= 1.17) & (r < 1.27)
    rng = np.random.default_rng(0)
    arr = np.zeros(n, np.float32)
    arr[brain] = 420 + 80 * np.sin(x[brain] / 6) * np.cos(y[brain] / 7) + rng.normal(0, 15, brain.sum())
    arr[(r >= 1.0) & (r < 1.17)] = 40  # CSF and bone: dark on T1
    arr[scalp] = 750
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((SPACING,) * 3)
    return image, brain, scalp


@pytest.fixture(scope="module")
def bet_result():
    image, brain, scalp = phantom_head()
    return image, brain, scalp, estimate_brain_mask(image)


def test_bet_finds_the_brain_not_the_scalp(bet_result) -> None:
    image, brain, scalp, mask = bet_result
    assert mask.GetSize() == image.GetSize() and mask.GetPixelID() == sitk.sitkUInt8
    m = sitk.GetArrayFromImage(mask) > 0
    dice = 2 * (m & brain).sum() / (m.sum() + brain.sum())
    assert dice > 0.9, dice
    assert (m & scalp).sum() / scalp.sum() < 0.02


def test_bet_on_an_anisotropic_grid(bet_result) -> None:
    """The clinical case that made the package fail: 4 mm slices. The mask comes back on the input's grid."""
    image, brain = bet_result[:2]
    thick = sitk.Resample(image, [128, 128, 38], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                          (SPACING, SPACING, 4.0), image.GetDirection(), 0.0)
    mask = estimate_brain_mask(thick)
    assert mask.GetSize() == thick.GetSize() and mask.GetSpacing() == thick.GetSpacing()
    truth = sitk.GetImageFromArray(brain.astype(np.uint8))
    truth.CopyInformation(image)
    truth = sitk.Resample(truth, thick, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    a, b = sitk.GetArrayViewFromImage(mask) > 0, sitk.GetArrayViewFromImage(truth) > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85


def test_implausible_brain_volume_is_refused(bet_result) -> None:
    image = bet_result[0]
    with pytest.raises(BrainMaskError, match="not a plausible brain"):
        estimate_brain_mask(image, plausible_ml=(1.0, 10.0))


def test_missing_package_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "brainextractor", None)
    with pytest.raises(BrainMaskError, match="pip install brainextractor"):
        estimate_brain_mask(head())


def test_strip_is_a_copy_and_resamples_the_mask() -> None:
    image = head(size=(32, 32, 4))
    before = sitk.GetArrayFromImage(image).copy()
    coarse = sitk.Image([16, 16, 4], sitk.sitkUInt8)
    coarse.SetSpacing((2.0, 2.0, 1.0))
    coarse[4:12, 4:12, :] = 1  # voxels 8..23 of the 1 mm grid
    out = sitk.GetArrayFromImage(strip(image, coarse))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)
    inside = np.zeros(before.shape, bool)
    inside[:, 8:24, 8:24] = True
    assert (out[~inside] == 0).all() and np.array_equal(out[inside], before[inside])
    with pytest.raises(BrainMaskError, match="does not cover"):
        strip(image, sitk.Image([16, 16, 4], sitk.sitkUInt8))


# ----------------------------------------------------------------------------- the engine's modes


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SynthesisEngine:
    path = make_bundle(tmp_path_factory.mktemp("b") / "t.safetensors")
    return SynthesisEngine(path, device="cpu", batch_size=4)


def big_head() -> sitk.Image:
    """A 'whole head' by the fingerprint's rule (foreground over 2,000 mL) and a brain mask inside it."""
    return head(size=(48, 48, 16), spacing=(6.0, 6.0, 6.0), radius=0.8)


def _brain_of(image: sitk.Image) -> sitk.Image:
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(image)
    mask[14:34, 14:34, 2:10] = 1
    return mask


def test_strip_with_a_given_brain_mask(engine: SynthesisEngine) -> None:
    image = big_head()
    before = sitk.GetArrayFromImage(image).copy()
    brain = _brain_of(image)
    result = engine.run(image, mask=brain, skull="strip")
    inside = sitk.GetArrayViewFromImage(brain) > 0
    syn, heat = sitk.GetArrayViewFromImage(result.synthetic), sitk.GetArrayViewFromImage(result.heatmap)
    assert (syn[~inside] == 0).all() and (heat[~inside] == 0).all() and syn[inside].max() > 0
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), before)  # the caller's volume is untouched
    assert any("inside the brain only (the given brain mask" in n for n in result.notes)
    # what the networks saw is the stripped head: the same as synthesising a pre-stripped copy with "keep"
    kept = engine.run(strip(image, brain), mask=brain, skull="keep")
    np.testing.assert_allclose(syn, sitk.GetArrayViewFromImage(kept.synthetic), atol=1e-5)
    assert kept.notes == ["the input was synthesised as it is (skull handling 'keep'); outside the given mask the "
                          "outputs are background"]


def test_auto_strips_only_for_a_stripped_only_model(engine: SynthesisEngine, monkeypatch) -> None:
    from DualDSynthesisLib.inference import engine as engine_module

    image, brain = big_head(), _brain_of(big_head())
    monkeypatch.setattr(engine_module, "estimate_brain_mask", lambda _image: brain)  # BET's stand-in

    def stats(x: sitk.Image):
        return volume_stats(engine._prepare(x), engine.spec.source)

    stripped_stats, head_stats = stats(head()), stats(image)
    assert not stripped_stats.skull and head_stats.skull
    monkeypatch.setattr(engine, "fingerprint", fingerprint([stripped_stats]))
    auto = engine.run(image, skull="auto")
    assert [n for n in auto.notes if "inside the brain only (a BET brain mask" in n and "is a whole head" in n]
    assert engine.run(head(), skull="auto").notes[0].startswith("the input was synthesised as it is")  # a brain
    monkeypatch.setattr(engine, "fingerprint", fingerprint([stripped_stats, head_stats]))
    kept = engine.run(image, skull="auto")
    assert kept.notes == ["the input was synthesised as it is (skull handling 'auto': the model was trained on "
                          "whole heads too)"]


def test_auto_with_a_brain_mask_strips_inside_it_whatever_the_model_saw(engine: SynthesisEngine, monkeypatch) -> None:
    """The one rule for a given mask (skull_policy.py): the CLI's --mask M --skull auto is the panel's brain mask
    with auto, i.e. --skull strip inside M, even for a model that saw whole heads (it kept the head before)."""
    image, brain = big_head(), _brain_of(big_head())
    stats = [volume_stats(engine._prepare(x), engine.spec.source) for x in (head(), image)]
    monkeypatch.setattr(engine, "fingerprint", fingerprint(stats))  # stripped brains and whole heads
    auto, stripped = engine.run(image, mask=brain, skull="auto"), engine.run(image, mask=brain, skull="strip")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(auto.synthetic),
                                  sitk.GetArrayViewFromImage(stripped.synthetic))
    assert "inside the brain only (the given brain mask" in auto.notes[0] and "with a brain mask" in auto.notes[0]


def test_skull_handling_errors(engine: SynthesisEngine, tmp_path) -> None:
    with pytest.raises(SynthesisError, match="unknown skull handling 'off'"):
        engine.run(head(), skull="off")
    ct = SynthesisEngine(make_bundle(tmp_path / "ct.safetensors", target="ct"), device="cpu")
    with pytest.raises(SynthesisError, match="skull stripping is for brain MRI models"):
        ct.run(head(), skull="strip")
    with pytest.raises(SynthesisError, match="the brain mask does not cover"):
        engine.run(head(), mask=sitk.Image(head().GetSize(), sitk.sitkUInt8), skull="strip")


def test_bet_on_a_raw_clinical_head(shared_data) -> None:
    """Ljubljana-long-p01: a whole head and neck, 0.72 × 0.72 × 4 mm. The mask is a brain's size, lies inside
    the head, and leaves out the scalp fat (the brightest T1 voxels of the head)."""
    image = sitk.ReadImage(str(shared_data / "brain-mri" / "Ljubljana-long-p01" / "Ljubljana-long-p01_t1.nii.gz"))
    mask = sitk.GetArrayFromImage(estimate_brain_mask(image)) > 0
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    ml = mask.sum() * np.prod(image.GetSpacing()) / 1000
    assert 1000 < ml < 1800, ml
    head_voxels = arr > np.percentile(arr[arr > 0], 20)
    assert (mask & ~head_voxels).sum() < 0.1 * mask.sum()
    fat = arr >= np.percentile(arr[head_voxels], 98)
    assert (mask & fat).sum() < 0.1 * fat.sum()


def test_cancel_right_after_stripping(engine: SynthesisEngine) -> None:
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) >= 2  # the first check passes; the one after brain extraction stops the run

    image = big_head()
    with pytest.raises(SynthesisCancelled):
        engine.run(image, mask=_brain_of(image), skull="strip", cancel=cancel)
    assert len(calls) == 2


def test_a_failed_extraction_keeps_the_head_in_auto_and_stops_strip(engine: SynthesisEngine, monkeypatch) -> None:
    from DualDSynthesisLib.inference import engine as engine_module

    def fail(_image):
        raise BrainMaskError("brain extraction found 90 mL, not a plausible brain (600–2500 mL)")

    monkeypatch.setattr(engine_module, "estimate_brain_mask", fail)
    image = big_head()
    stats = volume_stats(engine._prepare(head()), engine.spec.source)
    monkeypatch.setattr(engine, "fingerprint", fingerprint([stats]))  # a stripped-only model
    auto = engine.run(image, skull="auto")
    assert not auto.notes
    assert any(w.startswith("the whole head was synthesised as it is, because brain extraction found 90 mL")
               for w in auto.warnings)
    kept = engine.run(image, skull="keep")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(auto.synthetic),
                                  sitk.GetArrayViewFromImage(kept.synthetic))
    with pytest.raises(SynthesisError, match="not a plausible brain"):
        engine.run(image, skull="strip")
