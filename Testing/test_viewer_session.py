"""duald-view without a browser: the session over the desktop logic, its errors, saving and the host guard."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer", reason="the viewer extra (trame-slicer) is not installed")

from _viewer_data import cli_error, labels_for, small_volume, write_bad_inputs
from DualDSynthesisLib.imaging.defaults import DEFAULT_MODEL
from DualDSynthesisLib.imaging.heatmap_file import SOURCE_ATTRIBUTE, UNITS_ATTRIBUTE
from DualDSynthesisLib.scene import display
from DualDSynthesisLib.scene.display import create_headless_slicer
from DualDSynthesisLib.scene.logic import SynthesisCancelled
from DualDViewLib import cli as view_cli
from DualDViewLib.session import BusyError, ViewerError, ViewerSession


def slicer_array(node) -> np.ndarray:
    from DualDSynthesisLib.scene.mrml_io import array_from_volume_node

    return array_from_volume_node(node)


@pytest.fixture
def session():
    app = create_headless_slicer()
    yield ViewerSession(app.scene, app.application_logic)


@pytest.fixture
def engine(session):
    return session.logic.load_engine(DEFAULT_MODEL, "cpu")


def test_bad_inputs_get_the_clis_one_sentence_errors(tmp_path, session, capsys):
    for kind, path in write_bad_inputs(tmp_path / "bad").items():
        with pytest.raises(ViewerError) as caught:
            session.load_source(path)
        assert str(caught.value) == cli_error(path, tmp_path, capsys), kind
        assert session.source_node is None
    assert "2-D image" in cli_error(tmp_path / "bad" / "slice.nii.gz", tmp_path, capsys)


def test_synthesis_qa_and_save_without_overwriting(tmp_path, session, engine):
    source = tmp_path / "case_t1.nii.gz"
    image = small_volume()
    sitk.WriteImage(image, str(source))
    sitk.WriteImage(labels_for(image), str(tmp_path / "case_seg.nii.gz"))
    session.load_source(source)
    session.load_segmentation(tmp_path / "case_seg.nii.gz")
    image_for_worker = session.begin()
    try:
        result = session.run_engine(engine, image_for_worker)
        outputs = session.finish(engine, result)
    finally:
        session.end()
    assert [row.name for row in outputs.qa_rows] == ["foreground", "label 1", "label 2"]
    assert outputs.heatmap_node is not None and outputs.heatmap_node.GetDisplayNode().GetApplyThreshold()

    written = session.save()
    assert [p.name for p in written] == ["case_t1_synthetic.nii.gz", "case_t1_expected_error.nii.gz"]  # its kind
    saved = sitk.ReadImage(str(written[0]))
    assert saved.GetSize() == image.GetSize()
    before = written[0].stat().st_mtime_ns
    with pytest.raises(ViewerError, match="already exists; confirm Overwrite"):
        session.save()
    assert written[0].stat().st_mtime_ns == before
    session.save(overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial files

    # duald-view SOURCE --synthetic --heatmap: the saved files come back as the overlay, without a run.
    shown = session.load_result(written[0], written[1])
    # the file says what the map is: the default model's expected error, shown over its own range (not 0-1)
    assert shown.heatmap_node.GetAttribute(SOURCE_ATTRIBUTE) == "expected_error"
    assert "expected absolute error" in shown.heatmap_node.GetAttribute(UNITS_ATTRIBUTE)
    top = display.heatmap_window(shown.heatmap_node)[1]
    shown_display = shown.heatmap_node.GetDisplayNode()
    assert top > 1.0 and shown_display.GetWindowLevelMax() == pytest.approx(top, rel=1e-3)
    assert shown_display.GetLowerThreshold() == pytest.approx(session.display.lower_threshold * top, rel=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(written[1]))),
                               slicer_array(shown.heatmap_node), atol=1e-6)


def test_cancel_leaves_no_nodes_and_a_second_run_is_refused(tmp_path, session, engine):
    source = tmp_path / "case.nii.gz"
    sitk.WriteImage(small_volume(), str(source))
    session.load_source(source)
    nodes_before = session.scene.GetNumberOfNodes()
    image = session.begin()
    with pytest.raises(BusyError, match="already running"):
        session.begin()
    session.cancel()
    with pytest.raises(SynthesisCancelled):
        session.run_engine(engine, image)
    session.end()
    assert session.outputs is None and session.scene.GetNumberOfNodes() == nodes_before
    with pytest.raises(ViewerError, match="nothing to save"):
        session.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz"]


def test_viewer_refuses_a_non_loopback_host_without_the_flag(capsys):
    assert view_cli.main(["--host", "0.0.0.0"]) == view_cli.EXIT_BAD_INPUT
    assert "no authentication" in capsys.readouterr().err
    args = view_cli._parser().parse_args(["--host", "0.0.0.0", "--allow-remote"])
    assert view_cli.check_args(args) is None
    assert view_cli.is_loopback("127.0.0.1") and view_cli.is_loopback("::1") and view_cli.is_loopback("localhost")
    assert view_cli.main(["missing.nii.gz"]) == view_cli.EXIT_BAD_INPUT
