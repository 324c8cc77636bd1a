"""The levers for other hospitals' scans: augmentation, source normalisations, 2.5-D input,
per-subject sampling and leave-one-source-out folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bundles import TINY, make_bundle
from DualDSynthesisLib.imaging.bundle import load_bundle
from DualDSynthesisLib.imaging.preprocess import PreprocessError, PreprocessingSpec
from DualDSynthesisLib.inference.engine import SynthesisEngine
from DualDSynthesisLib.model.intensity import (
    SOURCE_NORMS,
    IntensityMapping,
    PercentileScale,
    ScaleParams,
    histogram_peak,
    source_mapping,
)
from DualDTrainingLib.augment import SourceAugmentation
from DualDTrainingLib.dataset import PreparedSubject, SliceSampler

ROOT = Path(__file__).resolve().parents[1]


def _batch(seed: int = 0) -> torch.Tensor:
    x = torch.rand(4, 3, 48, 40, generator=torch.Generator().manual_seed(seed)) + 0.1
    x[:, :, :8] = 0.0  # background rows
    return x


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_is_identity_at_strength_zero() -> None:
    x = _batch()
    assert SourceAugmentation(0.0, seed=3)(x) is x


def test_augmentation_is_deterministic_under_a_seed_and_differs_between_seeds() -> None:
    x = _batch()
    a, b, c = SourceAugmentation(1.0, seed=5)(x), SourceAugmentation(1.0, seed=5)(x), SourceAugmentation(1.0, seed=6)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c) and not torch.equal(a, x)


def test_augmentation_keeps_the_background_and_shares_parameters_across_channels() -> None:
    aug = SourceAugmentation(1.0, seed=1)
    x = _batch()
    x[:, 1] = x[:, 0]  # two identical channels of a 2.5-D stack
    for _ in range(5):
        y = aug(x)
        assert (y[:, :, :8] == 0).all() and (y >= 0).all()
        # identical input channels stay close (only the noise, drawn per voxel, differs)
        assert float((y[:, 0] - y[:, 1]).abs().mean()) < 0.05


def test_augmentation_rejects_a_bad_strength() -> None:
    with pytest.raises(ValueError, match="strength"):
        SourceAugmentation(1.5)


# ----------------------------------------------------------------------------- normalisations


@pytest.mark.parametrize("name", sorted(SOURCE_NORMS))
def test_each_source_normalisation_round_trips_through_the_bundle(name: str, tmp_path: Path) -> None:
    path = make_bundle(tmp_path / f"{name}.safetensors", source_norm=name)
    engine = SynthesisEngine(path, "cpu")
    assert engine.spec.source == source_mapping(name)
    assert load_bundle(path).metadata.preprocessing.source == SOURCE_NORMS[name]
    rng = np.random.default_rng(0)
    vol = np.zeros((4, 48, 48), np.float32)
    vol[:, 8:40, 8:40] = rng.uniform(100, 400, (4, 32, 32))
    syn = sitk.GetArrayFromImage(engine.run_array(vol).synthetic)
    assert np.isfinite(syn).all() and syn.shape == vol.shape


def test_peak_scale_is_the_main_mode_and_ignores_a_bright_rim() -> None:
    rng = np.random.default_rng(1)
    tissue = rng.normal(500.0, 20.0, 50_000)  # the bulk (white matter)
    fat = rng.normal(1500.0, 50.0, 8_000)  # a bright rim that moves the 99.5th percentile
    values = np.concatenate([tissue, fat]).astype(np.float32)
    assert abs(histogram_peak(values) - 500.0) < 25.0
    assert PercentileScale(99.5).fit(values, np.ones(values.shape, bool)).scale > 1400


def test_unknown_source_normalisation_and_unknown_keys_are_refused() -> None:
    with pytest.raises(PreprocessError, match="unknown source normalisation"):
        source_mapping("zscore-typo")
    with pytest.raises(PreprocessError, match="unknown setting"):
        IntensityMapping.from_dict({"kind": "mri_percentile", "window": 3})
    spec = PreprocessingSpec(SOURCE_NORMS["p99.5"], PercentileScale()).to_dict()
    with pytest.raises(PreprocessError, match=r"unknown setting.*slice_thickness"):
        PreprocessingSpec.from_dict({**spec, "slice_thickness": 3})


# ----------------------------------------------------------------------------- sampling


def _subject(name: str, k: int, value: float) -> PreparedSubject:
    fg = np.ones((k, 32, 32), bool)
    src = np.full((k, 32, 32), value, np.float32) + np.arange(k, dtype=np.float32)[:, None, None] / 1000
    return PreparedSubject(name, src, src.copy(), fg, None, ScaleParams(1.0), ScaleParams(1.0), context=None)  # type: ignore[arg-type]


def test_each_subject_is_drawn_equally_often_whatever_its_slice_count() -> None:
    sampler = SliceSampler([_subject("big", 200, 1.0), _subject("small", 10, 2.0)], np.random.default_rng(0),
                           tumour_fraction=0.0, flip=False)
    src, _ = sampler.batch(4000)
    share_small = float((src[:, 0, 0, 0] >= 2.0).float().mean())
    assert 0.45 < share_small < 0.55  # per slice it would be 10/210 ≈ 0.05


def test_context_stacks_stay_inside_their_subject() -> None:
    sampler = SliceSampler([_subject("a", 3, 1.0), _subject("b", 4, 2.0)], np.random.default_rng(0),
                           tumour_fraction=0.0, flip=False, context=1)
    src, tgt = sampler.batch(200)
    assert src.shape == (200, 3, 32, 32) and tgt.shape == (200, 1, 32, 32)
    centre = src[:, 1, 0, 0]
    # every channel of a stack comes from the centre slice's subject (values 1.x vs 2.x)
    assert bool((src[:, :, 0, 0].floor() == centre.floor()[:, None]).all())
    # the target is the centre slice
    torch.testing.assert_close(tgt[:, 0, 0, 0], centre)


# ----------------------------------------------------------------------------- 2.5-D end to end


def test_two_and_a_half_d_bundle_synthesises_with_edge_slices(tmp_path: Path) -> None:
    arch = TINY.__class__(**{**TINY.to_dict(), "in_channels": 3})
    engine = SynthesisEngine(make_bundle(tmp_path / "ctx.safetensors", arch, context_slices=1), "cpu")
    vol = np.zeros((3, 48, 48), np.float32)
    vol[:, 8:40, 8:40] = 300.0
    vol[0, 8:40, 8:40] = 100.0  # the first slice differs: its stack is [0, 0, 1]
    result = engine.run_array(vol)
    assert result.synthetic.GetSize() == (48, 48, 3)


# ----------------------------------------------------------------------------- folds (experiments/folds.py)


def test_loso_puts_each_source_in_exactly_one_test_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # as the LOSO scripts import it
    from folds import loso_folds, read_sources

    sources = read_sources(ROOT / "experiments" / "brain_mri_sources.csv")
    folds = loso_folds(sources)
    assert sorted(f.held_out for f in folds) == sorted(set(sources.values()))
    tested = [s for f in folds for s in f.test]
    assert sorted(tested) == sorted(sources)  # every subject tested once
    for f in folds:
        assert not set(f.train) & set(f.test)
        assert {sources[s] for s in f.test} == {f.held_out}
        assert f.held_out not in {sources[s] for s in f.train}
    with pytest.raises(ValueError, match="at least two sources"):
        loso_folds({"a": "X", "b": "X"})
