"""The one vocabulary: variants and contrast names, and every user of it agreeing on them."""

from __future__ import annotations

import itertools

import pytest
from DualDSynthesisLib.core.vocabulary import (
    CONTRAST_ALIASES,
    VARIANTS,
    Variant,
    canonical_contrast,
    modality_family,
    modality_warning,
)

IMAGE_CONTRASTS = [k for k in CONTRAST_ALIASES if k != "seg"]


def test_every_alias_pair_of_one_contrast_is_the_same_and_passes_silently() -> None:
    for key, aliases in CONTRAST_ALIASES.items():
        for a, b in itertools.product(aliases, repeat=2):
            assert canonical_contrast(a) == canonical_contrast(b) == key
            assert canonical_contrast(a.upper()) == key and canonical_contrast(f" {a} ") == key
            if key != "seg":
                assert modality_warning(a, b) is None, (a, b)
                assert modality_warning(a.upper(), b) is None, (a, b)


def test_aliases_of_different_contrasts_warn() -> None:
    for k1, k2 in itertools.permutations(IMAGE_CONTRASTS, 2):
        for a, b in itertools.product(CONTRAST_ALIASES[k1], CONTRAST_ALIASES[k2]):
            assert canonical_contrast(a) != canonical_contrast(b)
            warning = modality_warning(a, b)
            assert warning is not None and a in warning and b in warning, (a, b)


def test_t1c_spellings_and_t1() -> None:
    # post-contrast T1 under its three names is one contrast ...
    assert modality_warning("t1ce", "t1c") is None
    assert modality_warning("T1-Gd", "t1c") is None
    assert canonical_contrast("T1_CE") == "t1c"
    # ... and a different one from the native T1, in both directions
    assert canonical_contrast("t1") == canonical_contrast("t1w") == canonical_contrast("T1n") == "t1"
    assert "t1c" in modality_warning("t1", "t1c") and "t1" in modality_warning("t1c", "t1")
    assert modality_warning("t1ce", "t1") is not None


def test_families_from_dicom_tags() -> None:
    for key in IMAGE_CONTRASTS:
        family = "ct" if key == "ct" else "mr"
        assert modality_family(key) == family
        assert modality_warning(family.upper(), key) is None  # a DICOM Modality tag fits its family
        assert modality_warning("CT" if family == "mr" else "MR", key) is not None
    assert modality_family("MRI") == "mr" and modality_family("banana") is None
    assert canonical_contrast("banana") is None and canonical_contrast(None) is None
    assert modality_warning(None, "t1") is None and modality_warning("", "t1") is None
    assert modality_warning("banana", "banana") is None and modality_warning("banana", "t1") is not None


def test_engine_and_discovery_use_the_vocabulary() -> None:
    from DualDTrainingLib import discovery

    assert discovery.CONTRAST_ALIASES is CONTRAST_ALIASES
    for key, aliases in CONTRAST_ALIASES.items():
        for alias in aliases:
            assert discovery.contrast_of(f"sub-01_{alias}.nii.gz") == key
            if key != "seg":
                assert discovery._contrast_key(alias.upper(), "source") == key
    assert discovery.contrast_of("sub-01_t1ce.nii.gz") != discovery.contrast_of("sub-01_t1.nii.gz")
    engine = pytest.importorskip("DualDSynthesisLib.inference.engine")
    assert engine.modality_warning is modality_warning


def test_variants() -> None:
    assert VARIANTS == ("unet", "global", "local", "dual", "dual_attention")
    assert [v for v in Variant if v.uses_global] == [Variant.GLOBAL, Variant.DUAL, Variant.DUAL_ATTENTION]
    assert [v for v in Variant if v.uses_local] == [Variant.LOCAL, Variant.DUAL, Variant.DUAL_ATTENTION]
    assert [v for v in Variant if v.uses_attention] == [Variant.DUAL_ATTENTION]
    from DualDSynthesisLib.imaging import bundle
    from DualDTrainingLib import cli, step

    assert step.Variant is Variant
    parser_choices = next(a.choices for a in cli.build_parser()._actions if a.dest == "variant")
    assert tuple(parser_choices) == VARIANTS
    with pytest.raises(bundle.BundleError, match="unknown variant 'cyclegan'"):
        bundle.BundleMetadata.from_json(bundle.BundleMetadata(
            architecture={}, variant="unet", source_modality="t1", target_modality="t2",
            preprocessing={"source": {"kind": "mri_percentile"}, "target": {"kind": "ct_hu"}},
            has_local_discriminator=False).to_json().replace('"unet"', '"cyclegan"'))
