"""Model bundle: bit-exact round trip, and refusal of anything that is not a bundle."""

import dataclasses
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from bundles import make_bundle
from DualDSynthesisLib.core.resources import MODELS_DIR
from DualDSynthesisLib.imaging.bundle import (
    SUPPORTED_FORMAT_VERSIONS,
    BundleError,
    BundleMetadata,
    load_bundle,
    read_metadata,
    save_bundle,
)
from DualDSynthesisLib.imaging.preprocess import PreprocessingSpec
from DualDSynthesisLib.model.intensity import PercentileScale
from DualDSynthesisLib.model.networks import ArchitectureConfig

ARCH = ArchitectureConfig(g_base_width=4, g_depth=2, d2_base_width=4)
SPEC = PreprocessingSpec(source=PercentileScale(),
                         target=PercentileScale(reference_scale=500.0))


def _metadata(has_local: bool = True, **kw) -> BundleMetadata:
    return BundleMetadata(
        architecture=ARCH.to_dict(),
        variant="dual_attention" if has_local else "unet",
        source_modality="t1",
        target_modality="t2",
        preprocessing=SPEC.to_dict(),
        has_local_discriminator=has_local,
        provenance={"test": True},
        **kw,
    )


def _trained_nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(1)
    g, d2 = ARCH.generator(), ARCH.local_discriminator()
    for net in (g, d2):  # move BN running stats away from their defaults
        net.train()(torch.randn(2, 1, 16, 16))
    return g, d2


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    g, d2 = _trained_nets()
    path = save_bundle(tmp_path / "m.safetensors", g, d2, _metadata())
    bundle = load_bundle(path)
    for a, b in ((g, bundle.generator), (d2, bundle.local_discriminator)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert bundle.metadata == _metadata()
    assert not bundle.generator.training
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(g.eval()(x), bundle.generator(x))
    assert read_metadata(path).variant == "dual_attention"


def test_bundle_without_local_discriminator(tmp_path: Path) -> None:
    g, _ = _trained_nets()
    bundle = load_bundle(save_bundle(tmp_path / "u.safetensors", g, None, _metadata(has_local=False)))
    assert bundle.local_discriminator is None


def test_existing_bundle_is_not_overwritten(tmp_path: Path) -> None:
    g, d2 = _trained_nets()
    path = save_bundle(tmp_path / "m.safetensors", g, d2, _metadata())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        save_bundle(path, g, d2, _metadata(name="other"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


class _Payload:
    """Unpickling this creates a file: the attack a pickled model file can carry."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("as_torch_save", [False, True])
def test_pickle_payload_is_refused_and_never_executed(tmp_path: Path, as_torch_save: bool) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.safetensors"
    if as_torch_save:
        torch.save({"x": _Payload(str(marker))}, evil)
    else:
        evil.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(evil)
    assert not marker.exists()


def _raw_safetensors(path: Path, header: dict) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p.write_bytes(b"hello world, not a model"), "not a safetensors file"),
        (lambda p: p.write_bytes(b"abc"), "too short"),
        (lambda p: _raw_safetensors(p, {"__metadata__": {"other": "1"}}), "not a DualD bundle"),
        (
            lambda p: _raw_safetensors(p, {"__metadata__": {"duald": json.dumps({"format_version": 99})}}),
            "unsupported bundle format version 99",
        ),
        (lambda p: _raw_safetensors(p, {"__metadata__": {"duald": "{not json"}}), "not valid JSON"),
    ],
)
def test_invalid_files_are_refused(tmp_path: Path, make, match: str) -> None:
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    g, d2 = _trained_nets()
    meta = _metadata()
    meta = dataclasses.replace(meta, architecture=dataclasses.replace(ARCH, g_base_width=8))
    path = save_bundle(tmp_path / "m.safetensors", g, d2, meta)
    with pytest.raises(BundleError, match=r"has shape .* but its architecture needs"):
        load_bundle(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope.safetensors")


def test_a_header_length_whose_low_byte_is_the_pickle_opcode_is_still_safetensors(tmp_path: Path) -> None:
    """A safetensors file starts with its header length: 0x180 bytes starts with 0x80, pickle's opcode."""
    path = tmp_path / "m.safetensors"
    header = {"__metadata__": {"other": ""}}
    pad = 0x180 - len(json.dumps(header).encode())
    header["__metadata__"]["other"] = "x" * pad
    _raw_safetensors(path, header)
    assert path.read_bytes()[0] == 0x80
    with pytest.raises(BundleError, match="not a DualD bundle"):
        load_bundle(path)


def test_saved_bundle_gets_the_umask_mode_not_0600(tmp_path: Path) -> None:
    import os

    path = make_bundle(tmp_path / "shared.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_metadata_is_typed_and_strict(tmp_path: Path) -> None:
    meta = _metadata()
    assert meta.architecture == ARCH and meta.preprocessing == SPEC  # parsed once, from the JSON dicts
    assert BundleMetadata.from_json(meta.to_json()) == meta
    for section, key in (("architecture", "g_dilation"), ("preprocessing", "slab_thickness")):
        data = json.loads(meta.to_json())
        data[section][key] = 1  # a newer writer's setting: refused with its name, never silently dropped
        with pytest.raises(BundleError, match=rf"the bundle.s {section} is invalid: .*{key}"):
            BundleMetadata.from_json(json.dumps(data))
    data = json.loads(meta.to_json())
    data["preprocessing"]["source"]["kind"] = "zscore"
    with pytest.raises(BundleError, match="unknown intensity kind 'zscore'"):
        BundleMetadata.from_json(json.dumps(data))


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.safetensors")), ids=lambda p: p.stem)
def test_shipped_bundles_keep_loading(path: Path) -> None:
    """Shipped bundles of every supported version (the CT demo is older than the T1→T2 default) parse into
    the typed metadata, and writing it back reads the same."""
    meta = read_metadata(path)
    assert meta.format_version in SUPPORTED_FORMAT_VERSIONS
    assert isinstance(meta.architecture, ArchitectureConfig) and meta.architecture.in_channels == (
        meta.inputs.channels(meta.preprocessing.context_slices))  # every input's slice stack + availability
    assert BundleMetadata.from_json(meta.to_json()) == meta
    assert load_bundle(path).architecture == meta.architecture
