"""DeviceSliceSampler: shapes, seeding, flips, per-subject equal probability, tumour fraction, crops (on the CPU)."""

import numpy as np
import pytest
import torch
from DualDSynthesisLib.model.intensity import ScaleParams
from DualDSynthesisLib.model.slicestack import slice_stack
from DualDTrainingLib.dataset import PreparedSubject
from DualDTrainingLib.device_sampler import FLOAT16_MAX_ERROR, DeviceSliceSampler


def _subject(name: str, k: int, h: int = 48, w: int = 40, tumour: bool = True, value: float = 0.0) -> PreparedSubject:
    """Slice ``i`` holds ``value + i/100`` in its foreground; a left-right ramp on the target shows flips."""
    fg = np.zeros((k, h, w), bool)
    fg[:, 10:40, 8:32] = True
    fg[0] = False  # one empty slice: weight EMPTY_SLICE_WEIGHT
    src = np.where(fg, value + np.arange(k, dtype=np.float32)[:, None, None] / 100, 0).astype(np.float32)
    tgt = (src + np.linspace(0, 0.5, w, dtype=np.float32)[None, None, :] * fg).astype(np.float32)
    mask = None
    if tumour:
        mask = np.zeros_like(fg)
        mask[k // 2, 20:24, 20:24] = True
    return PreparedSubject(name, src, tgt, fg, mask, ScaleParams(1.0), ScaleParams(1.0), context=None)  # type: ignore[arg-type]


def test_shapes_for_context_0_and_1_and_channels_follow_slice_stack() -> None:
    subjects = [_subject("a", 6), _subject("b", 9, h=40, w=48, value=1.0)]
    for context in (0, 1):
        sampler = DeviceSliceSampler(subjects, seed=0, flip=False, context=context)
        src, tgt = sampler.batch(5)
        assert src.shape == (5, 2 * context + 1, 48, 48) and tgt.shape == (5, 1, 48, 48)
        assert src.dtype == tgt.dtype == torch.float32
        idx, _ = DeviceSliceSampler(subjects, seed=0, flip=False, context=context).sample_indices(5)
        volume = sampler.source
        for b, i in enumerate(idx.tolist()):
            # the neighbours come from the same subject, edges repeated, exactly as slice_stack builds them
            s, k0 = (0, 0) if i < 6 else (1, 6)
            k = 6 if s == 0 else 9
            expected = slice_stack(volume[k0 : k0 + k], [i - k0], context)[0]
            assert torch.equal(src[b], expected)
            assert torch.equal(tgt[b, 0], sampler.target[i])


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    subjects = [_subject("a", 6), _subject("b", 9)]
    a = [DeviceSliceSampler(subjects, seed=3, crop=24).batch(8) for _ in range(2)]
    assert torch.equal(a[0][0], a[1][0]) and torch.equal(a[0][1], a[1][1])
    other = DeviceSliceSampler(subjects, seed=4, crop=24).batch(8)
    assert not torch.equal(a[0][0], other[0])
    sampler = DeviceSliceSampler(subjects, seed=3, crop=24)
    state = sampler.rng_state()
    first = sampler.batch(8)
    sampler.set_rng_state(state)
    assert torch.equal(sampler.batch(8)[1], first[1])


def test_flips_are_applied_identically_to_source_and_target() -> None:
    sampler = DeviceSliceSampler([_subject("a", 8)], seed=1, tumour_fraction=0.0, flip=True)
    src, tgt = sampler.batch(64)
    ramp = tgt - src  # the target's left-right ramp, zero outside the foreground
    rising = ramp[:, 0, 25, 30] > ramp[:, 0, 25, 10]
    assert 10 < int(rising.sum()) < 54  # both orientations occur
    # a flipped sample's source is the mirrored slice, and so is its target
    idx = torch.round(src.amax(dim=(1, 2, 3)) * 100).long()
    for b in range(64):
        s, t = sampler.source[idx[b]], sampler.target[idx[b]]
        if not rising[b]:
            s, t = s.flip(-1), t.flip(-1)
        assert torch.equal(src[b, 0], s) and torch.equal(tgt[b, 0], t)


def test_each_subject_gets_equal_probability() -> None:
    subjects = [_subject("small", 4, value=0.0), _subject("large", 40, value=1.0), _subject("mid", 12, value=2.0)]
    sampler = DeviceSliceSampler(subjects, seed=0, tumour_fraction=0.3)
    idx, _ = sampler.sample_indices(30_000)
    subject = torch.bucketize(idx, torch.tensor([4, 44]), right=True)
    share = torch.bincount(subject, minlength=3).double() / idx.numel()
    assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)
    # within a subject the foreground weights hold: the empty slice 0 of "large" is drawn ~0.05/39.05 as often
    large = idx[(idx >= 4) & (idx < 44)] - 4
    counts = torch.bincount(large, minlength=40).double()
    assert counts[0] < 0.2 * counts[1:].mean()


def test_tumour_fraction_is_respected_and_tumour_draws_hit_tumour_slices() -> None:
    subjects = [_subject("a", 10), _subject("b", 16)]
    for fraction in (0.0, 0.5, 1.0):
        sampler = DeviceSliceSampler(subjects, seed=2, tumour_fraction=fraction)
        idx, for_tumour = sampler.sample_indices(20_000)
        assert abs(for_tumour.double().mean().item() - fraction) < 0.02
        assert set(idx[for_tumour].tolist()) <= {5, 10 + 8}
    # subjects without a mask: no tumour draw at all
    sampler = DeviceSliceSampler([_subject("c", 6, tumour=False)], seed=0, tumour_fraction=0.9)
    assert sampler.tumour_fraction == 0.0 and not sampler.sample_indices(100)[1].any()


def test_crops_have_the_size_and_tumour_crops_contain_the_tumour() -> None:
    sampler = DeviceSliceSampler([_subject("a", 10)], seed=5, tumour_fraction=1.0, crop=16)
    assert sampler.shape == (16, 16)
    src, tgt = sampler.batch(32)
    assert src.shape == (32, 1, 16, 16) and tgt.shape == (32, 1, 16, 16)
    # the tumour box is rows/cols 20..23: a 16-wide window centred in it keeps all of it inside the foreground
    assert bool((src.flatten(1).amin(1) > 0).all())
    with pytest.raises(ValueError, match="larger than the prepared slices"):
        DeviceSliceSampler([_subject("a", 4)], crop=64)


def test_float16_storage_stays_within_its_documented_error() -> None:
    subject = _subject("a", 6)
    subject.target = (subject.target * 1.9).astype(np.float32)  # values up to the clip's 2
    exact = DeviceSliceSampler([subject], seed=0, flip=False, storage=torch.float32)
    half = DeviceSliceSampler([subject], seed=0, flip=False, storage=torch.float16)
    (s0, t0), (s1, t1) = exact.batch(16), half.batch(16)
    assert 0 < float((t0 - t1).abs().max()) <= FLOAT16_MAX_ERROR
    assert float((s0 - s1).abs().max()) <= FLOAT16_MAX_ERROR


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="no training subject"):
        DeviceSliceSampler([])
    with pytest.raises(ValueError, match="tumour-fraction"):
        DeviceSliceSampler([_subject("a", 4)], tumour_fraction=1.5)
    with pytest.raises(ValueError, match="context slices"):
        DeviceSliceSampler([_subject("a", 4)], context=-1)
