"""The module logic's brain mask (the panel's "Brain mask (optional)"): a labelmap or the chosen segments of a
segmentation reach the engine as ``mask`` with the skull handling unchanged (the engine decides, as for the CLI:
skull_policy.py), and the real engine's result with *auto* equals ``duald-synthesize --mask M --skull auto`` and
``--skull strip`` on the same phantom. Slicer-core only (real MRML, no Qt)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from bundles import make_bundle  # noqa: E402
from DualDSynthesisLib.cli import synthesize as cli  # noqa: E402
from DualDSynthesisLib.scene import display, mrml_io  # noqa: E402
from DualDSynthesisLib.scene.logic import DualDSynthesisLogic  # noqa: E402
from test_brainmask import _brain_of, big_head  # noqa: E402
from test_slicer_logic import SHAPE, FakeEngine, _segmentation_from_labels, node_ids, source_image  # noqa: E402

BRAIN = (slice(2, 8), slice(10, 30), slice(12, 36))  # k, j, i: inside the fake head
OTHER = (slice(0, 2), slice(0, 6), slice(0, 6))  # a second label / segment, away from BRAIN


class CTEngine(FakeEngine):
    target_modality = "CT"


@pytest.fixture
def loaded():
    app = display.create_headless_slicer()
    node = mrml_io.new_volume_node_from_image(app.scene, source_image(), "T1")
    return app, DualDSynthesisLogic(scene=app.scene, application_logic=app.application_logic), node


def _labelmap(scene, labels: np.ndarray, reference: sitk.Image, name: str = "brain labels"):
    image = sitk.GetImageFromArray(labels.astype(np.int16))
    image.CopyInformation(reference)
    return mrml_io.new_volume_node_from_image(scene, image, name, class_name="vtkMRMLLabelMapVolumeNode")


def _state(node) -> tuple:
    """What a node holds: voxels and geometry (a volume) or segment ids and their labels (a segmentation)."""
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        names = [segmentation.GetSegment(s).GetName() for s in ids]
        return ids, names, node.GetName()
    return mrml_io.array_from_volume_node(node).tobytes(), mrml_io.ijk_to_ras_matrix(node).tobytes(), node.GetName()


def test_labelmap_mask_reaches_the_engine_with_the_skull_handling(loaded) -> None:
    app, logic, node = loaded
    labels = np.zeros(SHAPE, np.int16)
    labels[BRAIN] = 1
    labels[OTHER] = 3
    labels[9, 30:, 40:] = -1  # only label > 0 is the brain
    mask_node = _labelmap(app.scene, labels, source_image())
    before = _state(mask_node), _state(node)
    engine = FakeEngine()

    out = logic.synthesize(node, engine, brain_mask_node=mask_node)

    assert engine.skull == "auto"  # the engine's one rule decides (skull_policy.py), not the logic
    got = engine.mask
    assert got.GetSize() == source_image().GetSize() and got.GetOrigin() == source_image().GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), (labels > 0).astype(np.uint8))
    assert out.notes == ["skull handling: auto"]  # the engine's notes
    assert (_state(mask_node), _state(node)) == before


def test_chosen_segments_are_the_brain_and_keep_restricts_the_outputs(loaded) -> None:
    app, logic, node = loaded
    labels = np.zeros(SHAPE, np.int16)
    labels[BRAIN] = 1
    labels[OTHER] = 2
    segmentation, _ = _segmentation_from_labels(app.scene, labels, source_image(), ["brain", "eye"])
    brain_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    before = _state(segmentation), _state(node), node_ids(app.scene)
    engine = FakeEngine()

    out = logic.synthesize(node, engine, skull="keep", brain_mask_node=segmentation, brain_segment_ids=[brain_id])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(engine.mask), (labels == 1).astype(np.uint8))
    assert engine.skull == "keep" and out.notes == ["skull handling: keep"]
    logic.synthesize(node, engine, skull="strip", brain_mask_node=segmentation)  # no ids: all segments, united
    np.testing.assert_array_equal(sitk.GetArrayFromImage(engine.mask), (labels > 0).astype(np.uint8))
    assert engine.skull == "strip"
    logic.synthesize(node, engine)  # no mask: nothing is passed and "auto" stays
    assert engine.mask is None and engine.skull == "auto"

    ct = CTEngine()
    out = logic.synthesize(node, ct, brain_mask_node=segmentation)
    assert ct.skull == "auto" and ct.mask is not None
    assert _state(segmentation) == before[0] and _state(node) == before[1]
    # the temporary export labelmaps and their colour tables are gone: only the runs' outputs were added
    added = [app.scene.GetNodeByID(i) for i in node_ids(app.scene) - before[2]]
    assert added and all(n.IsA("vtkMRMLScalarVolumeNode") or n.IsA("vtkMRMLDisplayNode") for n in added)
    assert not any(n.IsA("vtkMRMLLabelMapVolumeNode") or n.IsA("vtkMRMLColorTableNode") for n in added)


def test_bad_brain_masks_get_one_sentence_and_no_engine_run(loaded) -> None:
    app, logic, node = loaded
    engine = FakeEngine()
    empty = _labelmap(app.scene, np.zeros(SHAPE), source_image(), "empty labels")
    no_segments = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no segments")
    far = sitk.Image(source_image())
    far.SetOrigin((500.0, 500.0, 500.0))  # a labelled volume that lies nowhere near the input
    outside = _labelmap(app.scene, np.ones(SHAPE), far, "far labels")
    plain = mrml_io.new_volume_node_from_image(app.scene, source_image(), "a T2")
    labels = np.zeros(SHAPE, np.int16)
    labels[BRAIN] = 1
    segmentation, _ = _segmentation_from_labels(app.scene, labels, source_image(), ["brain"])
    before = {n.GetID(): _state(n) for n in (empty, no_segments, outside, plain, segmentation, node)}
    ids = node_ids(app.scene)
    cases = [
        (empty, "the brain mask 'empty labels' is empty"),
        (no_segments, "the brain mask 'no segments' is empty"),
        (outside, "the brain mask 'far labels' is empty inside the input volume 'T1'"),
        (plain, "the brain mask 'a T2' is neither a segmentation nor a labelmap volume"),
        (node, "the brain mask 'T1' is the input volume; choose a segmentation or labelmap of the brain"),
    ]
    for mask_node, message in cases:
        with pytest.raises(ValueError) as info:
            logic.synthesize(node, engine, brain_mask_node=mask_node)
        assert str(info.value) == message
    with pytest.raises(ValueError, match="segment 'nope' is not in 'tumour segmentation'"):
        logic.synthesize(node, engine, brain_mask_node=segmentation, brain_segment_ids=["nope"])
    assert engine.calls == 0
    assert {n.GetID(): _state(n) for n in (empty, no_segments, outside, plain, segmentation, node)} == before
    assert node_ids(app.scene) == ids  # nothing was added, the temporary export labelmap included


# ----------------------------------------------------------------------------- the real engine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    return make_bundle(tmp_path_factory.mktemp("b") / "t.safetensors")


def test_real_engine_strips_with_the_mask_as_the_cli_does(tmp_path, loaded, bundle) -> None:
    """A whole 'head' and a brain box: the panel's path (labelmap or segmentation, skull "auto") gives the
    CLI's ``--mask --skull strip`` result and its ``--mask --skull auto`` one, background outside the brain."""
    from DualDSynthesisLib.inference.engine import SynthesisEngine

    app, logic, _ = loaded
    image, brain = big_head(), _brain_of(big_head())
    sitk.WriteImage(image, str(tmp_path / "head.nii.gz"))
    sitk.WriteImage(brain, str(tmp_path / "brain.nii.gz"))
    code = cli.main([str(tmp_path / "head.nii.gz"), "-o", str(tmp_path / "syn.nii.gz"), "--model", str(bundle),
                     "--device", "cpu", "--mask", str(tmp_path / "brain.nii.gz"), "--skull", "strip", "-q"])
    assert code == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "syn.nii.gz")))
    code = cli.main([str(tmp_path / "head.nii.gz"), "-o", str(tmp_path / "auto.nii.gz"), "--model", str(bundle),
                     "--device", "cpu", "--mask", str(tmp_path / "brain.nii.gz"), "-q"])  # --skull auto
    assert code == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "auto.nii.gz"))), expected)

    node = mrml_io.new_volume_node_from_image(app.scene, image, "head")
    mask_node = _labelmap(app.scene, sitk.GetArrayFromImage(brain), image, "brain")
    segmentation, _ = _segmentation_from_labels(app.scene, sitk.GetArrayFromImage(brain) * 2, image, ["brain"])
    before = _state(node), _state(mask_node), _state(segmentation)
    engine = SynthesisEngine(bundle, device="cpu", batch_size=4)
    inside = sitk.GetArrayFromImage(brain) > 0
    for given in (mask_node, segmentation):
        out = logic.synthesize(node, engine, brain_mask_node=given)
        syn = mrml_io.array_from_volume_node(out.synthetic_node)
        heat = mrml_io.array_from_volume_node(out.heatmap_node)
        assert (syn[~inside] == 0).all() and (heat[~inside] == 0).all() and syn[inside].max() > 0
        np.testing.assert_allclose(syn, expected, atol=1e-4)
        assert any("inside the brain only (the given brain mask" in n for n in out.notes)
    assert (_state(node), _state(mask_node), _state(segmentation)) == before
