"""The trame page: inputs, Synthesize/Cancel, three linked slice views (trame-slicer), sliders, legend, QA, Save.

Page ↔ server glue only: every action calls :class:`~DualDViewLib.session.ViewerSession`, which goes
through the desktop module's logic. The slice views are trame-slicer's remote-rendered MRML views
(images streamed as lossless PNG, so what the browser shows is what Slicer rendered).
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from DualDSynthesisLib.imaging.defaults import DEFAULT_MODEL
from DualDSynthesisLib.imaging.figures import inferno_rgb
from DualDSynthesisLib.imaging.heatmap_kinds import DISPLAY_DEFAULTS
from DualDSynthesisLib.scene import display, qa
from DualDSynthesisLib.scene.logic import DualDSynthesisLogic, SynthesisCancelled
from trame.app import get_server
from trame.app.file_upload import ClientFile
from trame.ui.vuetify3 import SinglePageLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from .session import BusyError, ViewerError, ViewerSession

LAYOUT_ID = "DualD three views"


def _headers(columns: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The page's QA headers: the Slicer QA table's columns (``qa.table_columns``), units included."""
    return [{"title": t, "key": k} for t, k in columns]


def _legend_gradient(steps: int = 11) -> str:
    """CSS gradient of the heatmap's colour table (the same inferno samples display.py uses)."""
    colours = inferno_rgb(steps)
    stops = ", ".join(f"rgb({round(255 * r)},{round(255 * g)},{round(255 * b)})" for r, g, b in colours)
    return f"linear-gradient(to right, {stops})"


def _qa_items(rows: list, columns: list[tuple[str, str]]) -> list[dict[str, Any]]:
    items = []
    for row in rows:
        item: dict[str, Any] = {}
        for _title, field in columns:
            value = getattr(row, field)
            item[field] = None if isinstance(value, float) and math.isnan(value) else (
                round(value, 4) if isinstance(value, float) else value)
        items.append(item)
    return items


class DualDViewer:
    """One server, one Slicer scene, one :class:`ViewerSession`; every tab sees the same session."""

    def __init__(self, server: Any = None, models: list[Path] | None = None, device: str = "auto",
                 models_folder: Path | None = None) -> None:
        self.server = get_server(server, client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server, rca_encoder="png")
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout(LAYOUT_ID, Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
            ViewLayoutDefinition.sagittal_view(),
        ]))
        logic = DualDSynthesisLogic(scene=self.slicer_app.scene, application_logic=self.slicer_app.app_logic)
        self.session = ViewerSession(self.slicer_app.scene, self.slicer_app.app_logic, logic)
        self.device = device
        self.upload_dir = Path(tempfile.mkdtemp(prefix="duald-view-"))
        bundled = DualDSynthesisLogic.bundled_models()
        given = [str(p) for p in models or []]
        self.models = given + [str(p) for p in bundled if str(p) not in given]
        # The user's folder after the bundled ones, labelled with parent and site; unreadable ones are not
        # offered, their reasons are kept for the command line to print.
        folder = DualDSynthesisLogic.models_in(models_folder) if models_folder is not None else []
        self.skipped_models = [entry.label for entry in folder if not entry.readable]
        labels = {str(e.path): e.label for e in folder if e.readable}
        self.models += [m for m in labels if m not in self.models]
        default = str(DEFAULT_MODEL) if str(DEFAULT_MODEL) in self.models else (self.models[0] if self.models else "")
        self.state.update({
            "trame__title": "DualD QA viewer", "source_path": "", "segmentation_path": "", "reference_path": "",
            "model": str(models[0]) if models else default,
            "models": [{"title": labels.get(m, Path(m).name), "value": m} for m in self.models],
            "error": "", "status": "Load a source volume.", "progress": 0, "running": False,
            "has_source": False, "has_result": False, "background": "synthetic",
            "opacity": DISPLAY_DEFAULTS.opacity, "threshold": DISPLAY_DEFAULTS.threshold,
            "qa_items": [], "qa_note": "", **self._heatmap_state(None),
            "confirm_overwrite": False, "existing": "", "saved": "", "source_upload": None,
            "segmentation_upload": None, "reference_upload": None, "legend": _legend_gradient(),
            "input_slots": [], "other_paths": {},
        })
        self.state.change("model")(self._on_model)
        self.state.change("opacity")(self._on_opacity)
        self.state.change("threshold")(self._on_threshold)
        self.state.change("background")(self._on_background)
        self.state.change("source_upload")(lambda source_upload, **_: self._on_upload("source", source_upload))
        self.state.change("segmentation_upload")(
            lambda segmentation_upload, **_: self._on_upload("segmentation", segmentation_upload))
        self.state.change("reference_upload")(
            lambda reference_upload, **_: self._on_upload("reference", reference_upload))
        self._clients: set[str] = set()
        self.ctrl.on_server_ready.add(self._watch_connections)
        self._build_ui()
        self.layout_manager.set_layout(LAYOUT_ID)

    # ---- inputs ----

    def _report(self, action, *args, success: str = "") -> bool:
        """Run a session action; its one-sentence error goes to the page, never up the server."""
        try:
            action(*args)
        except ViewerError as exc:
            self.state.update({"error": str(exc)})
            return False
        except Exception as exc:  # the server must keep running whatever a file contains
            self.state.update({"error": f"unexpected error: {exc}".splitlines()[0]})
            return False
        self.state.update({"error": "", **({"status": success} if success else {})})
        return True

    def load(self, kind: str, path: Path, name: str | None = None, save_dir: Path | None = None) -> bool:
        if self.session.running:
            self.state.update({"error": "a synthesis is running; cancel it or wait before loading another volume"})
            return False
        loader = {"source": self.session.load_source, "segmentation": self.session.load_segmentation,
                  "reference": self.session.load_reference}[kind]
        args = (path, name, save_dir) if kind == "source" else (path, name)
        ok = self._report(loader, *args, success=f"Loaded {kind} {name or path.name}.")
        if ok and kind == "source":
            self.state.update({"has_source": True, "has_result": False, "qa_items": [], "qa_note": "", "saved": "",
                               "segmentation_path": "", "reference_path": "",
                               "source_path": str(path) if save_dir is None else self.state.source_path})
            self._fit_views()
        return ok

    def _on_model(self, model, **_) -> None:
        """One path row per further input the chosen model declares (``input_nodes.input_slots``)."""
        slots = self.session.logic.input_slots(model or None)[1:]
        self.state.input_slots = [{"contrast": s.contrast, "label": s.label.rstrip(":")} for s in slots]

    def load_other(self, contrast: str, path: str | Path | None) -> bool:
        """One more input of the source's subject (``--input CONTRAST=PATH`` or the page's row for it)."""
        if self.session.running:
            self.state.update({"error": "a synthesis is running; cancel it or wait before loading another volume"})
            return False
        if not str(path or "").strip():
            self.state.update({"error": f"type the {contrast} file path first"})
            return False
        path = Path(str(path).strip()).expanduser()
        return self._report(self.session.load_other, contrast, path,
                            success=f"Loaded the {contrast} input {path.name}.")

    def show_result(self, synthetic: Path, heatmap: Path | None) -> bool:
        ok = self._report(self.session.load_result, synthetic, heatmap, success=f"Showing {synthetic.name}.")
        if ok:
            self.state.update(self._heatmap_state(self.session.outputs.heatmap_node))
            self._fit_views()
        return ok

    @staticmethod
    def _heatmap_state(heat: Any, columns: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        """The page's legend (units, top of the display window) and QA columns for a heatmap node (None: none
        yet); ``columns``: ``qa.table_columns`` for the result, else those of the node's kind."""
        if not columns:  # no result yet
            columns = qa.table_columns(display.heatmap_kind(heat).name)
        high = display.heatmap_window(heat)[1]
        return {"legend_title": display.heatmap_units(heat), "legend_max": f"{high:.3g}",
                "qa_headers": _headers(columns)}

    def load_path(self, kind: str) -> None:
        text = (self.state[f"{kind}_path"] or "").strip()
        if not text:
            self.state.update({"error": f"type the {kind} file path first"})
            return
        self.load(kind, Path(text).expanduser())

    def _on_upload(self, kind: str, upload: Any) -> None:
        if not upload:
            return
        upload = upload[0] if isinstance(upload, list) else upload
        client_file = ClientFile(upload)
        if client_file.is_empty:
            self.state.update({"error": f"the uploaded {kind} file {client_file.name} is empty"})
            return
        name = Path(client_file.name or "upload").name  # never a path from the client
        folder = Path(tempfile.mkdtemp(dir=self.upload_dir))
        path = folder / name
        path.write_bytes(client_file.content)
        # An uploaded source has no folder on this machine: Save writes into the working directory.
        self.load(kind, path, name, save_dir=Path.cwd() if kind == "source" else None)

    # ---- synthesis ----

    def synthesize(self) -> None:
        create_task(self._synthesize())

    async def _synthesize(self) -> None:
        try:
            given = self.session.begin()  # the source, read on this (the scene's) thread
        except (BusyError, ViewerError) as exc:
            self.state.update({"error": str(exc)})
            self.state.flush()
            return
        self.state.update({"running": True, "progress": 0, "error": "", "saved": "", "status": "Loading the model…"})
        self.state.flush()
        progress = {"fraction": 0.0, "message": "Loading the model…"}

        def report(fraction: float, message: str) -> None:  # worker thread: only plain values
            progress.update(fraction=fraction, message=message)

        loop = asyncio.get_running_loop()

        def work():
            engine = self.session.logic.load_engine(self.state.model, self.device)
            return engine, self.session.run_engine(engine, given, report)

        future = loop.run_in_executor(None, work)
        try:
            while not future.done():
                with self.state:
                    self.state.progress = round(100 * progress["fraction"])
                    self.state.status = progress["message"]
                await asyncio.sleep(0.2)
            engine, result = future.result()
            outputs = self.session.finish(engine, result)
        except SynthesisCancelled:
            self.state.update({"status": "Cancelled; nothing was added or written.", "has_result": False})
        except (ValueError, OSError) as exc:  # SynthesisError and bad bundles: one sentence
            self.state.update({"error": str(exc), "status": "Synthesis failed."})
        except Exception as exc:
            self.state.update({"error": f"unexpected error: {exc}".splitlines()[0], "status": "Synthesis failed."})
        else:
            warnings = "; ".join(outputs.warnings)
            # The Slicer table's columns and units, all of them always: a table whose column count changes
            # re-renders its rows only seconds later in the browser.
            columns = qa.table_columns(display.heatmap_kind(outputs.heatmap_node).name, engine.spec,
                                       result.target_modality or engine.target_modality)
            self.state.update({
                "has_result": True, "progress": 100, "qa_items": _qa_items(outputs.qa_rows, columns),
                "qa_note": qa.calibration_caption(outputs.qa_notes),
                **self._heatmap_state(outputs.heatmap_node, columns),
                "status": "Done." + (f" Warning: {warnings}" if warnings else ""),
            })
            self.session.set_threshold(self.state.threshold)
            self.session.set_opacity(self.state.opacity)
            self._fit_views()
        finally:
            self.session.end()
            self.state.running = False
            self.state.flush()

    def cancel(self) -> None:
        self.session.cancel()
        self.state.status = "Cancelling…"

    def _watch_connections(self, **_kwargs) -> None:
        """Count websocket clients: wslink calls its protocol's onConnect/onClose for every connection
        (trame's own on_client_exited needs the page to say goodbye, which a crashed tab never does)."""
        protocol = self.server.protocol
        protocol.onConnect = lambda _request, client_id: self._clients.add(client_id)
        protocol.onClose = self._client_closed

    def exit_when_idle(self, seconds: float, announce: Callable[[], None]) -> None:
        """Stop the server once no tab has been connected (and nothing run) for ``seconds``; 0: never.
        ``announce`` says so first: an exit without a word looks like a crash."""
        if seconds > 0:
            self.ctrl.on_server_ready.add(lambda **_: create_task(self._idle_watch(seconds, announce)))

    async def _idle_watch(self, seconds: float, announce: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while True:
            await asyncio.sleep(min(seconds, 1.0))
            if self._clients or self.session.running:
                idle_since = loop.time()
            elif loop.time() - idle_since >= seconds:
                announce()
                await self.server.stop()
                return

    def _client_closed(self, client_id: str) -> None:
        self._clients.discard(client_id)
        if not self._clients and self.session.running:
            # Nobody is left to see or save the result: stop. Nothing is ever written without Save,
            # so an abandoned run leaves no file, whole or partial.
            self.session.cancel()

    # ---- display ----

    def _on_opacity(self, opacity, **_):
        self.session.set_opacity(float(opacity))
        self._render()

    def _on_threshold(self, threshold, **_):
        self.session.set_threshold(float(threshold))
        self._render()

    def _on_background(self, background, **_):
        if self.session.outputs is not None:
            self._report(self.session.set_background, background)
        self._render()

    def _fit_views(self) -> None:
        for view in self.slicer_app.view_manager.get_slice_views():
            view.fit_view_to_content()
        self._render()

    def _render(self) -> None:
        for view in self.slicer_app.view_manager.get_slice_views():
            view.schedule_render()

    # ---- saving ----

    def save(self, overwrite: bool = False) -> None:
        try:
            existing = self.session.existing_outputs()
            if existing and not overwrite:
                self.state.update({"confirm_overwrite": True, "existing": ", ".join(p.name for p in existing)})
                return
            written = self.session.save(overwrite=overwrite)
        except ViewerError as exc:
            self.state.update({"error": str(exc), "confirm_overwrite": False})
            return
        self.state.update({"saved": "Saved " + ", ".join(str(p) for p in written), "confirm_overwrite": False,
                           "error": ""})

    # ---- page ----

    def _build_ui(self) -> None:
        with SinglePageLayout(self.server, full_height=True) as layout:
            layout.title.set_text("DualD QA viewer")
            with layout.toolbar:
                v3.VSpacer()
                html.Span("no authentication: anyone who can reach this port can use it", classes="text-caption mr-4")
            with layout.content, html.Div(classes="d-flex fill-height"):
                with html.Div(style="width: 360px; overflow-y: auto;", classes="pa-2"):
                    self._inputs_panel()
                    self._display_panel()
                with html.Div(classes="d-flex flex-column flex-grow-1"):
                    with html.Div(style="height: 420px;", classes="flex-shrink-0", id="views"):
                        self.layout_manager.initialize_layout_grid(layout)
                    self._qa_panel()
        self.ui = layout

    def _inputs_panel(self) -> None:
        v3.VAlert(v_if=("error",), type="error", text=("error",), density="compact", classes="mb-2", id="error")
        for kind, label in (("source", "Source volume"), ("segmentation", "Segmentation (labels)"),
                            ("reference", "Reference (real target)")):
            with html.Div(classes="d-flex align-center"):
                v3.VTextField(label=f"{label} path", v_model=(f"{kind}_path",), density="compact",
                              hide_details=True, id=f"{kind}-path")
                v3.VBtn("Load", click=(self.load_path, f"['{kind}']"), size="small", classes="ml-1",
                        id=f"{kind}-load", disabled=("running",))
            v3.VFileInput(label=f"or upload the {kind}", v_model=(f"{kind}_upload", None), density="compact",
                          hide_details=True, classes="mb-2", id=f"{kind}-upload", disabled=("running",),
                          v_show="true" if kind == "source" else ("has_source",))
        v3.VSelect(label="Model", v_model=("model",), items=("models",), density="compact", hide_details=True,
                   classes="mb-2", id="model")
        with html.Div(v_for="slot in input_slots", key="slot.contrast", classes="d-flex align-center mb-2"):
            v3.VTextField(label=("`${slot.label} path`",), v_model=("other_paths[slot.contrast]",), density="compact",
                          hide_details=True)
            v3.VBtn("Load", click=(self.load_other, "[slot.contrast, other_paths[slot.contrast]]"), size="small",
                    classes="ml-1", disabled=("running || !has_source",))
        with html.Div(classes="d-flex"):
            v3.VBtn("Synthesize", click=self.synthesize, disabled=("running || !has_source",), color="primary",
                    id="synthesize")
            v3.VBtn("Cancel", click=self.cancel, disabled=("!running",), classes="ml-2", id="cancel")
            v3.VBtn("Save", click=(self.save, "[false]"), disabled=("running || !has_result",), classes="ml-2",
                    id="save")
        v3.VProgressLinear(model_value=("progress",), height=8, classes="my-2", id="progress")
        html.Div("{{ status }}", classes="text-caption", id="status")
        html.Div("{{ saved }}", v_if=("saved",), classes="text-caption text-success", id="saved")
        with v3.VDialog(v_model=("confirm_overwrite",), max_width=420), v3.VCard():
            v3.VCardText("{{ existing }} already exist(s) next to the input. Overwrite?")
            with v3.VCardActions():
                v3.VBtn("Overwrite", click=(self.save, "[true]"), color="error", id="overwrite")
                v3.VBtn("Keep", click="confirm_overwrite = false", id="keep")

    def _display_panel(self) -> None:
        v3.VDivider(classes="my-2")
        v3.VSlider(label="Opacity", v_model=("opacity",), min=0, max=1, step=0.05, thumb_label=True,
                   hide_details=True, id="opacity")
        v3.VSlider(label="Threshold", v_model=("threshold",), min=0, max=1, step=0.01, thumb_label=True,
                   hide_details=True, id="threshold")
        with v3.VRadioGroup(v_model=("background",), inline=True, hide_details=True, label="Background"):
            v3.VRadio(label="synthetic", value="synthetic")
            v3.VRadio(label="source", value="source")
        html.Div("{{ legend_title }}", classes="text-caption mt-2", id="legend-title")
        html.Div(style=("`height: 14px; background: ${legend}`",), id="legend")
        with html.Div(classes="d-flex text-caption"):
            html.Span("0")
            v3.VSpacer()
            html.Span("hidden below {{ threshold }} of the range")
            v3.VSpacer()
            html.Span("{{ legend_max }}")

    def _qa_panel(self) -> None:
        html.Div("Region QA (per label; PSNR/MAE/SSIM need a reference)", classes="text-subtitle-2 pa-2")
        v3.VDataTable(headers=("qa_headers",), items=("qa_items",), density="compact", id="qa-table",
                      items_per_page=-1, hide_default_footer=True)
        html.Div("{{ qa_note }}", v_if=("qa_note",), classes="text-caption pa-2", id="qa-note")
