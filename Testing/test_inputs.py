"""A model's input declaration (model/inputs.py) and its place in the bundle."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from bundles import spec
from DualDSynthesisLib.imaging.bundle import BundleError, BundleMetadata, read_metadata, save_bundle
from DualDSynthesisLib.model.inputs import InputDeclaration, InputError, InputSpec
from DualDSynthesisLib.model.networks import ArchitectureConfig


def test_parse_makes_the_first_source_the_required_reference() -> None:
    d = InputDeclaration.parse("T1w, t2f ,t1ce")
    assert d.names == ("t1", "flair", "t1c")
    assert d.required == ("t1",) and d.optional == ("flair", "t1c")
    assert InputDeclaration.parse("t1,flair", required="flair").required == ("t1", "flair")
    # every input's slice stack, then one availability channel per optional input
    assert d.channels(0) == 3 + 2 and d.channels(1) == 9 + 2
    assert InputDeclaration.single("t1").channels(1) == 3  # a one-input model's channels are unchanged


@pytest.mark.parametrize(("sources", "required", "match"), [
    ("t1,t1w", None, "given twice"),
    ("t1,bogus", None, "'bogus' is not a known image contrast"),
    ("t1,seg", None, "'seg' is not a known image contrast"),
    ("", None, "names no contrast"),
    ("t1,flair", "t2", "'t2' is not one of the sources"),
])
def test_bad_declarations_are_refused_by_name(sources: str, required: str | None, match: str) -> None:
    with pytest.raises(InputError, match=match):
        InputDeclaration.parse(sources, required)


def test_the_reference_must_be_required() -> None:
    with pytest.raises(InputError, match="reference grid and must be required"):
        InputDeclaration((InputSpec("t1", False), InputSpec("flair", True)))


@pytest.mark.parametrize(("given", "match"), [
    (["t1", "T1w"], "given twice"),
    (["t1", "dwi"], "does not read dwi"),
    (["flair"], "needs a t1 input"),
    (["t1", "nonsense"], "not a known image contrast"),
])
def test_given_inputs_that_do_not_fit_are_named(given: list[str], match: str) -> None:
    d = InputDeclaration.parse("t1,flair,t1c")
    with pytest.raises(InputError, match=match):
        d.check_given(given)
    assert not d.accepts(given)


def test_given_inputs_come_back_in_declaration_order() -> None:
    d = InputDeclaration.parse("t1,flair,t1c")
    assert d.check_given(["T1ce", "t1"]) == ("t1", "t1c")
    assert d.accepts(["t1"]) and d.accepts(["flair", "t1"])


def _meta(inputs: InputDeclaration | list | None, in_channels: int) -> BundleMetadata:
    return BundleMetadata(architecture=ArchitectureConfig(in_channels=in_channels, g_base_width=4, g_depth=2),
                          variant="unet", source_modality="t1", target_modality="t2",
                          preprocessing=spec(context_slices=1), has_local_discriminator=False, inputs=inputs)


def test_a_multi_input_bundle_round_trips_its_declaration(tmp_path: Path) -> None:
    d = InputDeclaration.parse("t1,flair,t1c", required="t1")
    meta = _meta(d, d.channels(1))
    path = save_bundle(tmp_path / "m.safetensors", meta.architecture.generator(), None, meta)
    back = read_metadata(path)
    assert back.inputs == d and back.format_version == 4
    assert "t1 + optional flair, t1c → t2" in back.summary()


def test_an_old_bundle_reads_as_its_one_source() -> None:
    meta = _meta(None, 3)
    assert meta.inputs == InputDeclaration.single("t1")
    assert dataclasses.replace(meta, source_modality="flair").inputs.names == ("flair",)


@pytest.mark.parametrize(("inputs", "in_channels", "match"), [
    ([{"contrast": "flair", "required": True}, {"contrast": "t1", "required": False}], 7, "first input .flair."),
    ([{"contrast": "t1", "required": True}, {"contrast": "flair", "required": False}], 6, "reads 6 channels"),
    ([{"contrast": "t1", "required": True}, {"contrast": "flair"}], 7, "must be \\{contrast, required\\}"),
    ("t1,flair", 7, "must be a list"),
])
def test_inconsistent_declarations_in_a_bundle_are_refused(inputs, in_channels: int, match: str) -> None:
    with pytest.raises(BundleError, match=match):
        _meta(inputs, in_channels)


def test_stack_inputs_lays_out_the_channels_alike_for_numpy_and_torch() -> None:
    import numpy as np
    import torch

    d = InputDeclaration.parse("t1,flair,t1c", required="t1c")
    a = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    withheld = np.array([[False], [True]])  # sample 0 sees the FLAIR, sample 1 has it withheld
    got = d.stack_inputs([a, a + 1, a + 2], ~withheld)
    assert got.shape == (2, d.channels(1), 4, 4) == (2, 10, 4, 4)
    np.testing.assert_array_equal(got[:, :3], a)  # the reference, then the inputs in declaration order
    np.testing.assert_array_equal(got[0, 3:6], a[0] + 1)
    assert not got[1, 3:6].any()  # a withheld input is zeros ...
    np.testing.assert_array_equal(got[:, 6:9], a + 2)  # ... a required one never is
    assert got[0, 9].min() == 1 and got[1, 9].max() == 0  # and its availability channel says so
    t = torch.from_numpy(a)
    assert torch.equal(d.stack_inputs([t, t + 1, t + 2], torch.from_numpy(~withheld)), torch.from_numpy(got))
    one = InputDeclaration.single("t1")
    assert one.stack_inputs([a]) is a  # a one-input model's batch is its stack itself
    with pytest.raises(InputError, match="t1c is missing"):
        d.stack_inputs([a, a, None])
