"""SliceSampler: foreground-centred crops and tumour draws."""

import numpy as np
import pytest
from DualDSynthesisLib.model.intensity import ScaleParams
from DualDTrainingLib.dataset import PreparedSubject, SliceSampler


def _subject(k: int = 6, h: int = 96, w: int = 80) -> PreparedSubject:
    fg = np.zeros((k, h, w), bool)
    fg[:, 30:70, 20:60] = True
    tumour = np.zeros_like(fg)
    tumour[2, 60:66, 50:56] = True
    src = fg.astype(np.float32)
    tgt = np.where(tumour, 2.0, src).astype(np.float32)
    return PreparedSubject("s", src, tgt, fg, tumour, ScaleParams(1.0), ScaleParams(1.0), context=None)  # type: ignore[arg-type]


def test_crops_have_the_size_and_lie_on_the_foreground() -> None:
    sampler = SliceSampler([_subject()], np.random.default_rng(0), tumour_fraction=0.0, flip=False, crop=32)
    assert sampler.shape == (32, 32)
    for _ in range(20):
        src, tgt = sampler.batch(4)
        assert src.shape == (4, 1, 32, 32) and tgt.shape == (4, 1, 32, 32)
        # the crop is centred on a foreground pixel, so it always contains foreground
        assert bool((src.flatten(1).amax(1) > 0).all())


def test_tumour_draws_are_centred_on_the_tumour() -> None:
    sampler = SliceSampler([_subject()], np.random.default_rng(1), tumour_fraction=1.0, flip=True, crop=32)
    _, tgt = sampler.batch(16)
    assert bool((tgt.flatten(1).amax(1) == 2.0).all())  # every crop contains the tumour's value


def test_whole_slices_without_crop_and_crop_validation() -> None:
    sampler = SliceSampler([_subject()], np.random.default_rng(2), flip=False)
    assert sampler.batch(2)[0].shape == (2, 1, 96, 80)
    with pytest.raises(ValueError, match="larger than the prepared slices"):
        SliceSampler([_subject()], np.random.default_rng(2), crop=128)
