"""DualD Synthesis: T1 MRI → T2 MRI or CT, with its heatmap (where not to trust it) overlaid. Thin GUI only:
everything that is not Qt lives in ``DualDSynthesisLib`` (see ``DualDSynthesisLib/scene/logic.py``)."""

import logging
from pathlib import Path
from typing import Annotated, Union

import slicer
import vtk
from DualDSynthesisLib.core.vocabulary import SKULL_HANDLING
from DualDSynthesisLib.scene import mrml_io
from DualDSynthesisLib.scene.logic import (
    DisplayOptions,
    DualDSynthesisLogic,
    QAOptions,
    SynthesisCancelled,
)
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

BUNDLE_FILE_ITEM = "Bundle file…"


class DualDSynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DualD Synthesis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Deep Learning")]
        self.parent.dependencies = []
        self.parent.contributors = ["DualD Synthesis developers"]
        self.parent.helpText = _(
            "Synthesizes a T2 MRI or a CT from a T1 MRI and overlays a heatmap of where not to trust it; optional "
            "tumour QA. A whole head can use your own brain mask instead of BET: synthesis is then inside it only."
        )
        self.parent.acknowledgementText = _("Built on 3D Slicer and PyTorch.")


@parameterNodeWrapper
class DualDSynthesisParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    bundledModel: str = ""
    bundlePath: Path
    modelsFolder: Path  # the user's own bundles, listed after the bundled ones
    device: str = "auto"
    skullHandling: Annotated[str, Choice(list(SKULL_HANDLING))] = "auto"
    brainMaskNode: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]  # noqa: UP007 (wrapper needs Union)
    syntheticVolume: vtkMRMLScalarVolumeNode
    heatmapVolume: vtkMRMLScalarVolumeNode
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = DisplayOptions.opacity  # heatmap_kinds.DISPLAY_DEFAULTS
    lowerThreshold: Annotated[float, WithinRange(0.0, 1.0)] = DisplayOptions.lower_threshold
    showSourceAsBackground: bool = False
    regionNode: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]  # noqa: UP007 (wrapper needs Union)
    referenceVolume: vtkMRMLScalarVolumeNode
    computeQA: bool = False


class DualDSynthesisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None, logic=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self._otherSelectors = {}  # contrast → volume selector, one per further input the chosen model declares

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DualDSynthesis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if self.logic is None:
            self.logic = DualDSynthesisLogic(application_logic=slicer.app.applicationLogic())

        self._populateModels()
        self._populateDevices()
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.modelsFolderLineEdit.currentPathChanged.connect(
            lambda *_: (self._populateModels(), self.onModelChanged()))
        self.ui.deviceComboBox.currentIndexChanged.connect(self.onDeviceChanged)
        self.ui.opacitySlider.valueChanged.connect(self.onOpacityChanged)
        self.ui.thresholdSlider.valueChanged.connect(self.onThresholdChanged)
        self.ui.regionSelector.currentNodeChanged.connect(lambda n: _showSegments(self.ui.segmentsSelector, n))
        self.ui.brainMaskSelector.currentNodeChanged.connect(lambda n: _showSegments(self.ui.brainSegmentsSelector, n))
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.exportDicomButton.clicked.connect(self.onExportDicom)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    # ---- parameter node ----

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelRequested = True
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(DualDSynthesisParameterNode(mrml_io.module_parameter_node(slicer.mrmlScene,
                                                                                        "DualDSynthesis")))
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first
        self._restoreCombos()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._running:
            return
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        hasModel = self._selectedBundle() is not None
        self.ui.applyButton.enabled = hasInput and hasModel
        self.ui.applyButton.toolTip = (
            _("Run the synthesis.") if hasInput and hasModel else _("Select a source volume and a model.")
        )

    # ---- model and device ----

    def _populateModels(self) -> None:
        """The bundled models, then the models folder's (the chosen one stays chosen if still listed)."""
        current = self.ui.modelComboBox.currentData
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for path in self.logic.bundled_models():
            self.ui.modelComboBox.addItem(path.stem, str(path))
        entries, note = self.logic.folder_models(self.ui.modelsFolderLineEdit.currentPath)
        for entry in entries:
            self.ui.modelComboBox.addItem(entry.label, str(entry.path))
        self.ui.modelsFolderLineEdit.toolTip = note or _("A folder of your own model bundles (e.g. fine-tuned).")
        self.ui.modelComboBox.addItem(BUNDLE_FILE_ITEM, "")
        index = self.ui.modelComboBox.findData(current) if current is not None else 0
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        self.ui.modelComboBox.blockSignals(False)

    def _populateDevices(self) -> None:
        self.ui.deviceComboBox.clear()
        for device in self.logic.available_devices():
            self.ui.deviceComboBox.addItem(device)

    def _restoreCombos(self) -> None:
        index = self.ui.modelComboBox.findText(self._parameterNode.bundledModel or self.logic.default_model_name())
        self.ui.modelComboBox.setCurrentIndex(index if index >= 0 else 0)  # entry 0 is the default model
        index = self.ui.deviceComboBox.findText(self._parameterNode.device)
        self.ui.deviceComboBox.setCurrentIndex(index if index >= 0 else 0)
        self.onModelChanged()

    def _selectedBundle(self):
        data = self.ui.modelComboBox.currentData
        if data:
            return Path(data)
        path = self._parameterNode.bundlePath if self._parameterNode else None
        return path if path and str(path) not in ("", ".") and Path(path).is_file() else None

    def onModelChanged(self, *_args) -> None:
        isFile = not self.ui.modelComboBox.currentData
        self.ui.bundlePathLabel.visible = isFile
        self.ui.bundlePathLineEdit.visible = isFile
        if self._parameterNode:
            self._parameterNode.bundledModel = self.ui.modelComboBox.currentText
        self.ui.modelInfoLabel.text = self.logic.describe_model(self._selectedBundle())
        self._showInputSelectors()
        self._checkCanApply()

    def _showInputSelectors(self) -> None:
        """The source selector is the model's reference input (its label names it); one volume selector more per
        other input it declares (an optional one may stay empty), in the frame the .ui leaves for them."""
        layout = self.ui.otherInputsWidget.layout()
        for selector in self._otherSelectors.values():
            layout.removeRow(selector)  # the row's label too
        slots = self.logic.input_slots(self._selectedBundle())
        self.ui.inputLabel.text = slots[0].label if len(slots) > 1 else _("Source volume:")
        self._otherSelectors = {}
        for slot in slots[1:]:
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes, selector.noneEnabled = ["vtkMRMLScalarVolumeNode"], not slot.required
            selector.addEnabled = selector.removeEnabled = selector.showChildNodeTypes = False
            selector.toolTip = slot.tooltip
            selector.setMRMLScene(slicer.mrmlScene)
            layout.addRow(slot.label, selector)
            self._otherSelectors[slot.contrast] = selector

    def onDeviceChanged(self, *_args) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.currentText

    # ---- live display ----

    def onOpacityChanged(self, value) -> None:
        self.logic.set_heatmap_opacity(value)

    def onThresholdChanged(self, value) -> None:
        heatmap = self._parameterNode.heatmapVolume if self._parameterNode else None
        if heatmap:
            self.logic.set_heatmap_threshold(heatmap, value)

    # ---- run / cancel ----

    def onApplyButton(self) -> None:
        if self._running:
            self._cancelRequested = True
            self.ui.statusLabel.text = _("Cancelling…")
            return
        if not self._ensureDependencies():
            return
        self._setRunning(True)
        try:
            self._synthesize()
        except SynthesisCancelled:
            self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")
            self.ui.progressBar.value = 0
        except Exception as exc:  # shown to the user as one message; the traceback goes to the log
            logging.exception("DualD synthesis failed")
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Synthesis failed: {error}").format(error=exc))
        finally:
            self._setRunning(False)

    def onExportDicom(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("DICOM export failed."), waitCursor=True):
            folder = self.ui.dicomFolderButton.directory
            self.ui.statusLabel.text = self.logic.export_dicom(self._parameterNode.syntheticVolume, folder)

    def _synthesize(self) -> None:
        p = self._parameterNode
        self._onProgress(0.0, _("Loading the model…"))
        engine = self.logic.load_engine(self._selectedBundle(), p.device)
        segments = list(self.ui.segmentsSelector.selectedSegmentIDs()) if p.regionNode else None
        qaOptions = QAOptions(region_node=p.regionNode, segment_ids=segments, reference_node=p.referenceVolume) \
            if p.computeQA or p.regionNode or p.referenceVolume else None
        outputs = self.logic.synthesize(
            p.inputVolume,
            engine,
            synthetic_node=p.syntheticVolume,
            heatmap_node=p.heatmapVolume,
            progress=self._onProgress,
            cancel=lambda: self._cancelRequested,
            skull=p.skullHandling,
            brain_mask_node=p.brainMaskNode,
            brain_segment_ids=list(self.ui.brainSegmentsSelector.selectedSegmentIDs()) if p.brainMaskNode else None,
            other_nodes={contrast: selector.currentNode() for contrast, selector in self._otherSelectors.items()},
            display_options=DisplayOptions(opacity=p.heatmapOpacity, lower_threshold=p.lowerThreshold,
                                           background="source" if p.showSourceAsBackground else "synthetic"),
            qa_options=qaOptions,
        )
        p.syntheticVolume = outputs.synthetic_node
        p.heatmapVolume = outputs.heatmap_node
        slicer.util.resetSliceViews()
        if outputs.qa_table_node is not None:
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(outputs.qa_table_node.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
        notes = [] if outputs.heatmap_node else [_("this model has no heatmap")]
        done = _("Done: {name}").format(name=outputs.synthetic_node.GetName())
        self.ui.statusLabel.text = "\n".join([done, *notes, *outputs.notes, *outputs.warnings])

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.statusLabel.text = message
        slicer.app.processEvents()  # keeps the Cancel button responsive while the engine runs

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancelRequested = False
        for name in ("inputsCollapsibleButton", "outputsCollapsibleButton", "qaCollapsibleButton"):
            getattr(self.ui, name).enabled = not running
        self.ui.applyButton.text = _("Cancel") if running else _("Synthesize")
        self.ui.applyButton.enabled = True  # Cancel while running; afterwards _checkCanApply decides
        if not running:
            self._checkCanApply()

    # ---- dependencies: ask first, then install ----

    def _ensureDependencies(self) -> bool:
        if not self.logic.torch_available() and not self._installTorch():
            return False
        missing = self.logic.missing_requirements()
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                _("DualD Synthesis needs these Python packages: {packages}. Install them now?").format(
                    packages=", ".join(missing)
                )
            ):
                return False
            with slicer.util.displayPythonShell(), slicer.util.tryWithErrorDisplay(_("Installation failed.")):
                slicer.util.pip_install(missing)
        return not self.logic.missing_requirements()

    def _installTorch(self) -> bool:
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(
                _("DualD Synthesis needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager.")
            )
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return True
        if not slicer.util.confirmOkCancelDisplay(
            _("DualD Synthesis needs PyTorch, which is not installed. Install it now (a large download)?")
        ):
            return False
        torch = torchLogic.installTorch(askConfirmation=False)
        if torch is None:
            slicer.util.errorDisplay(_("PyTorch could not be installed; see the Python console."))
            return False
        self._populateDevices()
        return True


class DualDSynthesisTest(ScriptedLoadableModuleTest):
    """Desktop-Slicer self test: SampleData MRHead → bundled model → synthetic + heatmap nodes."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SynthesizeMRHead()

    def test_SynthesizeMRHead(self):
        import numpy as np
        import SampleData

        logic = DualDSynthesisLogic(application_logic=slicer.app.applicationLogic())
        models = logic.bundled_models()
        if not models or not logic.torch_available():
            self.delayDisplay("Skipped: needs a bundled model and PyTorch")
            return
        self.delayDisplay("Loading MRHead")
        source = SampleData.downloadSample("MRHead")
        before = slicer.util.arrayFromVolume(source).copy()
        beforeMatrix = mrml_io.ijk_to_ras_matrix(source)

        progress = []
        outputs = logic.synthesize(
            source,
            logic.load_engine(models[0], "auto"),
            progress=lambda f, m: progress.append(f),
            display_options=DisplayOptions(),
            qa_options=QAOptions(),
        )
        self.assertIsNotNone(outputs.synthetic_node)
        self.assertNotEqual(outputs.synthetic_node.GetID(), source.GetID())
        synthetic = slicer.util.arrayFromVolume(outputs.synthetic_node)
        self.assertEqual(synthetic.shape, before.shape)
        self.assertTrue(np.isfinite(synthetic).all())
        np.testing.assert_allclose(mrml_io.ijk_to_ras_matrix(outputs.synthetic_node), beforeMatrix)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(source), before)
        if outputs.heatmap_node is not None:
            heat = slicer.util.arrayFromVolume(outputs.heatmap_node)
            self.assertTrue(heat.min() >= 0.0 and heat.max() <= 1.0)
        self.assertEqual(progress[-1], 1.0)
        self.assertGreaterEqual(outputs.qa_table_node.GetNumberOfRows(), 1)
        self.delayDisplay("Test passed")


def _showSegments(selector, node) -> None:  # a segment selector follows its node selector; off for a labelmap
    selector.setCurrentNode(node if node and node.IsA("vtkMRMLSegmentationNode") else None)
    selector.enabled = selector.currentNode() is not None

