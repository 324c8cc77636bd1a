"""One viewer session: the source, segmentation and reference volumes, a synthesis run and saving.

Trame-free and Qt-free so it is tested directly under pytest. Everything shown goes through the
desktop module's own ``DualDSynthesisLogic`` (logic.py → display.py, qa.py, mrml_io.py), in the steps its
``synthesize`` takes: ``logic.read_input`` on the event-loop thread, ``logic.run_engine`` (the real engine,
no MRML) in a worker thread, then ``logic.show_result`` back on the event-loop thread, so reading the input,
node creation, QA and display are exactly the desktop module's.

Nothing is written to disk until :meth:`ViewerSession.save`, which writes under temporary names and
renames at the end (``io.AtomicOutputs``): a cancelled run or a vanished client leaves no file.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from DualDSynthesisLib.core.errors import DualDError, naming_input
from DualDSynthesisLib.core.vocabulary import LABEL_CONTRAST, canonical_contrast, known_contrasts_text
from DualDSynthesisLib.imaging import io as vio
from DualDSynthesisLib.imaging.heatmap_file import SOURCE_ATTRIBUTE, UNITS_ATTRIBUTE, stored_kind, stored_units
from DualDSynthesisLib.imaging.output_names import SYNTHETIC_SUFFIX, heatmap_suffix
from DualDSynthesisLib.imaging.preprocess import PreprocessError, validate_volume
from DualDSynthesisLib.scene import display, mrml_io
from DualDSynthesisLib.scene.logic import (
    CancelCallback,
    DisplayOptions,
    DualDSynthesisLogic,
    ProgressCallback,
    QAOptions,
    SynthesisCancelled,
    SynthesisEngine,
    SynthesisInput,
    SynthesisOutputs,
    SynthesisResult,
)


class ViewerError(DualDError):
    """Bad input or a refused action; the message is one sentence shown in the page."""


class BusyError(ViewerError):
    """A synthesis is already running in this viewer."""


def read_source(path: Path, display_name: str | None = None) -> sitk.Image:
    """The volume at ``path``, refused with the CLI's one-sentence errors (unreadable, 2-D, 4-D, constant...)."""
    name = display_name or path.name
    try:
        image = vio.read_volume(path)
        validate_volume(image, "the input volume")
    except vio.VolumeReadError as exc:
        # The same text duald-synthesize prints after "error: " (an upload's server-side folder is not shown).
        raise ViewerError(naming_input(name, str(exc).replace(str(path), name).replace(path.name, name))) from None
    except PreprocessError as exc:
        raise ViewerError(naming_input(name, str(exc).rstrip("."))) from None
    return image


class ViewerSession:
    """The scene-side state of the viewer (one per server process)."""

    def __init__(self, scene: Any, application_logic: Any, logic: DualDSynthesisLogic | None = None) -> None:
        self.scene = scene
        self.logic = logic or DualDSynthesisLogic(scene=scene, application_logic=application_logic)
        self.source_node: Any = None
        self.source_path: Path | None = None
        self.save_dir: Path | None = None  # where Save writes; the source's folder unless it was uploaded
        self.region_node: Any = None
        self.reference_node: Any = None
        self.other_nodes: dict[str, Any] = {}  # a multi-input model's other inputs: canonical contrast → node
        self.outputs: SynthesisOutputs | None = None
        self.display = DisplayOptions()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._input: SynthesisInput | None = None  # what begin read, for finish: the run's input and grid

    # ---- inputs ----

    def load_source(self, path: Path, display_name: str | None = None, save_dir: Path | None = None) -> Any:
        image = read_source(path, display_name)
        self.clear_outputs()
        # A new case: the previous case's segmentation, reference and other inputs no longer apply.
        for node in (self.source_node, self.region_node, self.reference_node, *self.other_nodes.values()):
            self._remove(node)
        self.region_node = self.reference_node = None
        self.other_nodes = {}
        name = vio.split_name(display_name or path)[0]
        self.source_node = mrml_io.new_volume_node_from_image(self.scene, image, name)
        self.source_path = path
        self.save_dir = save_dir or path.parent
        self.logic.apply_display(self.source_node, SynthesisOutputs(synthetic_node=self.source_node), self.display)
        return self.source_node

    def load_segmentation(self, path: Path, display_name: str | None = None) -> Any:
        """A label volume (any grid; resampled nearest onto the source's by the QA) as a labelmap node."""
        self._require_source()
        name = display_name or path.name
        try:
            image = vio.read_volume(path)
            validate_volume(image, "the segmentation", allow_constant=True)
        except (vio.VolumeReadError, PreprocessError) as exc:
            raise ViewerError(naming_input(name, str(exc).rstrip("."))) from None
        if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            image = sitk.Cast(sitk.Round(image), sitk.sitkInt32)
        self._remove(self.region_node)
        node = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", vio.split_name(name)[0])
        mrml_io.update_volume_node_from_image(node, image)
        self.region_node = node
        return node

    def load_reference(self, path: Path, display_name: str | None = None) -> Any:
        self._require_source()
        image = read_source(path, display_name)
        self._remove(self.reference_node)
        self.reference_node = mrml_io.new_volume_node_from_image(
            self.scene, image, vio.split_name(display_name or path)[0] + " reference"
        )
        return self.reference_node

    def load_other(self, contrast: str, path: Path, display_name: str | None = None) -> Any:
        """One more input of the loaded source's subject for a multi-input model (``contrast``: its name or an
        alias; any grid: the engine brings it onto the source's); replaces that contrast's earlier one."""
        self._require_source()
        key = canonical_contrast(contrast)
        if key is None or key == LABEL_CONTRAST:
            raise ViewerError(f"input {contrast!r} is not a known image contrast; known: {known_contrasts_text()}")
        image = read_source(path, display_name)
        self._remove(self.other_nodes.pop(key, None))
        self.other_nodes[key] = mrml_io.new_volume_node_from_image(
            self.scene, image, f"{vio.split_name(display_name or path)[0]} ({key})")
        return self.other_nodes[key]

    def load_result(self, synthetic_path: Path, heatmap_path: Path | None = None) -> SynthesisOutputs:
        """Show an earlier run's files (e.g. ``make demo``'s) over the loaded source, without synthesizing."""
        self._require_source()
        source = mrml_io.image_from_volume_node(self.source_node)
        self.clear_outputs()
        nodes = []
        for path in (synthetic_path, heatmap_path):
            if path is None:
                nodes.append(None)
                continue
            read = read_source(path)
            image = mrml_io.resample_to_grid(read, source)
            nodes.append(mrml_io.new_volume_node_from_image(self.scene, image, vio.split_name(path)[0]))
        if nodes[1] is not None:  # what the map is (expected error in units, or D2's 0-1), as the file says
            nodes[1].SetAttribute(SOURCE_ATTRIBUTE, stored_kind(read).name)
            nodes[1].SetAttribute(UNITS_ATTRIBUTE, stored_units(read))
        self.outputs = SynthesisOutputs(synthetic_node=nodes[0], heatmap_node=nodes[1])
        self.logic.apply_display(self.source_node, self.outputs, self.display)
        return self.outputs

    # ---- synthesis: begin and finish on the scene's thread, run_engine in a worker thread between them ----

    def begin(self) -> SynthesisInput:
        """Claim the single run slot and read the source for the worker thread (the logic's ``read_input``)."""
        self._require_source()
        if not self._lock.acquire(blocking=False):
            raise BusyError("a synthesis is already running in this viewer; wait for it or cancel it")
        self._cancel.clear()
        try:
            self._input = self.logic.read_input(self.source_node, other_nodes=self.other_nodes)
        except Exception:
            self._lock.release()
            raise
        return self._input

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run_engine(
        self, engine: SynthesisEngine, given: SynthesisInput, progress: ProgressCallback | None = None
    ) -> SynthesisResult:
        """Worker-thread part: the logic's ``run_engine`` (the engine only, no MRML) on what :meth:`begin`
        read. Raises ``SynthesisCancelled`` on cancel."""
        cancel: CancelCallback = self._cancel.is_set
        return self.logic.run_engine(given, engine, progress=progress, cancel=cancel)

    def finish(self, engine: SynthesisEngine, result: SynthesisResult) -> SynthesisOutputs:
        """Scene-thread part: the logic's ``show_result`` puts the engine's result in the scene (nodes, QA
        table, display) over the source :meth:`begin` read."""
        if self._cancel.is_set():
            raise SynthesisCancelled("synthesis cancelled")
        if self._input is None:
            raise ViewerError("no synthesis was begun; run Synthesize first")
        self.clear_outputs()
        qa_options = QAOptions(region_node=self.region_node, reference_node=self.reference_node)
        self.outputs = self.logic.show_result(
            self._input, engine, result, display_options=self.display, qa_options=qa_options
        )
        return self.outputs

    def end(self) -> None:
        self._input = None  # the source's copy is not kept between runs
        with contextlib.suppress(RuntimeError):
            self._lock.release()

    # ---- display ----

    def set_opacity(self, opacity: float) -> None:
        self.display.opacity = float(opacity)
        self.logic.set_heatmap_opacity(self.display.opacity)

    def set_threshold(self, threshold: float) -> None:
        self.display.lower_threshold = float(threshold)
        if self.outputs is not None and self.outputs.heatmap_node is not None:
            self.logic.set_heatmap_threshold(self.outputs.heatmap_node, self.display.lower_threshold)

    def set_background(self, background: str) -> None:
        self.display.background = background
        if self.outputs is not None:
            self.logic.apply_display(self.source_node, self.outputs, self.display)

    # ---- saving ----

    def output_paths(self) -> tuple[Path, Path | None]:
        if self.outputs is None or self.source_path is None or self.save_dir is None:
            raise ViewerError("there is nothing to save yet; run Synthesize first")
        stem = vio.split_name(self.source_node.GetName())[0]
        heat = self.outputs.heatmap_node  # named for its kind, as duald-synthesize names a cohort's
        heatmap = None if heat is None else self.save_dir / f"{stem}{heatmap_suffix(display.heatmap_kind(heat).name)}"
        return self.save_dir / f"{stem}{SYNTHETIC_SUFFIX}", heatmap

    def existing_outputs(self) -> list[Path]:
        return [p for p in self.output_paths() if p is not None and p.exists()]

    def save(self, overwrite: bool = False) -> list[Path]:
        """Write synthetic (+ heatmap) next to the inputs, all or nothing; existing files only with ``overwrite``."""
        synthetic_path, heatmap_path = self.output_paths()
        assert self.outputs is not None
        outputs = vio.AtomicOutputs(overwrite)
        written = [synthetic_path]
        try:
            with outputs.transaction():
                outputs.write_image(mrml_io.image_from_volume_node(self.outputs.synthetic_node), synthetic_path)
                if heatmap_path is not None:
                    heat = self.outputs.heatmap_node
                    outputs.write_heatmap(mrml_io.image_from_volume_node(heat), heatmap_path,
                                          heat.GetAttribute(UNITS_ATTRIBUTE) or "", heat.GetAttribute(SOURCE_ATTRIBUTE))
                    written.append(heatmap_path)
        except FileExistsError as exc:
            raise ViewerError(str(exc).replace("pass --overwrite to replace it", "confirm Overwrite")) from None
        except OSError as exc:
            raise ViewerError(str(exc)) from None
        return written

    # ---- helpers ----

    def clear_outputs(self) -> None:
        if self.outputs is not None:
            for node in (self.outputs.synthetic_node, self.outputs.heatmap_node, self.outputs.qa_table_node,
                         self.outputs.difference_node):
                self._remove(node)
        self.outputs = None

    def _require_source(self) -> None:
        if self.source_node is None:
            raise ViewerError("no source volume is loaded; give a file path or upload a volume first")

    def _remove(self, node: Any) -> None:
        self.logic.remove_nodes([node])
