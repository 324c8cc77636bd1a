"""Input dropout (issue 23): multi-input batches from the host and device samplers, deterministic under a seed,
never withholding a required input, withholding each optional one with probability P (and always where the
subject lacks it); a one-input model's batches are those of a sampler without the feature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from DualDSynthesisLib.model.inputs import InputDeclaration
from DualDSynthesisLib.model.intensity import ScaleParams
from DualDTrainingLib.augment import SourceAugmentation
from DualDTrainingLib.dataset import PreparedSubject, SliceSampler
from DualDTrainingLib.device_sampler import DeviceSliceSampler
from DualDTrainingLib.input_dropout import input_batch

# t1 the reference, t1c a second required input, flair and t2 optional
INPUTS = InputDeclaration.parse("t1,t1c,flair,t2", required="t1c")
VALUES = {"t1": 1.0, "t1c": 2.0, "flair": 3.0, "t2": 4.0}  # each input's foreground value: its channels tell it


def _subject(name: str, has: tuple[str, ...], k: int = 6, h: int = 32, w: int = 32) -> PreparedSubject:
    fg = np.zeros((k, h, w), bool)
    fg[:, 8:24, 8:24] = True
    vol = {c: np.where(fg, VALUES[c], 0).astype(np.float32) for c in ("t1", *has)}
    return PreparedSubject(name, vol["t1"], vol["t1"].copy(), fg, None, ScaleParams(1.0), ScaleParams(1.0),
                           context=None, others={c: vol[c] for c in has})  # type: ignore[arg-type]


SUBJECTS = [_subject("all", ("t1c", "flair", "t2")), _subject("no-t2", ("t1c", "flair"))]


def _host(seed: int, p: float = 0.5) -> SliceSampler:
    return SliceSampler(SUBJECTS, np.random.default_rng(seed), 0.0, True, context=1, inputs=INPUTS, input_dropout=p)


def _device(seed: int, p: float = 0.5) -> DeviceSliceSampler:
    return DeviceSliceSampler(SUBJECTS, "cpu", seed=seed, tumour_fraction=0.0, context=1, inputs=INPUTS,
                              input_dropout=p, storage=torch.float32)


def _channels(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(each input's max value per sample [B, 4], the availability channels per sample [B, 2])."""
    stack = 3  # context 1
    images = torch.stack([batch[:, i * stack : (i + 1) * stack].amax(dim=(1, 2, 3)) for i in range(4)], 1)
    return images, batch[:, 4 * stack :].amax(dim=(2, 3))


@pytest.mark.parametrize("make", [_host, _device], ids=["host", "device"])
def test_dropout_is_deterministic_under_the_seed(make) -> None:
    a, b, c = make(3), make(3), make(4)
    batches = [[s.batch(16)[0] for _ in range(4)] for s in (a, b, c)]
    assert batches[0][0].shape == (16, INPUTS.channels(1), 32, 32) == (16, 14, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(batches[0], batches[1], strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(batches[0], batches[2], strict=True))


def test_dropout_does_not_depend_on_the_thread_count() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [_device(5).batch(8)[0] for _ in range(2)]
        torch.set_num_threads(2)
        two = [_device(5).batch(8)[0] for _ in range(2)]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(x, y) for x, y in zip(one, two, strict=True))


@pytest.mark.parametrize("make", [_host, _device], ids=["host", "device"])
def test_required_inputs_never_withheld_optional_ones_at_rate_p(make) -> None:
    p, withheld, drawn = 0.3, 0, 0
    sampler = make(11, p)
    for _ in range(40):
        src, _ = sampler.batch(32)
        images, flags = _channels(src)
        assert bool((images[:, 0] == VALUES["t1"]).all()) and bool((images[:, 1] == VALUES["t1c"]).all())
        for column, name in enumerate(("flair", "t2")):
            # an input is either given with its slices or withheld with zeros, and its flag says which
            given = flags[:, column] == 1
            assert bool(((images[:, 2 + column] == VALUES[name]) == given).all())
            assert bool(((flags[:, column] == 0) | given).all())
        withheld += int((flags[:, 0] == 0).sum())  # both subjects have FLAIR: withheld only by the draw
        drawn += len(flags)
    # the binomial spread: a 5-sigma bound (fails by chance with probability ~6e-7)
    assert abs(withheld / drawn - p) <= 5 * math.sqrt(p * (1 - p) / drawn), withheld / drawn


def test_an_input_the_subject_lacks_is_always_withheld() -> None:
    sampler = SliceSampler([SUBJECTS[1]], np.random.default_rng(0), 0.0, False, context=0, inputs=INPUTS,
                           input_dropout=0.0)
    src, _ = sampler.batch(16)
    assert bool((src[:, 3] == 0).all()) and bool((src[:, 5] == 0).all())  # T2's slices and its flag
    assert bool((src[:, 2].amax(dim=(1, 2)) == VALUES["flair"]).all()) and bool((src[:, 4] == 1).all())


def test_validation_batches_give_every_input_the_subject_has() -> None:
    stacks = [np.full((2, 1, 4, 4), v, np.float32) for v in (1.0, 2.0, 3.0)] + [None]
    batch = input_batch(INPUTS, stacks)  # no draws: validation and inference
    assert batch[:, :, 0, 0].tolist() == [[1, 2, 3, 0, 1, 0]] * 2


@pytest.mark.parametrize("make", [_host, _device], ids=["host", "device"])
def test_a_one_input_declaration_draws_nothing_and_batches_as_before(make) -> None:
    one = [_subject("a", ()), _subject("b", ())]
    kwargs = {"context": 1, "tumour_fraction": 0.0, "crop": 16}
    if make is _host:
        plain = SliceSampler(one, np.random.default_rng(2), **kwargs)
        declared = SliceSampler(one, np.random.default_rng(2), inputs=InputDeclaration.single("t1"),
                                input_dropout=0.5, **kwargs)
    else:
        plain = DeviceSliceSampler(one, seed=2, **kwargs)
        declared = DeviceSliceSampler(one, seed=2, inputs=InputDeclaration.single("t1"), input_dropout=0.5, **kwargs)
    for _ in range(3):
        (a, ta), (b, tb) = plain.batch(4), declared.batch(4)
        assert torch.equal(a, b) and torch.equal(ta, tb)


def test_augmentation_leaves_availability_channels_and_withheld_inputs_alone() -> None:
    batch = _host(1, p=0.5).batch(16)[0]
    out = SourceAugmentation(1.0, seed=0, inputs=4, passthrough=2)(batch)
    assert torch.equal(out[:, 12:], batch[:, 12:])
    assert bool(((out[:, :12] == 0) == (batch[:, :12] == 0)).all())  # zeros (background, withheld) stay zero
