"""How the synthetic image and the heatmap are shown: colour table, window, threshold, colour legend,
slice-view layers, and an offscreen render of a slice view to PNG.

Slicer-core file: imports ``slicer``/``vtk``, never ``qt``. Rendering goes through
``vtkMRMLSliceLogic``'s reslice-and-blend pipeline, which is pure VTK imaging (no OpenGL), so it
works headless and gives the same pixels a slice view would show (without annotations).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..imaging import heatmap_kinds
from ..imaging.figures import inferno_rgb, write_png
from ..imaging.heatmap_file import SOURCE_ATTRIBUTE, UNITS_ATTRIBUTE, ascii_text

SLICE_VIEWS = ("Red", "Green", "Yellow")
_DEFAULT_ORIENTATIONS = {"Red": "Axial", "Green": "Coronal", "Yellow": "Sagittal"}
INFERNO_NAMES = ("Inferno", "DualDInferno")  # Slicer's own table first, ours as the fallback
FALLBACK_COLOR_NAME = "DualDInferno"

# matplotlib's inferno sampled at 33 evenly spaced points (linear interpolation between them stays
# within 0.01 of the full 256-entry table); embedded so nothing beyond Slicer is needed.

@dataclass
class HeadlessSlicer:
    """A scene with the application and colour logics desktop Slicer would have created.

    Keeps the logics referenced: they must outlive their use of the scene.
    """

    scene: slicer.vtkMRMLScene
    application_logic: slicer.vtkMRMLApplicationLogic
    color_logic: slicer.vtkMRMLColorLogic


def create_headless_slicer() -> HeadlessSlicer:
    """Scene + ``vtkSlicerApplicationLogic`` + ``vtkMRMLColorLogic`` (default colour tables) for slicer-core.

    Without the colour logic the default ``Grey`` table is missing and volumes render black.
    """
    scene = slicer.vtkMRMLScene()
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    color_logic = slicer.vtkMRMLColorLogic()
    color_logic.SetMRMLScene(scene)
    application_logic.SetColorLogic(color_logic)
    return HeadlessSlicer(scene, application_logic, color_logic)


def heatmap_color_node(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorNode:
    """Slicer's ``Inferno`` colour node if the scene has one, else ``DualDInferno`` (created once)."""
    for name in INFERNO_NAMES:
        nodes = scene.GetNodesByClassByName("vtkMRMLColorNode", name)
        if nodes.GetNumberOfItems() > 0:
            return nodes.GetItemAsObject(0)
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(FALLBACK_COLOR_NAME)
    node.SetSingletonTag(FALLBACK_COLOR_NAME)
    node.SetTypeToUser()
    node.SetAttribute("Category", "Continuous")
    colors = inferno_rgb(256)
    node.SetNumberOfColors(len(colors))
    node.GetLookupTable().SetTableRange(0, 255)
    for i, (r, g, b) in enumerate(colors):
        node.SetColor(i, f"inferno{i}", float(r), float(g), float(b), 1.0)
    node.SetHideFromEditors(False)
    return scene.AddNode(node)


def heatmap_kind(heatmap_node: slicer.vtkMRMLScalarVolumeNode | None) -> heatmap_kinds.HeatmapKind:
    """The kind the logic recorded on the node (D2's when nothing was recorded, as older scenes hold)."""
    return heatmap_kinds.kind(heatmap_node.GetAttribute(SOURCE_ATTRIBUTE) if heatmap_node is not None else None)


def heatmap_units(heatmap_node: slicer.vtkMRMLScalarVolumeNode | None) -> str:
    """What the node's values mean: the units the logic recorded, else its kind's own sentence (the legend)."""
    recorded = heatmap_node.GetAttribute(UNITS_ATTRIBUTE) if heatmap_node is not None else None
    return heatmap_kind(heatmap_node).legend(recorded or "")


def heatmap_window(heatmap_node: slicer.vtkMRMLScalarVolumeNode | None) -> tuple[float, float]:
    """[0, the kind's display maximum]: 1 for D2's probability, the 99th percentile of the non-zero values
    for an expected-error map (``HeatmapKind.display_max``); None: no map yet (D2's, as the legend)."""
    kind = heatmap_kind(heatmap_node)
    image = heatmap_node.GetImageData() if heatmap_node is not None else None
    values = np.zeros(0, np.float32) if image is None else numpy_support.vtk_to_numpy(
        image.GetPointData().GetScalars())
    return 0.0, kind.display_max(values)


def apply_heatmap_display(
    heatmap_node: slicer.vtkMRMLScalarVolumeNode, lower_threshold: float | None = None
) -> slicer.vtkMRMLScalarVolumeDisplayNode:
    """Inferno colours over :func:`heatmap_window`, values below ``lower_threshold`` (a fraction of the
    window; None: the kind's default) transparent, and a colour legend titled with the map's units."""
    if lower_threshold is None:
        lower_threshold = heatmap_kind(heatmap_node).display.threshold
    scene = heatmap_node.GetScene()
    if heatmap_node.GetDisplayNode() is None:
        heatmap_node.CreateDefaultDisplayNodes()
    display = heatmap_node.GetDisplayNode()
    low, high = heatmap_window(heatmap_node)
    was_modifying = display.StartModify()
    try:
        display.SetAndObserveColorNodeID(heatmap_color_node(scene).GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(low, high)
        display.AutoThresholdOff()
        display.ApplyThresholdOn()
        # Upper bound far above any value so only the lower threshold ever cuts.
        display.SetThreshold(float(lower_threshold) * high, 1.0e12)
        display.SetInterpolate(True)
    finally:
        display.EndModify(was_modifying)
    add_heatmap_legend(heatmap_node)
    return display


def add_heatmap_legend(heatmap_node: slicer.vtkMRMLScalarVolumeNode) -> slicer.vtkMRMLColorLegendDisplayNode:
    """Slicer's colour legend for the heatmap (shown in the slice views), titled with its units."""
    scene = heatmap_node.GetScene()
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):  # desktop Slicer's Colors module does it
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(heatmap_node)
    legend.SetTitleText(ascii_text(heatmap_units(heatmap_node)))
    legend.SetLabelFormat("%.3g")
    legend.SetVisibility(True)
    return legend


def set_heatmap_threshold(heatmap_node: slicer.vtkMRMLScalarVolumeNode, lower_threshold: float) -> None:
    """``lower_threshold``: a fraction of the display window's upper end (the same 0–1 slider for every map)."""
    display = heatmap_node.GetDisplayNode()
    if display is not None:
        display.SetLowerThreshold(float(lower_threshold) * display.GetWindowLevelMax())


def _composite_nodes(scene: slicer.vtkMRMLScene, layouts: tuple[str, ...]) -> list:
    nodes = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if node.GetLayoutName() in layouts:
            nodes.append(node)
    return nodes


def ensure_slice_views(
    scene: slicer.vtkMRMLScene,
    layouts: tuple[str, ...] = SLICE_VIEWS,
    application_logic: slicer.vtkMRMLApplicationLogic | None = None,
) -> None:
    """Create the slice and slice-composite nodes of ``layouts`` that the scene lacks.

    Desktop Slicer already has them (its layout manager creates them); a bare scene does not.
    """
    present = {n.GetLayoutName() for n in _composite_nodes(scene, layouts)}
    for layout in layouts:
        if layout not in present:
            slice_logic(scene, layout, application_logic)


def set_slice_view_layers(
    scene: slicer.vtkMRMLScene,
    background_node: slicer.vtkMRMLVolumeNode | None,
    heatmap_node: slicer.vtkMRMLVolumeNode | None,
    opacity: float | None = None,
    layouts: tuple[str, ...] = SLICE_VIEWS,
    link: bool = True,
) -> None:
    """Background = ``background_node``, foreground = heatmap at ``opacity`` (None: its kind's default), views
    linked."""
    if opacity is None:
        opacity = heatmap_kind(heatmap_node).display.opacity
    for composite in _composite_nodes(scene, layouts):
        was_modifying = composite.StartModify()
        try:
            if background_node is not None:
                composite.SetBackgroundVolumeID(background_node.GetID())
            composite.SetForegroundVolumeID(heatmap_node.GetID() if heatmap_node is not None else None)
            composite.SetForegroundOpacity(float(opacity))
            composite.SetLinkedControl(int(link))
        finally:
            composite.EndModify(was_modifying)


def set_heatmap_opacity(scene: slicer.vtkMRMLScene, opacity: float, layouts: tuple[str, ...] = SLICE_VIEWS) -> None:
    for composite in _composite_nodes(scene, layouts):
        composite.SetForegroundOpacity(float(opacity))


def slice_logic(
    scene: slicer.vtkMRMLScene,
    layout: str = "Red",
    application_logic: slicer.vtkMRMLApplicationLogic | None = None,
) -> slicer.vtkMRMLSliceLogic:
    """The application's slice logic for ``layout`` if it has one, else a new one on ``scene``.

    A new logic reuses the scene's slice node of that layout (slice nodes are singletons by layout
    name) and creates the composite node if missing.
    """
    if application_logic is not None:
        existing = application_logic.GetSliceLogicByLayoutName(layout)
        if existing is not None:
            return existing
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    if application_logic is not None:
        logic.SetMRMLApplicationLogic(application_logic)
    existing_node = None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        if node.GetLayoutName() == layout:
            existing_node = node
            break
    if existing_node is not None:
        # AddSliceNode would return an orphan copy of a singleton that already exists.
        logic.SetSliceNode(existing_node)
    else:
        # A bare scene's slice nodes have no orientation presets (desktop Slicer adds them at start):
        # without them a new view is "Reformat" with an identity matrix, i.e. mirrored left-right.
        default_node = scene.GetDefaultNodeByClass("vtkMRMLSliceNode")
        if default_node is None or not default_node.HasSliceOrientationPreset("Axial"):
            slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
        node = logic.AddSliceNode(layout)
        orientation = _DEFAULT_ORIENTATIONS.get(layout, "Axial")
        node.SetDefaultOrientation(orientation)
        node.SetOrientation(orientation)
    return logic


def render_slice(
    scene: slicer.vtkMRMLScene,
    layout: str = "Red",
    size: tuple[int, int] = (256, 256),
    offset: float | None = None,
    application_logic: slicer.vtkMRMLApplicationLogic | None = None,
    restore_view: bool = True,
) -> np.ndarray:
    """The blended slice view image as ``[rows, cols, 4]`` uint8 RGBA, top row first.

    The field of view is fitted to the background volume; ``offset`` (mm along the slice normal)
    picks the slice, default: the volume's centre. ``restore_view``: put the slice node's size,
    field of view and position back afterwards (in desktop Slicer it is the user's view).
    """
    logic = slice_logic(scene, layout, application_logic)
    slice_node = logic.GetSliceNode()
    saved = (slice_node.GetDimensions(), slice_node.GetFieldOfView(), slice_node.GetXYZOrigin())
    saved_slice_to_ras = vtk.vtkMatrix4x4()
    saved_slice_to_ras.DeepCopy(slice_node.GetSliceToRAS())
    try:
        slice_node.SetDimensions(int(size[0]), int(size[1]), 1)
        logic.FitSliceToBackground(int(size[0]), int(size[1]))
        if offset is not None:
            logic.SetSliceOffset(float(offset))
        image = _blend_output(logic)
        dims = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        rgba = np.array(pixels, copy=True).reshape(dims[1], dims[0], -1)
    finally:
        if restore_view:
            _restore_slice_node(slice_node, saved, saved_slice_to_ras)
    if rgba.shape[2] == 3:
        rgba = np.concatenate([rgba, np.full((*rgba.shape[:2], 1), 255, np.uint8)], axis=2)
    return rgba[::-1]  # VTK's first row is the bottom one


def _restore_slice_node(slice_node, saved: tuple, saved_slice_to_ras: vtk.vtkMatrix4x4) -> None:
    was_modifying = slice_node.StartModify()
    slice_node.SetDimensions(*saved[0])
    slice_node.SetFieldOfView(*saved[1])
    slice_node.SetXYZOrigin(*saved[2])
    slice_node.GetSliceToRAS().DeepCopy(saved_slice_to_ras)
    slice_node.UpdateMatrices()
    slice_node.EndModify(was_modifying)


def _blend_output(logic: slicer.vtkMRMLSliceLogic) -> vtk.vtkImageData:
    connection = logic.GetImageDataConnection()
    producer = connection.GetProducer()
    producer.Update()
    return producer.GetOutputDataObject(connection.GetIndex())


def render_slice_to_png(
    scene: slicer.vtkMRMLScene,
    path: str | Path,
    layout: str = "Red",
    size: tuple[int, int] = (256, 256),
    offset: float | None = None,
    application_logic: slicer.vtkMRMLApplicationLogic | None = None,
    restore_view: bool = True,
) -> Path:
    """Render the ``layout`` slice view offscreen (no OpenGL) and save it as a PNG."""
    return write_png(render_slice(scene, layout, size, offset, application_logic, restore_view), path)
