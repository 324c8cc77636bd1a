"""DualDSynthesis module logic on slicer-core (real MRML, no Qt): nodes, geometry, display, QA, cancel.

The engine is a fake honouring the ``SynthesisEngine`` protocol, so these tests need no model.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")

from bundles import spec as bundle_spec  # noqa: E402
from DualDSynthesisLib.imaging.preprocess import Grid, PreprocessingSpec  # noqa: E402
from DualDSynthesisLib.scene import display, mrml_io, qa  # noqa: E402
from DualDSynthesisLib.scene.logic import (  # noqa: E402
    DisplayOptions,
    DualDSynthesisLogic,
    QAOptions,
    SynthesisCancelled,
    SynthesisEngine,
    SynthesisResult,
)
from vtk.util import numpy_support  # noqa: E402

SHAPE = (10, 40, 48)  # k, j, i
TUMOUR = (slice(3, 8), slice(8, 20), slice(30, 42))  # anterior (small j), patient-left (large i)
OBLIQUE = sitk.VersorTransform((0.2, -0.4, 0.9), 0.5).GetMatrix()


class FakeEngine:
    """Synthetic = affine map of the source; heatmap high on the 'tumour'. Reports progress and
    checks cancel between four fake steps, like the real engine does between slice batches."""

    target_modality = "T2"
    metadata = None  # no bundle: the synthetic node gets no DICOM marking
    bundle_path = None

    def __init__(self, with_heatmap: bool = True, cancel_error: type[Exception] | None = None,
                 spec: PreprocessingSpec | None = None) -> None:
        self.spec = spec or bundle_spec()  # an MRI T1 → T2 bundle's preprocessing (reference scale 800)
        self.with_heatmap = with_heatmap
        self.cancel_error = cancel_error or SynthesisCancelled  # the contract's, as the real engine raises it
        self.progress_seen: list[tuple[float, str]] = []
        self.calls = 0

    @staticmethod
    def synthetic_array(source: np.ndarray) -> np.ndarray:
        return (0.5 * source + 10.0).astype(np.float32)

    @staticmethod
    def heatmap_array(shape: tuple[int, ...]) -> np.ndarray:
        heat = np.full(shape, 0.05, np.float32)
        heat[TUMOUR] = 0.9
        return heat

    def run(self, image, progress=None, cancel=None, *, mask=None, skull="auto"):
        self.calls += 1
        self.skull = skull
        self.mask = mask
        for step in range(4):
            if progress is not None:
                progress(step / 4, f"step {step + 1}/4")
                self.progress_seen.append((step / 4, f"step {step + 1}/4"))
            if cancel is not None and cancel():
                raise self.cancel_error("cancelled")
        source = sitk.GetArrayFromImage(image).astype(np.float32)
        synthetic = sitk.GetImageFromArray(self.synthetic_array(source))
        synthetic.CopyInformation(image)
        heatmap = None
        if self.with_heatmap:
            heatmap = sitk.GetImageFromArray(self.heatmap_array(source.shape))
            heatmap.CopyInformation(image)
            # The real engine works in canonical orientation; the logic must map back exactly.
            heatmap = sitk.DICOMOrient(heatmap, "RAS")
        return SynthesisResult(synthetic, heatmap, notes=[f"skull handling: {skull}"])


def source_array() -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    head = ((i - 24) / 20.0) ** 2 + ((j - 20) / 17.0) ** 2 < 1.0
    arr = np.where(head, 100.0 + 2.0 * i + j + 3.0 * k, 0.0).astype(np.float32)
    arr[TUMOUR] += 150.0
    return arr


def source_image(direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(source_array())
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((12.0, -30.0, 7.5))
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.fixture
def app():
    return display.create_headless_slicer()


def loaded_scene(app=None):
    """(headless Slicer, the module logic on its scene, the source volume node "T1")."""
    app = app or display.create_headless_slicer()
    node = mrml_io.new_volume_node_from_image(app.scene, source_image(), "T1")
    return app, DualDSynthesisLogic(scene=app.scene, application_logic=app.application_logic), node


@pytest.fixture
def loaded(app):
    return loaded_scene(app)


def node_ids(scene) -> set[str]:
    # The subject hierarchy singleton is created lazily by segmentation export in a bare scene
    # (desktop Slicer always has it): not a node of ours.
    nodes = (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
    return {n.GetID() for n in nodes if not n.IsA("vtkMRMLSubjectHierarchyNode")}


def test_engine_protocol_is_satisfied_by_fake_and_real_engine(tmp_path):
    assert isinstance(FakeEngine(), SynthesisEngine)
    assert not isinstance(SimpleNamespace(run=FakeEngine().run), SynthesisEngine)  # no target_modality/metadata
    engine_module = pytest.importorskip("DualDSynthesisLib.inference.engine")
    assert engine_module.SynthesisCancelled is SynthesisCancelled  # one class: the logic catches the engine's
    assert isinstance(engine_module.SynthesisEngine(_tiny_bundle(tmp_path), "cpu"), SynthesisEngine)


def test_geometry_round_trip_oblique_matches_slicer_reader(tmp_path, app):
    image = source_image(OBLIQUE)
    node = mrml_io.new_volume_node_from_image(app.scene, image, "oblique")
    back = mrml_io.image_from_volume_node(node)
    assert Grid.from_image(back).matches(image, tol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    # Independent truth: Slicer's own NRRD reader must give the same IJK-to-RAS.
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))
    read = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read")
    storage = app.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(read)
    np.testing.assert_allclose(mrml_io.ijk_to_ras_matrix(node), mrml_io.ijk_to_ras_matrix(read), atol=1e-6)
    np.testing.assert_array_equal(mrml_io.array_from_volume_node(read), sitk.GetArrayFromImage(image))


def test_synthesize_creates_two_nodes_with_source_geometry_and_leaves_input_untouched(app):
    node = mrml_io.new_volume_node_from_image(app.scene, source_image(OBLIQUE), "T1")
    logic = DualDSynthesisLogic(scene=app.scene, application_logic=app.application_logic)
    before_array = mrml_io.array_from_volume_node(node)
    before_matrix = mrml_io.ijk_to_ras_matrix(node)
    before_ids = node_ids(app.scene)
    progress: list[tuple[float, str]] = []

    out = logic.synthesize(node, FakeEngine(), progress=lambda f, m: progress.append((f, m)))

    for new in (out.synthetic_node, out.heatmap_node):
        assert new.GetID() not in before_ids
        np.testing.assert_allclose(mrml_io.ijk_to_ras_matrix(new), before_matrix, atol=1e-9)
    np.testing.assert_allclose(
        mrml_io.array_from_volume_node(out.synthetic_node), FakeEngine.synthetic_array(before_array), atol=1e-5
    )
    np.testing.assert_allclose(
        mrml_io.array_from_volume_node(out.heatmap_node), FakeEngine.heatmap_array(SHAPE), atol=1e-5
    )
    np.testing.assert_array_equal(mrml_io.array_from_volume_node(node), before_array)
    np.testing.assert_array_equal(mrml_io.ijk_to_ras_matrix(node), before_matrix)
    assert out.synthetic_node.GetName() == "T1 synthetic T2"
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and all(0 <= f <= 1 for f in fractions)


def test_skull_handling_reaches_the_engine_and_its_notes_the_panel(app):
    node = mrml_io.new_volume_node_from_image(app.scene, source_image(), "T1")
    logic = DualDSynthesisLogic(scene=app.scene, application_logic=app.application_logic)
    engine = FakeEngine()
    assert logic.synthesize(node, engine).notes == ["skull handling: auto"] and engine.skull == "auto"
    assert logic.synthesize(node, engine, skull="strip").notes == ["skull handling: strip"]
    assert engine.skull == "strip"


def test_existing_output_nodes_are_overwritten_and_input_cannot_be_output(loaded):
    app, logic, node = loaded
    synthetic_out = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    out = logic.synthesize(node, FakeEngine(), synthetic_node=synthetic_out)
    assert out.synthetic_node is synthetic_out
    assert mrml_io.array_from_volume_node(synthetic_out).shape == SHAPE
    with pytest.raises(ValueError, match="input volume"):
        logic.synthesize(node, FakeEngine(), heatmap_node=node)


def test_heatmap_display_node_uses_colour_table_window_and_threshold(loaded):
    app, logic, node = loaded
    out = logic.synthesize(node, FakeEngine(), display_options=DisplayOptions(opacity=0.7, lower_threshold=0.3))
    disp = out.heatmap_node.GetDisplayNode()
    color = disp.GetColorNode()
    assert color is not None and color.GetName() in display.INFERNO_NAMES
    assert color.GetNumberOfColors() >= 64
    low, high = [0.0] * 4, [0.0] * 4
    color.GetColor(0, low)
    color.GetColor(color.GetNumberOfColors() - 1, high)
    assert sum(low[:3]) < 0.2 and high[0] > 0.9 and high[1] > 0.9  # dark → pale yellow
    assert not disp.GetAutoWindowLevel()
    assert (disp.GetWindowLevelMin(), disp.GetWindowLevelMax()) == pytest.approx((0.0, 1.0))
    assert disp.GetApplyThreshold() and disp.GetLowerThreshold() == pytest.approx(0.3)
    for layout in display.SLICE_VIEWS:
        composite = next(
            app.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            for i in range(app.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
            if app.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetLayoutName() == layout
        )
        assert composite.GetBackgroundVolumeID() == out.synthetic_node.GetID()
        assert composite.GetForegroundVolumeID() == out.heatmap_node.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.7)
        assert composite.GetLinkedControl()
    logic.apply_display(node, out, DisplayOptions(background="source"))
    composite = display.slice_logic(app.scene, "Red").GetSliceCompositeNode()
    assert composite.GetBackgroundVolumeID() == node.GetID()


def _read_png(path) -> np.ndarray:
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    cols, rows, _ = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(rows, cols, -1)[::-1]  # top row first


def test_red_slice_png_shows_heat_colours_only_where_heatmap_is_high(tmp_path, loaded):
    app, logic, node = loaded
    out = logic.synthesize(node, FakeEngine(), display_options=DisplayOptions(opacity=1.0, lower_threshold=0.5))
    red = display.slice_logic(app.scene, "Red")
    size = (96, 80)
    # Through the tumour's middle slice: k = 5 → RAS S = origin + 5 * 2.5.
    offset = 7.5 + 5 * 2.5
    path = display.render_slice_to_png(
        app.scene, tmp_path / "red.png", "Red", size, offset=offset, restore_view=False
    )
    rgb = _read_png(path)[..., :3].astype(int)
    assert rgb.shape[:2] == (size[1], size[0])
    heat = (rgb[..., 0] - rgb[..., 2] > 60) & (rgb[..., 0] > 150)  # warm inferno colours, not grey

    # Where does each pixel land in the heatmap? XY → RAS (slice node) → IJK (volume).
    m = red.GetSliceNode().GetXYToRAS()
    xy_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    ras_to_ijk = np.linalg.inv(mrml_io.ijk_to_ras_matrix(out.heatmap_node))
    rows, cols = np.mgrid[0 : size[1], 0 : size[0]]
    xy = np.stack([cols.ravel(), (size[1] - 1 - rows).ravel(), np.zeros(rows.size), np.ones(rows.size)])
    ijk = np.rint(ras_to_ijk @ xy_to_ras @ xy).astype(int)
    heat_volume = FakeEngine.heatmap_array(SHAPE)
    inside = (ijk[:3] >= 0).all(0) & (ijk[0] < SHAPE[2]) & (ijk[1] < SHAPE[1]) & (ijk[2] < SHAPE[0])
    expected = np.zeros(rows.size, bool)
    expected[inside] = heat_volume[ijk[2, inside], ijk[1, inside], ijk[0, inside]] > 0.5
    expected = expected.reshape(size[1], size[0])
    assert expected.sum() > 50 and heat.sum() > 50
    agreement = (heat == expected).mean()
    assert agreement > 0.97, f"heat pixels disagree with the heatmap at {1 - agreement:.1%} of pixels"

    logic.set_heatmap_opacity(0.0)
    xy_to_ras_before = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    rgb0 = _read_png(display.render_slice_to_png(app.scene, tmp_path / "red0.png", "Red", size, offset=offset))
    rgb0 = rgb0[..., :3].astype(int)
    assert (rgb0[..., 0] == rgb0[..., 1]).all() and (rgb0[..., 1] == rgb0[..., 2]).all()  # greyscale only
    assert rgb0.max() > 100  # and the synthetic background is really there
    m = red.GetSliceNode().GetXYToRAS()
    xy_to_ras_after = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(xy_to_ras_after, xy_to_ras_before)  # the view was put back


def _segmentation_from_labels(scene, labels: np.ndarray, reference_image: sitk.Image, names: list[str]):
    label_image = sitk.GetImageFromArray(labels.astype(np.int16))
    label_image.CopyInformation(reference_image)
    labelmap = mrml_io.new_volume_node_from_image(
        scene, label_image, "labels", class_name="vtkMRMLLabelMapVolumeNode"
    )
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumour segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    for index, name in enumerate(names):
        segmentation.GetSegmentation().GetNthSegment(index).SetName(name)
    return segmentation, labelmap


def _column(table_node, name: str) -> list:
    column = table_node.GetTable().GetColumnByName(name)
    assert column is not None, f"no column {name!r}"
    return [column.GetValue(i) for i in range(column.GetNumberOfTuples())]


def test_cancel_leaves_scene_without_new_nodes(loaded):
    app, logic, node = loaded
    before = node_ids(app.scene)
    before_array = mrml_io.array_from_volume_node(node)
    engine = FakeEngine()
    with pytest.raises(SynthesisCancelled):
        logic.synthesize(
            node,
            engine,
            cancel=lambda: len(engine.progress_seen) >= 2,
            display_options=DisplayOptions(),
            qa_options=QAOptions(),
        )
    assert node_ids(app.scene) == before
    np.testing.assert_array_equal(mrml_io.array_from_volume_node(node), before_array)
    # Cancelled just as the engine finished: still nothing written.
    with pytest.raises(SynthesisCancelled):
        logic.synthesize(node, FakeEngine(cancel_error=RuntimeError), cancel=_true_after(4))
    assert node_ids(app.scene) == before


def _true_after(n: int):
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > n

    return cancel


def test_failure_while_writing_removes_the_nodes_it_created(loaded, monkeypatch):
    app, logic, node = loaded
    before = node_ids(app.scene)

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(qa, "write_qa_table", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        logic.synthesize(node, FakeEngine(), qa_options=QAOptions())
    assert node_ids(app.scene) == before


def test_bundle_without_d2_gives_synthetic_only(loaded):
    app, logic, node = loaded
    engine = FakeEngine(with_heatmap=False)
    out = logic.synthesize(node, engine, display_options=DisplayOptions(), qa_options=QAOptions())
    assert out.heatmap_node is None
    assert app.scene.GetNodeByID(out.synthetic_node.GetID()) is not None
    assert out.qa_columns == [(qa.COLUMN_NAME, "name"), (qa.COLUMN_VOXELS, "voxels")]  # no heatmap column


def test_segment_subset_and_missing_dependencies(tmp_path, loaded):
    app, _, node = loaded
    labels = np.zeros(SHAPE, np.int16)
    labels[TUMOUR] = 1
    labels[0:2, 0:5, 0:5] = 2
    segmentation, _ = _segmentation_from_labels(app.scene, labels, source_image(), ["a", "b"])
    second = segmentation.GetSegmentation().GetNthSegmentID(1)
    before = node_ids(app.scene)
    got, names = mrml_io.labels_from_segmentation_node(segmentation, node, [second])
    assert names == {1: "b"} and np.array_equal(got, (labels == 2).astype(np.int32))
    assert node_ids(app.scene) == before  # temporary labelmap and its colour table are gone

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nnumpy>=1.20\ntorch>=2\nsurely-not-installed-dualdx==1.0\n")
    assert DualDSynthesisLogic.missing_requirements(requirements) == ["surely-not-installed-dualdx==1.0"]
    assert DualDSynthesisLogic.available_devices()[:2] == ["auto", "cpu"]


def _tiny_bundle(tmp_path):
    try:
        import bundles  # Testing/bundles.py: random-weight bundles
    except ImportError as exc:
        pytest.skip(f"tiny bundle helper unavailable: {exc}")
    pytest.importorskip("DualDSynthesisLib.inference.engine")
    return bundles.make_bundle(tmp_path / "tiny.safetensors")


def test_real_engine_through_the_logic_keeps_geometry_and_cancels_cleanly(tmp_path, app):
    bundle = _tiny_bundle(tmp_path)
    image = sitk.GetImageFromArray(source_array()[:, :, :40])
    image.SetSpacing((1.0, 1.0, 3.0))
    image.SetDirection(OBLIQUE)
    node = mrml_io.new_volume_node_from_image(app.scene, image, "T1")
    logic = DualDSynthesisLogic(scene=app.scene, application_logic=app.application_logic)
    engine = logic.load_engine(bundle, "cpu")
    assert logic.load_engine(bundle, "cpu") is engine  # cached
    before = node_ids(app.scene)

    with pytest.raises(SynthesisCancelled):
        logic.synthesize(node, engine, cancel=lambda: True, display_options=DisplayOptions())
    assert node_ids(app.scene) == before

    out = logic.synthesize(node, engine, display_options=DisplayOptions(), qa_options=QAOptions())
    for new in (out.synthetic_node, out.heatmap_node):
        np.testing.assert_allclose(mrml_io.ijk_to_ras_matrix(new), mrml_io.ijk_to_ras_matrix(node), atol=1e-9)
        assert np.isfinite(mrml_io.array_from_volume_node(new)).all()
    heat = mrml_io.array_from_volume_node(out.heatmap_node)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert out.synthetic_node.GetName() == "T1 synthetic t2"
    assert _column(out.qa_table_node, qa.COLUMN_NAME) == ["foreground"]
