"""DualDSynthesis module logic: volume node → synthesis engine → new synthetic and heatmap nodes.

Slicer-core file: imports ``slicer``/``vtk``, never ``qt``, so it runs in desktop Slicer and in
headless tests alike. The engine is reached only through the contract (``contract.py``: the
``SynthesisEngine`` protocol, its result and its errors; a real ``engine.SynthesisEngine`` or a test
double), and torch is never imported here.

A synthesis is running, then showing: ``read_input`` (the input node and brain mask, read on the scene's
thread) and ``run_engine`` (the engine alone, no MRML: any thread) give the engine's ``SynthesisResult``
without changing the scene; ``show_result`` puts a result in the scene. ``synthesize`` is the three in a row
(the Slicer panel); the web viewer runs the engine in a worker thread and shows the result on the scene's.

Guarantees: the input node is never modified; nothing is added to the scene until the engine has
finished without being cancelled, and if writing the results fails, the nodes this call created are
removed again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from ..imaging import heatmap_kinds
from ..imaging.heatmap_file import SOURCE_ATTRIBUTE, UNITS_ATTRIBUTE
from ..imaging.preprocess import PreprocessingSpec
from ..inference.contract import CancelCallback, ProgressCallback, SynthesisCancelled, SynthesisEngine, SynthesisResult
from . import dicom_marking, display, input_nodes, models, mrml_io, qa

__all__ = [
    "CancelCallback", "DisplayOptions", "DualDSynthesisLogic", "ProgressCallback", "QAOptions", "SynthesisCancelled",
    "SynthesisEngine", "SynthesisInput", "SynthesisOutputs", "SynthesisResult",
]

_ENGINE_SHARE = 0.9  # progress fraction given to the engine; the rest is writing results and QA


@dataclass
class DisplayOptions:
    """How the result is shown; the overlay's opacity and threshold start at ``heatmap_kinds.DISPLAY_DEFAULTS``
    (the panel's and the viewer's sliders too)."""

    opacity: float = heatmap_kinds.DISPLAY_DEFAULTS.opacity
    lower_threshold: float = heatmap_kinds.DISPLAY_DEFAULTS.threshold
    background: str = "synthetic"  # or "source"
    layouts: tuple[str, ...] = display.SLICE_VIEWS
    link_views: bool = True


@dataclass
class QAOptions:
    """Region QA inputs; with neither regions nor reference only the foreground row is computed."""

    region_node: Any = None  # vtkMRMLSegmentationNode or vtkMRMLLabelMapVolumeNode
    segment_ids: list[str] | None = None  # segmentation only; None or empty: all segments
    reference_node: Any = None  # real target volume (any grid; resampled onto the source's)
    target_modality: str | None = None  # None: the engine's (bundle metadata)


@dataclass
class SynthesisOutputs:
    synthetic_node: Any
    heatmap_node: Any = None
    qa_table_node: Any = None
    difference_node: Any = None
    qa_rows: list[qa.RegionMetrics] = field(default_factory=list)
    qa_columns: list[tuple[str, str]] = field(default_factory=list)  # qa.table_columns of the QA table
    qa_notes: dict[str, str] = field(default_factory=dict)  # qa.calibration_notes: a column's calibration
    warnings: list[str] = field(default_factory=list)  # the engine's, for the status line
    notes: list[str] = field(default_factory=list)  # what the engine did that the user should know (skull)


@dataclass(frozen=True)
class SynthesisInput:
    """What the engine is given, read from the scene by ``DualDSynthesisLogic.read_input``: running the engine
    on it needs no MRML (so it may run in a worker thread), and showing the result needs ``node`` and
    ``image`` (the input's grid) again."""

    node: Any  # the input volume node; only read, and only on the scene's thread
    image: sitk.Image  # its voxels and geometry
    mask: sitk.Image | None = None  # the user's brain on ``image``'s grid (UInt8 0/1); None: none given
    skull: str = "auto"  # whole-head handling (``vocabulary.SKULL_HANDLING``)
    others: Mapping[str, sitk.Image] = field(default_factory=dict)  # a multi-input model's other inputs, any grid


def _check_nodes(input_node: Any, *output_nodes: Any) -> None:
    """Refuse a missing input, and an output node that is the input (it would be overwritten)."""
    if input_node is None:
        raise ValueError("no input volume was selected")
    for output in output_nodes:
        if output is not None and output.GetID() == input_node.GetID():
            raise ValueError("an output volume is the input volume; choose another output or a new volume")


def _default_engine_factory(bundle_path: Path, device: str, heatmap_source: str | None = None) -> SynthesisEngine:
    from ..inference.engine import SynthesisEngine as Engine  # imports torch: only when a model is really needed

    return Engine(bundle_path, device=device, heatmap_source=heatmap_source)


class DualDSynthesisLogic:
    """Everything the module does, without a GUI. ``scene`` defaults to ``slicer.mrmlScene``."""

    def __init__(
        self,
        scene: slicer.vtkMRMLScene | None = None,
        application_logic: Any = None,
        engine_factory: Callable[[Path, str], SynthesisEngine] | None = None,
    ) -> None:
        self._scene = scene
        self.application_logic = application_logic
        self.engine_factory = engine_factory or _default_engine_factory
        self._engine_cache: dict[tuple[str, str, str | None], SynthesisEngine] = {}

    @property
    def scene(self) -> slicer.vtkMRMLScene:
        if self._scene is not None:
            return self._scene
        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise ValueError("no MRML scene: pass one to DualDSynthesisLogic(scene=...) outside Slicer")
        return scene

    # ---- models, devices, dependencies ----

    # The module's static helpers live in ``models``; kept here as aliases for the panel and the tests.
    bundled_models = staticmethod(models.bundled_models)
    default_model_name = staticmethod(models.default_model_name)
    available_devices = staticmethod(models.available_devices)
    torch_available = staticmethod(models.torch_available)
    missing_requirements = staticmethod(models.missing_requirements)
    models_in = staticmethod(models.models_in)
    folder_models = staticmethod(models.folder_models)
    describe_model = staticmethod(models.describe_model)
    input_slots = staticmethod(input_nodes.input_slots)  # one selector per input the chosen model declares

    def load_engine(self, bundle_path: str | Path, device: str = "auto",
                    heatmap_source: str | None = None) -> SynthesisEngine:
        """The engine for a bundle on a device, cached so a second click does not reload weights.
        ``heatmap_source``: a ``heatmap_kinds`` name; None = the bundle's preferred (as ``--heatmap-source``)."""
        bundle_path = Path(bundle_path)
        if not bundle_path.is_file():
            raise ValueError(f"model bundle not found: {bundle_path}")
        key = (str(bundle_path.resolve()), device, heatmap_source)
        if key not in self._engine_cache:
            self._engine_cache.clear()  # one model in memory at a time
            self._engine_cache[key] = (self.engine_factory(bundle_path, device) if heatmap_source is None
                                       else self.engine_factory(bundle_path, device, heatmap_source))
        return self._engine_cache[key]

    # ---- synthesis: read the input (scene thread), run the engine (any thread), show the result (scene thread) ----

    def synthesize(
        self,
        input_node: slicer.vtkMRMLScalarVolumeNode,
        engine: SynthesisEngine,
        *,
        synthetic_node: slicer.vtkMRMLScalarVolumeNode | None = None,
        heatmap_node: slicer.vtkMRMLScalarVolumeNode | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        display_options: DisplayOptions | None = None,
        qa_options: QAOptions | None = None,
        skull: str = "auto",
        brain_mask_node: Any = None,
        brain_segment_ids: list[str] | None = None,
        other_nodes: Mapping[str, Any] | None = None,
    ) -> SynthesisOutputs:
        """Run ``engine`` on ``input_node`` and put the results in the scene: :meth:`read_input`,
        :meth:`run_engine`, then :meth:`show_result` (the viewer calls the three itself, the engine in a worker).

        ``synthetic_node``/``heatmap_node``: existing output nodes to overwrite; None creates new
        ones. ``display_options`` None leaves the views alone; ``qa_options`` None skips QA.
        ``brain_mask_node``: the user's brain (``mrml_io.brain_mask_from_region_node``: ``brain_segment_ids`` of a
        segmentation, or a labelmap), given to the engine with ``skull`` as the CLI's ``--mask`` and ``--skull``:
        the engine's one rule (``skull_policy.decide_skull``) decides, and its note, in ``notes``, says what was done.
        ``other_nodes``: a multi-input model's other inputs, ``{contrast: node}`` (None: an optional one left
        empty; ``input_nodes``); ``input_node`` is its reference input.
        Raises ``SynthesisCancelled`` (scene untouched) or ``ValueError`` for bad input.
        """
        for node in (input_node, *(n for n in (other_nodes or {}).values() if n is not None)):
            _check_nodes(node, synthetic_node, heatmap_node)  # before the engine's minutes, not after
        given = self.read_input(input_node, skull=skull, brain_mask_node=brain_mask_node,
                                brain_segment_ids=brain_segment_ids, other_nodes=other_nodes)
        result = self.run_engine(given, engine, progress=progress, cancel=cancel)
        return self.show_result(given, engine, result, synthetic_node=synthetic_node, heatmap_node=heatmap_node,
                                progress=progress, display_options=display_options, qa_options=qa_options)

    def read_input(
        self,
        input_node: slicer.vtkMRMLScalarVolumeNode,
        *,
        skull: str = "auto",
        brain_mask_node: Any = None,
        brain_segment_ids: list[str] | None = None,
        other_nodes: Mapping[str, Any] | None = None,
    ) -> SynthesisInput:
        """Running, part 1 (the scene's thread): the input node's image, the brain mask on its grid and the other
        inputs' images (``other_nodes``, as in :meth:`synthesize`), read without changing the scene. Raises
        ``ValueError`` for a missing input, a bad brain mask or bad other inputs (``input_nodes.read_other_inputs``)."""
        _check_nodes(input_node)
        others = input_nodes.read_other_inputs(input_node, other_nodes)
        image = mrml_io.image_from_volume_node(input_node)
        mask = None
        if brain_mask_node is not None:
            mask = mrml_io.brain_mask_from_region_node(brain_mask_node, input_node, image, brain_segment_ids)
        return SynthesisInput(input_node, image, mask, skull, others)

    @staticmethod
    def run_engine(
        given: SynthesisInput,
        engine: SynthesisEngine,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> SynthesisResult:
        """Running, part 2 (any thread: touches no MRML): the engine's result for ``given``, its progress
        reported as the first ``_ENGINE_SHARE`` of the whole. Raises ``SynthesisCancelled`` when ``cancel``
        is set by the end, the engine's ``SynthesisError`` for bad input (``ValueError`` for other inputs that do
        not fit the engine's model, before it runs)."""
        input_nodes.check_against_model(engine, given.others)
        report = progress or (lambda _f, _m: None)

        def engine_progress(fraction: float, message: str) -> None:
            report(_ENGINE_SHARE * min(max(float(fraction), 0.0), 1.0), message)

        report(0.0, "Synthesizing…")
        # SynthesisCancelled propagates
        others = {"others": dict(given.others)} if given.others else {}  # a one-input run calls run() as before
        result = engine.run(given.image, progress=engine_progress, cancel=cancel, mask=given.mask, skull=given.skull,
                            **others)
        if cancel is not None and cancel():
            raise SynthesisCancelled("synthesis cancelled")
        return result

    def show_result(
        self,
        given: SynthesisInput,
        engine: SynthesisEngine,
        result: SynthesisResult,
        *,
        synthetic_node: slicer.vtkMRMLScalarVolumeNode | None = None,
        heatmap_node: slicer.vtkMRMLScalarVolumeNode | None = None,
        progress: ProgressCallback | None = None,
        display_options: DisplayOptions | None = None,
        qa_options: QAOptions | None = None,
    ) -> SynthesisOutputs:
        """Showing (the scene's thread): ``engine``'s ``result`` for ``given`` as nodes on the input's grid,
        with the heatmap's attributes, the DICOM marking, the QA table and difference volume (``qa_options``)
        and the views (``display_options``); options as in :meth:`synthesize`. Computed before anything is
        added; the nodes it created are removed again if writing them fails."""
        _check_nodes(given.node, synthetic_node, heatmap_node)
        report = progress or (lambda _f, _m: None)
        source = given.image
        synthetic = sitk.Cast(mrml_io.resample_to_grid(result.synthetic, source), sitk.sitkFloat32)
        heatmap = result.heatmap
        if heatmap is not None:
            heatmap = sitk.Cast(mrml_io.resample_to_grid(heatmap, source), sitk.sitkFloat32)
        modality = (qa_options.target_modality if qa_options else None) or result.target_modality \
            or engine.target_modality or None

        report(_ENGINE_SHARE, "Computing region QA…" if qa_options else "Writing results…")
        heatmap_source = result.heatmap_source if heatmap is not None else None
        qa_inputs = self._qa_inputs(given.node, source, synthetic, heatmap, qa_options, engine.spec, heatmap_source)
        created: list[Any] = []
        try:
            outputs = self._write_outputs(given.node, synthetic, heatmap, synthetic_node, heatmap_node, modality,
                                          created)
            if outputs.heatmap_node is not None:
                self._describe_heatmap(outputs.heatmap_node, result, given.node.GetName(), created)
            outputs.qa_columns = qa.table_columns(heatmap_source, engine.spec, modality, heatmap is not None,
                                                  qa_inputs is not None and qa_inputs[1] is not None)
            outputs.qa_notes = qa.calibration_notes(heatmap_source, engine.metadata)
            marking = dicom_marking.marking_from_engine(engine)
            if marking is not None:  # what "Export to DICOM" (and Slicer's DICOM export) reads from the node
                dicom_marking.mark_node(outputs.synthetic_node, marking, given.node)
            if qa_inputs is not None:
                self._write_qa(given.node, synthetic, qa_inputs, outputs, created)
            if display_options is not None:
                self.apply_display(given.node, outputs, display_options)
        except Exception:
            self.remove_nodes(created)
            raise
        outputs.warnings = [str(w) for w in result.warnings]
        outputs.notes = [str(n) for n in result.notes]
        report(1.0, "Done")
        return outputs

    def _write_qa(self, input_node: Any, synthetic: sitk.Image,
                  qa_inputs: tuple[list[qa.RegionMetrics], sitk.Image | None], outputs: SynthesisOutputs,
                  created: list[Any]) -> None:
        """The QA table (and the |synthetic - reference| volume when a reference was given) into ``outputs``."""
        rows, reference = qa_inputs
        outputs.qa_rows = rows
        outputs.qa_table_node = qa.write_qa_table(
            self.scene, rows, outputs.qa_columns, name=f"{input_node.GetName()} DualD QA", notes=outputs.qa_notes)
        created.append(outputs.qa_table_node)
        if reference is not None:
            outputs.difference_node = qa.new_difference_node(
                self.scene, synthetic, reference, f"{input_node.GetName()} |synthetic - reference|"
            )
            created.append(outputs.difference_node)

    def _write_outputs(
        self,
        input_node: Any,
        synthetic: sitk.Image,
        heatmap: sitk.Image | None,
        synthetic_node: Any,
        heatmap_node: Any,
        modality: str | None,
        created: list[Any],
    ) -> SynthesisOutputs:
        suffix = f"synthetic {modality}" if modality else "synthetic"
        synthetic_node = self._fill_node(synthetic_node, synthetic, f"{input_node.GetName()} {suffix}", created)
        if heatmap is None:
            return SynthesisOutputs(synthetic_node=synthetic_node)
        heatmap_node = self._fill_node(heatmap_node, heatmap, f"{input_node.GetName()} heatmap", created)
        return SynthesisOutputs(synthetic_node=synthetic_node, heatmap_node=heatmap_node)

    @staticmethod
    def _describe_heatmap(node: Any, result: Any, input_name: str, created: list[Any]) -> None:
        """Record which map the node holds and its units (legend, DICOM export, saving); a node this call
        created is named after the map."""
        kind = heatmap_kinds.kind(result.heatmap_source)
        node.SetAttribute(SOURCE_ATTRIBUTE, kind.name)
        node.SetAttribute(UNITS_ATTRIBUTE, result.heatmap_units or "")
        if node in created:
            node.SetName(f"{input_name} {kind.title}")

    def _fill_node(self, node: Any, image: sitk.Image, name: str, created: list[Any]) -> Any:
        """Write ``image`` into ``node``, or into a new node (recorded in ``created``) when none is given."""
        if node is None:
            node = mrml_io.new_volume_node_from_image(self.scene, image, name)
            created.append(node)
            return node
        mrml_io.update_volume_node_from_image(node, image)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        return node

    def _qa_inputs(
        self,
        input_node: Any,
        source: sitk.Image,
        synthetic: sitk.Image,
        heatmap: sitk.Image | None,
        options: QAOptions | None,
        spec: PreprocessingSpec,
        heatmap_source: str | None = None,
    ) -> tuple[list[qa.RegionMetrics], sitk.Image | None] | None:
        """QA rows (pure numpy, before anything is written) and the reference on the source's grid."""
        if options is None:
            return None
        labels, names = None, None
        region = options.region_node
        if region is not None:
            labels, names = mrml_io.labels_from_region_node(region, input_node, source, options.segment_ids)
        reference = None
        if options.reference_node is not None:
            reference = mrml_io.resample_to_grid(mrml_io.image_from_volume_node(options.reference_node), source)
        source_array = sitk.GetArrayFromImage(source)
        rows = qa.compute_qa(
            source_array,
            spec,
            heatmap=sitk.GetArrayFromImage(heatmap) if heatmap is not None else None,
            labels=labels,
            label_names=names,
            synthetic=sitk.GetArrayFromImage(synthetic) if reference is not None else None,
            reference=sitk.GetArrayFromImage(reference).astype(np.float32) if reference is not None else None,
            heatmap_source=heatmap_source,
        )
        return rows, reference

    def remove_nodes(self, nodes: list[Any]) -> None:
        """Remove ``nodes`` and their display nodes from the scene (None and already-removed ones are skipped)."""
        for node in reversed(nodes):
            if node is None or node.GetScene() is None:
                continue
            for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
                display_node = node.GetNthDisplayNode(i)
                if display_node is not None:
                    self.scene.RemoveNode(display_node)
            self.scene.RemoveNode(node)

    # ---- display ----

    def apply_display(self, input_node: Any, outputs: SynthesisOutputs, options: DisplayOptions) -> None:
        """Heatmap colours/window/threshold and the slice views' layers for ``outputs``."""
        if options.background not in ("synthetic", "source"):
            raise ValueError(f"background must be 'synthetic' or 'source', got {options.background!r}")
        if outputs.heatmap_node is not None:
            display.apply_heatmap_display(outputs.heatmap_node, options.lower_threshold)
        display.ensure_slice_views(self.scene, options.layouts, self.application_logic)
        background = outputs.synthetic_node if options.background == "synthetic" else input_node
        display.set_slice_view_layers(
            self.scene, background, outputs.heatmap_node, options.opacity, options.layouts, options.link_views
        )

    def set_heatmap_opacity(self, opacity: float, layouts: tuple[str, ...] = display.SLICE_VIEWS) -> None:
        display.set_heatmap_opacity(self.scene, opacity, layouts)

    @staticmethod
    def set_heatmap_threshold(heatmap_node: Any, lower_threshold: float) -> None:
        display.set_heatmap_threshold(heatmap_node, lower_threshold)

    def render_slice_to_png(self, path: str | Path, layout: str = "Red", size: tuple[int, int] = (256, 256)) -> Path:
        return display.render_slice_to_png(self.scene, path, layout, size, application_logic=self.application_logic)

    # ---- DICOM export ----

    @staticmethod
    def export_dicom(synthetic_node: Any, folder: str | Path, heatmap_node: Any = None) -> str:
        """Write a marked synthetic node as a DICOM series (see ``dicom_marking.export_node``); a status line."""
        target = dicom_marking.export_node(synthetic_node, folder, heatmap_node)
        return f"Exported {synthetic_node.GetName()} as DICOM (marked synthetic, not for diagnosis) to {target}"

