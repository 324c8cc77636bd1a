"""The module's widget code and its Qt Designer file agree — checked statically (no Qt here).

Every ``self.ui.<name>`` the widget uses must be a widget of the ``.ui``; every widget carrying a
``SlicerParameterName`` must name a field of the ``parameterNodeWrapper`` class, with a field type
that the widget can show.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "DualDSynthesis"
MODULE_FILE = MODULE_DIR / "DualDSynthesis.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "DualDSynthesis.ui"
CMAKE_FILE = MODULE_DIR / "CMakeLists.txt"

# Field annotation (as written) each bound widget class can hold.
COMPATIBLE = {
    "qMRMLNodeComboBox": re.compile(r"vtkMRML\w+|Union\[.*\]"),
    "ctkSliderWidget": re.compile(r"float|Annotated\[float, .*\]"),
    "QDoubleSpinBox": re.compile(r"float|Annotated\[float, .*\]"),
    "QSpinBox": re.compile(r"int|Annotated\[int, .*\]"),
    "QCheckBox": re.compile(r"bool"),
    "ctkPathLineEdit": re.compile(r"(pathlib\.)?Path"),
    "QLineEdit": re.compile(r"str"),
    "QComboBox": re.compile(r"Annotated\[str, Choice\(.*\)\]"),
}


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


@pytest.fixture(scope="module")
def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _is_self_ui(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "ui"
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def used_ui_names(tree: ast.Module) -> set[str]:
    """``self.ui.X`` attributes, plus ``getattr(self.ui, name)`` over a literal tuple of names."""
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _is_self_ui(n.value)}
    for loop in (n for n in ast.walk(tree) if isinstance(n, ast.For)):
        if not (isinstance(loop.target, ast.Name) and isinstance(loop.iter, ast.Tuple | ast.List)):
            continue
        uses_getattr = any(
            isinstance(c, ast.Call)
            and isinstance(c.func, ast.Name)
            and c.func.id == "getattr"
            and _is_self_ui(c.args[0])
            and isinstance(c.args[1], ast.Name)
            and c.args[1].id == loop.target.id
            for c in ast.walk(loop)
        )
        if uses_getattr:
            names |= {e.value for e in loop.iter.elts if isinstance(e, ast.Constant)}
    return names


def parameter_fields(tree: ast.Module) -> dict[str, str]:
    """Annotated fields of the class decorated with ``@parameterNodeWrapper``: name → annotation source."""
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in cls.decorator_list}
        if "parameterNodeWrapper" in decorators:
            return {
                stmt.target.id: ast.unparse(stmt.annotation)
                for stmt in cls.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class in DualDSynthesis.py")


def slicer_parameter_names(widgets: dict[str, ET.Element]) -> dict[str, tuple[str, str]]:
    """widget name → (widget class, SlicerParameterName) for widgets carrying the dynamic property."""
    bound = {}
    for name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = (widget.get("class"), prop.findtext("string"))
    return bound


def test_every_self_ui_name_is_a_widget_of_the_ui_file(module_tree, ui_widgets):
    used = used_ui_names(module_tree)
    # The parser sees direct uses and the getattr loop.
    assert {"applyButton", "progressBar", "statusLabel", "modelComboBox", "qaCollapsibleButton"} <= used
    missing = sorted(used - set(ui_widgets))
    assert not missing, f"DualDSynthesis.py uses self.ui.{missing} that DualDSynthesis.ui does not define"


def test_every_slicer_parameter_name_maps_to_a_compatible_field(module_tree, ui_widgets):
    fields = parameter_fields(module_tree)
    bound = slicer_parameter_names(ui_widgets)
    assert len(bound) >= 8
    for widget, (widget_class, parameter) in bound.items():
        assert parameter in fields, f"{widget} is bound to '{parameter}', which is not a parameter node field"
        pattern = COMPATIBLE.get(widget_class)
        assert pattern is not None, f"{widget}: no known parameterNodeWrapper connector for {widget_class}"
        assert pattern.fullmatch(fields[parameter]), (
            f"{widget} ({widget_class}) cannot show '{parameter}: {fields[parameter]}'"
        )
    assert len(set(p for _, p in bound.values())) == len(bound), "two widgets bound to the same field"


def test_issue_controls_are_present(ui_widgets):
    required = {
        "inputSelector": "qMRMLNodeComboBox",
        "modelComboBox": "QComboBox",
        "bundlePathLineEdit": "ctkPathLineEdit",
        "deviceComboBox": "QComboBox",
        "syntheticSelector": "qMRMLNodeComboBox",
        "heatmapSelector": "qMRMLNodeComboBox",
        "opacitySlider": "ctkSliderWidget",
        "thresholdSlider": "ctkSliderWidget",
        "regionSelector": "qMRMLNodeComboBox",
        "segmentsSelector": "qMRMLSegmentSelectorWidget",
        "referenceSelector": "qMRMLNodeComboBox",
        "applyButton": "QPushButton",
        "exportDicomButton": "QPushButton",  # "Export to DICOM" for the synthetic CT
        "dicomFolderButton": "ctkDirectoryButton",
        "progressBar": "QProgressBar",
        "statusLabel": "QLabel",
    }
    for name, widget_class in required.items():
        assert name in ui_widgets and ui_widgets[name].get("class") == widget_class, name
    assert ui_widgets["exportDicomButton"].findtext("property[@name='text']/string") == "Export to DICOM"
    # Output selectors create new volumes unless the user picks one.
    for name in ("syntheticSelector", "heatmapSelector"):
        props = {p.get("name"): p for p in ui_widgets[name].findall("property")}
        assert props["noneEnabled"].findtext("bool") == "true"
        assert props["noneDisplay"].findtext("string") == "Create new volume"


def test_ui_connections_and_custom_widgets_are_consistent(ui_widgets):
    root = ET.parse(UI_FILE).getroot()
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in ui_widgets
        assert connection.findtext("receiver") in ui_widgets
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used_classes = {w.get("class") for w in ui_widgets.values()}
    custom = {c for c in used_classes if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, f"undeclared custom widgets: {sorted(custom - declared)}"


def test_module_file_is_thin_and_lib_is_qt_free(module_tree):
    assert len(MODULE_FILE.read_text(encoding="utf-8").splitlines()) < 400
    lib = MODULE_DIR / "DualDSynthesisLib"
    for path in sorted(lib.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {
            n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level
        }
        assert not imported & {"qt", "ctk"}, f"{path.name} imports Qt"
        text = path.read_text(encoding="utf-8")
        assert "ScriptedLoadableModule" not in text and "parameterNodeWrapper" not in text, path.name


def test_cmake_lists_every_lib_file_and_resource():
    text = CMAKE_FILE.read_text(encoding="utf-8").replace("${MODULE_NAME}", "DualDSynthesis")
    lib = MODULE_DIR / "DualDSynthesisLib"
    for path in sorted(lib.rglob("*.py")):  # the layer sub-packages too
        name = path.relative_to(lib).as_posix()
        assert f"DualDSynthesisLib/{name}" in text, f"CMakeLists.txt misses {name}"
    assert "DualDSynthesis.py" in text
    for resource in re.findall(r"Resources/[\w/.\-]+", text):
        if "*" not in resource:
            assert (MODULE_DIR / resource).exists(), f"CMakeLists.txt lists a missing {resource}"
    assert (MODULE_DIR / "Resources" / "Icons" / "DualDSynthesis.png").is_file()
