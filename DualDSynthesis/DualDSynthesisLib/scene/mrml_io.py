"""MRML volume nodes ↔ ``SimpleITK.Image`` with exact geometry, and region labels (and a brain mask) on a
volume's grid.

Slicer-core file: imports ``slicer``/``vtk``, never ``qt``.

Slicer stores a volume as voxels plus an IJK-to-RAS matrix; ITK stores origin, spacing and a
direction matrix in LPS. RAS and LPS differ by a sign on the first two physical axes, so converting
is ``diag(-1, -1, 1)`` applied to the origin and to the rows of the direction matrix — any
direction (oblique included) survives the round trip exactly. Parent transforms of a node are not
applied: the node's own IJK-to-RAS is what is read and written.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..core.errors import DualDError
from ..imaging.grid import Grid

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class VolumeConversionError(DualDError):
    """A node or image that cannot be converted; the message is one sentence for the user."""


def ijk_to_ras_matrix(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The node's 4×4 IJK-to-RAS matrix as a numpy array."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def module_parameter_node(scene: slicer.vtkMRMLScene, module: str) -> slicer.vtkMRMLScriptedModuleNode:
    """The scene's singleton parameter node of ``module`` (what ScriptedLoadableModuleLogic does), created once."""
    node = scene.GetSingletonNode(module, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(module)
        node.SetName(scene.GenerateUniqueName(module))
        node.SetAttribute("ModuleName", module)
        node = scene.AddNode(node)
    return node


def _geometry_from_node(node: slicer.vtkMRMLVolumeNode) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, direction) in LPS, as ITK wants them."""
    dirs = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(dirs)
    direction_ras = np.array([[dirs.GetElement(r, c) for c in range(3)] for r in range(3)])
    direction_lps = _RAS_TO_LPS @ direction_ras
    origin_lps = _RAS_TO_LPS @ np.array(node.GetOrigin(), dtype=float)
    return tuple(origin_lps.tolist()), tuple(node.GetSpacing()), tuple(direction_lps.ravel().tolist())


def _set_node_geometry(node: slicer.vtkMRMLVolumeNode, image: sitk.Image) -> None:
    direction_lps = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    direction_ras = _RAS_TO_LPS @ direction_lps
    origin_ras = _RAS_TO_LPS @ np.array(image.GetOrigin(), dtype=float)
    dirs = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            dirs.SetElement(r, c, float(direction_ras[r, c]))
    node.SetIJKToRASDirectionMatrix(dirs)
    node.SetOrigin(*origin_ras.tolist())
    node.SetSpacing(*image.GetSpacing())


def array_from_volume_node(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """A copy of the node's voxels as ``[k, j, i]`` (the layout ``sitk.GetArrayFromImage`` uses)."""
    if node is None:
        raise VolumeConversionError("no volume node was given")
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise VolumeConversionError(f"volume '{node.GetName()}' has no image data")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise VolumeConversionError(
            f"volume '{node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components; "
            "a single-component scalar volume is needed"
        )
    dims = image_data.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    return np.array(flat, copy=True).reshape(dims[2], dims[1], dims[0])


def image_from_volume_node(node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
    """The node's voxels and geometry as a ``sitk.Image`` (LPS); the node is not modified."""
    image = sitk.GetImageFromArray(array_from_volume_node(node))
    origin, spacing, direction = _geometry_from_node(node)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _image_data_from_array(array: np.ndarray) -> vtk.vtkImageData:
    if array.ndim != 3:
        raise VolumeConversionError(f"a 3D image is needed, got {array.ndim} dimensions")
    array = np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image_data.GetPointData().SetScalars(scalars)
    return image_data


def update_volume_node_from_image(node: slicer.vtkMRMLVolumeNode, image: sitk.Image) -> None:
    """Replace ``node``'s voxels and geometry with ``image``'s (for output nodes only)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeConversionError("a 3D single-component image is needed")
    image_data = _image_data_from_array(sitk.GetArrayFromImage(image))
    was_modifying = node.StartModify()
    try:
        node.SetAndObserveImageData(image_data)
        _set_node_geometry(node, image)
    finally:
        node.EndModify(was_modifying)


def new_volume_node_from_image(
    scene: slicer.vtkMRMLScene,
    image: sitk.Image,
    name: str,
    class_name: str = "vtkMRMLScalarVolumeNode",
    create_display: bool = True,
) -> slicer.vtkMRMLVolumeNode:
    """Add a new volume node holding ``image`` to ``scene`` (name made unique)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeConversionError("a 3D single-component image is needed")
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    try:
        update_volume_node_from_image(node, image)
        if create_display:
            node.CreateDefaultDisplayNodes()
    except Exception:
        scene.RemoveNode(node)
        raise
    return node


def resample_to_grid(image: sitk.Image, reference: sitk.Image, nearest: bool = False) -> sitk.Image:
    """``image`` on ``reference``'s grid (identity transform in physical space); unchanged if equal."""
    if Grid.from_image(image).matches(reference):
        return image
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


def _node_ids(scene: slicer.vtkMRMLScene, class_name: str) -> set[str]:
    return {scene.GetNthNodeByClass(i, class_name).GetID() for i in range(scene.GetNumberOfNodesByClass(class_name))}


def labels_from_labelmap_node(
    node: slicer.vtkMRMLLabelMapVolumeNode, reference: sitk.Image
) -> tuple[np.ndarray, dict[int, str]]:
    """Label values of a labelmap volume on ``reference``'s grid, with names from its colour table."""
    labels_image = resample_to_grid(image_from_volume_node(node), reference, nearest=True)
    labels = sitk.GetArrayFromImage(labels_image).astype(np.int32)
    color_node = node.GetDisplayNode().GetColorNode() if node.GetDisplayNode() else None
    names: dict[int, str] = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        name = color_node.GetColorName(int(value)) if color_node is not None else ""
        names[int(value)] = name if name and name != "(none)" else f"label {int(value)}"
    return labels, names


def labels_from_segmentation_node(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    reference_node: slicer.vtkMRMLVolumeNode,
    segment_ids: list[str] | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Segments exported to labels (1, 2, … in ``segment_ids`` order) on ``reference_node``'s grid.

    Uses ``vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode`` (works in slicer-core)
    through a temporary labelmap node that is removed afterwards. Overlapping segments: the later
    one wins, as in Slicer's own export.
    """
    scene = segmentation_node.GetScene()
    segmentation = segmentation_node.GetSegmentation()
    if segment_ids is None or len(segment_ids) == 0:
        segment_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not segment_ids:
        raise VolumeConversionError(f"segmentation '{segmentation_node.GetName()}' has no segments")
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        if segmentation.GetSegment(segment_id) is None:
            raise VolumeConversionError(f"segment '{segment_id}' is not in '{segmentation_node.GetName()}'")
        ids.InsertNextValue(segment_id)
    # The export also creates a colour table for the labelmap; it is removed with the labelmap.
    colors_before = _node_ids(scene, "vtkMRMLColorTableNode")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "DualDTemporaryLabels")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, reference_node
        )
        if not ok:
            raise VolumeConversionError(f"segments of '{segmentation_node.GetName()}' could not be exported")
        labels_image = resample_to_grid(
            image_from_volume_node(labelmap), image_from_volume_node(reference_node), nearest=True
        )
    finally:
        display = labelmap.GetDisplayNode()
        if display is not None:
            scene.RemoveNode(display)
        scene.RemoveNode(labelmap)
        for node_id in _node_ids(scene, "vtkMRMLColorTableNode") - colors_before:
            scene.RemoveNode(scene.GetNodeByID(node_id))
    names = {i + 1: segmentation.GetSegment(s).GetName() for i, s in enumerate(segment_ids)}
    return sitk.GetArrayFromImage(labels_image).astype(np.int32), names


def labels_from_region_node(
    node: slicer.vtkMRMLNode,
    reference_node: slicer.vtkMRMLVolumeNode,
    reference: sitk.Image,
    segment_ids: list[str] | None = None,
    role: str = "",
) -> tuple[np.ndarray, dict[int, str]]:
    """Labels of a segmentation (``segment_ids``; None or empty: all) or a labelmap volume on the grid of
    ``reference_node`` (whose image is ``reference``); ``role`` ("the brain mask") prefixes the node's name in
    the error for any other node type. The one place that tells the two region kinds apart."""
    if node.IsA("vtkMRMLSegmentationNode"):
        return labels_from_segmentation_node(node, reference_node, segment_ids)
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        return labels_from_labelmap_node(node, reference)
    named = f"{role} '{node.GetName()}'".strip()
    raise VolumeConversionError(f"{named} is neither a segmentation nor a labelmap volume")


def brain_mask_from_region_node(
    node: slicer.vtkMRMLNode,
    input_node: slicer.vtkMRMLVolumeNode,
    source: sitk.Image,
    segment_ids: list[str] | None = None,
) -> sitk.Image:
    """The user's brain (a segmentation: the union of ``segment_ids``, None or empty = all; a labelmap:
    label > 0) as a UInt8 0/1 image on the grid of ``input_node`` (whose image is ``source``); the node is
    only read. An empty mask, or one that is the input, is refused by name."""
    name = node.GetName()
    if node.GetID() == input_node.GetID():
        raise ValueError(f"the brain mask '{name}' is the input volume; choose a segmentation or labelmap of "
                         "the brain")
    if node.IsA("vtkMRMLSegmentationNode") and node.GetSegmentation().GetNumberOfSegments() == 0:
        raise ValueError(f"the brain mask '{name}' is empty")
    if node.IsA("vtkMRMLLabelMapVolumeNode") and not (array_from_volume_node(node) > 0).any():
        raise ValueError(f"the brain mask '{name}' is empty")
    labels, _names = labels_from_region_node(node, input_node, source, segment_ids, role="the brain mask")
    inside = labels > 0
    if not inside.any():  # non-empty on its own, but nothing of it lies in the input volume
        raise ValueError(f"the brain mask '{name}' is empty inside the input volume '{input_node.GetName()}'")
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(source)
    return mask
