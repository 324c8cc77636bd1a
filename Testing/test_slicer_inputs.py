"""A multi-input model in the Slicer logic (issue 23): the panel's input selectors come from the model's
declaration, the other inputs' nodes reach the engine as ``others``, and bad choices are refused by name.

slicer-core (real MRML, no Qt); the engine is a test double that records what it is given."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from bundles import make_bundle  # noqa: E402
from DualDSynthesisLib.imaging.bundle import BundleMetadata, read_metadata  # noqa: E402
from DualDSynthesisLib.scene import mrml_io  # noqa: E402
from input_bundles import make_input_bundle  # noqa: E402
from test_slicer_logic import FakeEngine, loaded_scene, node_ids, source_image  # noqa: E402


@functools.cache
def _metadata(declaration: str, required: str | None) -> BundleMetadata:
    """A real tiny bundle's metadata declaring ``declaration`` (its marking and its checks are the real ones)."""
    folder = Path(tempfile.mkdtemp(prefix="duald_inputs_"))
    return read_metadata(make_input_bundle(folder / "m.safetensors", declaration, required=required))


class RecordingEngine(FakeEngine):
    """The fake engine, for a model declaring ``t1 + optional flair, t1c``; records the ``others`` it gets."""

    def __init__(self, declaration: str = "t1,flair,t1c", required: str | None = None) -> None:
        super().__init__()
        self.metadata = _metadata(declaration, required)
        self.others: dict | None = None

    def run(self, image, progress=None, cancel=None, *, mask=None, skull="auto", others=None):
        self.others = others
        return super().run(image, progress, cancel, mask=mask, skull=skull)


def _other_node(app, name: str, scale: float = 2.0):
    image = sitk.GetImageFromArray(sitk.GetArrayFromImage(source_image()) * scale)
    image.SetSpacing((1.0, 1.0, 3.0))  # another grid: the engine brings it onto the source's
    image.SetOrigin((10.0, -28.0, 6.0))
    return mrml_io.new_volume_node_from_image(app.scene, image, name)


def test_the_selectors_are_the_models_declared_inputs(tmp_path) -> None:
    _app, logic, _node = loaded_scene()
    multi = make_input_bundle(tmp_path / "m.safetensors", "t1,t2f,t1ce")
    slots = logic.input_slots(multi)
    assert [(s.contrast, s.required) for s in slots] == [("t1", True), ("flair", False), ("t1c", False)]
    assert [s.label for s in slots] == ["T1 volume:", "FLAIR volume (optional):", "T1c volume (optional):"]
    assert [s.contrast for s in logic.input_slots(make_bundle(tmp_path / "one.safetensors"))] == ["t1"]
    assert logic.input_slots(None) == [] and logic.input_slots(tmp_path / "none.safetensors") == []


def test_other_nodes_reach_the_engine_as_others(tmp_path) -> None:
    app, logic, node = loaded_scene()
    flair = _other_node(app, "sub-01 FLAIR")
    engine = RecordingEngine()
    outputs = logic.synthesize(node, engine, other_nodes={"FLAIR": flair, "t1c": None})
    assert set(engine.others) == {"flair"}  # the optional T1c left empty is not given
    given = engine.others["flair"]
    assert given.GetSpacing() == pytest.approx((1.0, 1.0, 3.0))  # on its own grid, as read
    assert np.allclose(sitk.GetArrayFromImage(given), 2.0 * sitk.GetArrayFromImage(source_image()))
    assert outputs.synthetic_node.GetName() == "T1 synthetic T2"  # named after the reference input
    assert np.allclose(slicer.util.arrayFromVolume(flair), 2.0 * sitk.GetArrayFromImage(source_image()))


def test_a_one_input_run_calls_the_engine_as_before() -> None:
    _app, logic, node = loaded_scene()
    engine = RecordingEngine("t1")
    logic.synthesize(node, engine)
    assert engine.others is None


@pytest.mark.parametrize(("others", "model", "match"), [
    ({"flair": "source"}, ("t1,flair,t1c", None), "the FLAIR volume (T1) is the source volume too"),
    ({"flair": "a", "t1c": "a"}, ("t1,flair,t1c", None), "the T1c volume (A) is the FLAIR volume too"),
    ({"flair": "a", "t2f": "b"}, ("t1,flair,t1c", None), "two volumes are given for the flair input"),
    ({"bogus": "a"}, ("t1,flair,t1c", None), "'bogus' is not a known image contrast"),
    ({"t1c": "a"}, ("t1,flair,t1c", "t1,flair"), "this model needs a FLAIR volume too"),
    ({"flair": "a"}, ("t1", None), "this model does not read flair (it reads t1)"),
])
def test_bad_other_inputs_are_refused_by_name_and_nothing_is_added(others, model, match) -> None:
    app, logic, node = loaded_scene()
    engine = RecordingEngine(*model)
    nodes = {"source": node, "a": _other_node(app, "A"), "b": _other_node(app, "B")}
    before = set(node_ids(app.scene))
    with pytest.raises(ValueError) as caught:
        logic.synthesize(node, engine, other_nodes={c: nodes[n] for c, n in others.items()})
    assert match in str(caught.value)
    assert engine.calls == 0 and set(node_ids(app.scene)) == before


def test_an_output_node_that_is_another_input_is_refused() -> None:
    app, logic, node = loaded_scene()
    flair = _other_node(app, "FLAIR")
    with pytest.raises(ValueError, match="an output volume is the input volume"):
        logic.synthesize(node, RecordingEngine(), other_nodes={"flair": flair}, synthetic_node=flair)


def test_the_module_parameter_node_is_one_singleton() -> None:
    app, _logic, _node = loaded_scene()
    first = mrml_io.module_parameter_node(app.scene, "DualDSynthesis")
    assert mrml_io.module_parameter_node(app.scene, "DualDSynthesis") is first
    assert first.GetAttribute("ModuleName") == "DualDSynthesis" and first.GetSingletonTag() == "DualDSynthesis"
