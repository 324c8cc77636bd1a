"""The logic's synthesis in its steps: running (``read_input``, ``run_engine``: no scene change) and showing
(``show_result``) give what ``synthesize`` gives, so the web viewer shows the real engine's result (engine in
a worker thread, scene on its own) without standing in for the engine."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from DualDSynthesisLib.imaging.heatmap_file import SOURCE_ATTRIBUTE, UNITS_ATTRIBUTE  # noqa: E402
from DualDSynthesisLib.scene import display, mrml_io  # noqa: E402
from DualDSynthesisLib.scene.dicom_marking import MARKING_ATTRIBUTE  # noqa: E402
from DualDSynthesisLib.scene.logic import (  # noqa: E402
    DisplayOptions,
    DualDSynthesisLogic,
    QAOptions,
    SynthesisCancelled,
    SynthesisInput,
)
from test_slicer_logic import TUMOUR, FakeEngine, node_ids, source_image  # noqa: E402

OUTPUT_NODES = ("synthetic_node", "heatmap_node", "qa_table_node", "difference_node")


class _NoMRML:
    """A stand-in input node that fails on any use: running the engine must not touch the scene."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the engine's run touched the input node ({name})")


@pytest.fixture
def loaded():
    app = display.create_headless_slicer()
    node = mrml_io.new_volume_node_from_image(app.scene, source_image(), "T1")
    labels = np.zeros(sitk.GetArrayFromImage(source_image()).shape, np.int16)
    labels[TUMOUR] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(source_image())
    region = mrml_io.new_volume_node_from_image(app.scene, label_image, "tumour",
                                                class_name="vtkMRMLLabelMapVolumeNode")
    reference = mrml_io.new_volume_node_from_image(app.scene, source_image(), "T2")
    logic = DualDSynthesisLogic(scene=app.scene, application_logic=app.application_logic)
    return app, logic, node, QAOptions(region_node=region, reference_node=reference)


def _shown(logic: DualDSynthesisLogic, outputs) -> dict:
    """What a run put in the scene (voxels, grids, names, attributes, QA); then its nodes are removed. A name
    is compared without the suffix the scene adds to a name used before (``_1``)."""
    nodes = {name: getattr(outputs, name) for name in OUTPUT_NODES}
    shown = {name: None if node is None else re.sub(r"_\d+$", "", node.GetName()) for name, node in nodes.items()}
    for name in ("synthetic_node", "heatmap_node", "difference_node"):
        if nodes[name] is not None:
            shown[name + " voxels"] = mrml_io.array_from_volume_node(nodes[name])
            shown[name + " grid"] = mrml_io.ijk_to_ras_matrix(nodes[name])
    for attribute in (SOURCE_ATTRIBUTE, UNITS_ATTRIBUTE):
        shown[attribute] = outputs.heatmap_node.GetAttribute(attribute)
    shown["marking"] = outputs.synthetic_node.GetAttribute(MARKING_ATTRIBUTE)
    shown["qa"] = ([asdict(row) for row in outputs.qa_rows], outputs.qa_columns)
    shown["messages"] = (outputs.warnings, outputs.notes)
    logic.remove_nodes(list(nodes.values()))
    return shown


def test_running_then_showing_gives_what_synthesize_gives(loaded) -> None:
    _app, logic, node, qa_options = loaded
    shown = DisplayOptions(opacity=0.6, lower_threshold=0.2, background="source")
    whole: list[tuple[float, str]] = []
    by_steps: list[tuple[float, str]] = []

    first = logic.synthesize(node, FakeEngine(), progress=lambda f, m: whole.append((f, m)),
                             display_options=shown, qa_options=qa_options)
    assert first.qa_rows and first.difference_node is not None  # the comparison covers QA and the reference
    panel = _shown(logic, first)
    engine = FakeEngine()
    given = logic.read_input(node)
    result = logic.run_engine(given, engine, progress=lambda f, m: by_steps.append((f, m)))
    second = logic.show_result(given, engine, result, progress=lambda f, m: by_steps.append((f, m)),
                               display_options=shown, qa_options=qa_options)

    np.testing.assert_equal(_shown(logic, second), panel)
    assert by_steps == whole  # the same progress, from 0 to "Done"


def test_running_changes_no_scene_and_needs_no_node(loaded) -> None:
    app, logic, node, _qa = loaded
    before = node_ids(app.scene)
    given = logic.read_input(node, skull="strip")
    engine = FakeEngine()
    detached = SynthesisInput(_NoMRML(), given.image, given.mask, given.skull)
    with ThreadPoolExecutor(1) as worker:  # as the viewer runs it
        result = worker.submit(logic.run_engine, detached, engine).result()
    assert node_ids(app.scene) == before
    assert engine.skull == "strip" and result.notes == ["skull handling: strip"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.synthetic),
                                  FakeEngine.synthetic_array(mrml_io.array_from_volume_node(node)))

    with pytest.raises(SynthesisCancelled):
        logic.run_engine(given, FakeEngine(), cancel=lambda: True)
    with pytest.raises(ValueError, match="no input volume"):
        logic.read_input(None)
    with pytest.raises(ValueError, match="output volume is the input volume"):
        logic.show_result(given, engine, result, heatmap_node=node)
    assert node_ids(app.scene) == before


def test_the_viewer_shows_the_real_engines_result_as_the_panel_does(tmp_path: Path) -> None:
    pytest.importorskip("trame_slicer", reason="the viewer extra (trame-slicer) is not installed")
    bundles = pytest.importorskip("bundles", reason="the tiny-bundle helper needs torch")
    from _viewer_data import labels_for, small_volume
    from DualDViewLib.session import ViewerError, ViewerSession

    source, labels = tmp_path / "case_t1.nii.gz", tmp_path / "case_seg.nii.gz"
    sitk.WriteImage(small_volume(), str(source))
    sitk.WriteImage(labels_for(small_volume()), str(labels))
    app = display.create_headless_slicer()
    session = ViewerSession(app.scene, app.application_logic)
    session.load_source(source)
    session.load_segmentation(labels)
    engine = session.logic.load_engine(bundles.make_bundle(tmp_path / "ct.safetensors", target="ct"), "cpu")

    panel = _shown(session.logic, session.logic.synthesize(
        session.source_node, engine, display_options=session.display,
        qa_options=QAOptions(region_node=session.region_node)))
    given = session.begin()
    try:
        with ThreadPoolExecutor(1) as worker:
            result = worker.submit(session.run_engine, engine, given).result()
        viewer = session.finish(engine, result)
    finally:
        session.end()
    assert viewer.synthetic_node.GetAttribute("DICOM.Modality") == "CT"  # the real engine's model reached the scene
    assert panel["marking"] and panel["qa"][0]
    np.testing.assert_equal(_shown(session.logic, viewer), panel)
    with pytest.raises(ViewerError, match="no synthesis was begun"):  # a result without its input read
        session.finish(engine, result)
