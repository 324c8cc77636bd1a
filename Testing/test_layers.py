"""The layers of docs/architecture.md, enforced: imports only go downwards, and the torch-free modules
stay torch-free (so the Slicer panel, --help and a model's details work before PyTorch is installed).

Imports are read with ``ast`` from the source files: a module-level import and an import inside a
function both count as a dependency; imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYNTHESIS = ROOT / "DualDSynthesis" / "DualDSynthesisLib"
TRAINING = ROOT / "DualDTraining" / "DualDTrainingLib"
VIEW = ROOT / "DualDView" / "DualDViewLib"

# DualDSynthesisLib's layers, lowest first (docs/architecture.md): each is a sub-package of that name. A
# module imports only from its own layer or a lower one. A new module must be placed here and in its
# layer's folder, or test_every_module_has_a_layer fails.
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("errors", "vocabulary", "file_contrasts", "limits", "resources", "console"),
    "model": ("architecture", "networks", "losses", "slicestack", "inputs", "input_widening", "intensity_base",
              "intensity_rank", "intensity", "metrics"),
    "imaging": ("heatmap_kinds", "atomic", "compression", "concurrent_writes", "output_names", "grid",
                "preprocess", "brainmask", "io", "figures", "fingerprint", "calibration", "bundle", "defaults",
                "model_choice", "devices", "device_prepare", "heatmap_file", "skull_policy", "scoring", "overview",
                "dicom_slices", "dicom_export", "rigid_registration", "input_alignment"),
    "inference": ("contract", "input_stats", "outputs", "multi_input", "network_pass", "engine"),
    "scene": ("mrml_io", "display", "qa", "dicom_marking", "models", "input_nodes", "logic"),
    "cli": ("input_plan", "synthesize", "demo"),
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
INFERENCE = list(LAYERS).index("inference")

# Modules that must import without torch: no torch import at module level (a function may import it).
TORCH_FREE_SYNTHESIS = (*LAYERS["core"], "architecture", "slicestack", "inputs", "intensity_base", "intensity_rank",
                        "intensity", "metrics", "heatmap_kinds", "atomic", "compression", "concurrent_writes",
                        "output_names",
                        "grid", "preprocess", "brainmask", "io", "figures", "fingerprint", "calibration", "bundle",
                        "defaults", "model_choice", "heatmap_file", "skull_policy", "scoring", "overview",
                        "dicom_slices", "dicom_export", "rigid_registration", "input_alignment", "contract",
                        "input_stats", "outputs", "multi_input", *LAYERS["scene"], "input_plan", "synthesize")
TORCH_FREE_TRAINING = ("config", "cli", "errors", "discovery", "training_config", "best_metric", "option_values",
                       "pair_files", "init_from", "input_dropout")
FORBIDDEN_EVERYWHERE = ("qt", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")


def _imports(path: Path, package: str) -> list[tuple[str, bool]]:
    """(absolute module name, at module level) for every import of ``path`` outside ``if TYPE_CHECKING:``.
    ``package``: the top-level package; a file in a sub-package resolves its relative imports from there."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    root = {"DualDSynthesisLib": SYNTHESIS, "DualDTrainingLib": TRAINING, "DualDViewLib": VIEW}[package]
    here = [package, *path.parent.relative_to(root).parts]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own (sub-)package
                parent = ".".join(here[: len(here) - node.level + 1])
                if node.module is None:
                    found.extend((f"{parent}.{alias.name}", top) for alias in node.names)
                else:
                    found.append((f"{parent}.{node.module}", top))
                    if node.module in LAYERS:  # ``from ..model import metrics``: the names are modules
                        found.extend((f"{parent}.{node.module}.{alias.name}", top) for alias in node.names)
            else:
                found.append((node.module or "", top))
                found.extend((f"{node.module}.{alias.name}", top) for alias in node.names
                             if node.module.split(".")[0] in ("DualDSynthesisLib", "DualDTrainingLib", "slicer"))
        nested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, top and not nested and not isinstance(node, ast.ClassDef | ast.FunctionDef))

    visit(tree, True)
    return found


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if p.stem != "__init__" and "__pycache__" not in p.parts)


def _lib_module(name: str, package: str) -> str | None:
    """``DualDSynthesisLib.inference.engine`` → ``engine`` when ``name`` is a module of ``package``
    (``DualDTrainingLib.step`` → ``step``); a bare sub-package name gives the sub-package."""
    parts = name.split(".")
    if parts[0] != package or len(parts) < 2:
        return None
    if parts[1] in LAYERS and package == "DualDSynthesisLib":  # a layer's sub-package: its module, if named
        return parts[2] if len(parts) > 2 else None
    return parts[1]


def _path_of(folder: Path, module: str) -> Path:
    return next(p for p in _modules(folder) if p.stem == module)


def test_every_module_has_a_layer() -> None:
    missing = [p.stem for p in _modules(SYNTHESIS) if p.stem not in RANK]
    assert not missing, f"place these DualDSynthesisLib modules in a layer of test_layers.LAYERS: {missing}"
    misplaced = [p.relative_to(SYNTHESIS).as_posix() for p in _modules(SYNTHESIS)
                 if p.parent.name != list(LAYERS)[RANK[p.stem]]]
    assert not misplaced, f"these modules are not in their layer's folder: {misplaced}"


@pytest.mark.parametrize("path", _modules(SYNTHESIS), ids=lambda p: p.stem)
def test_synthesis_imports_only_downwards(path: Path) -> None:
    for name, _top in _imports(path, "DualDSynthesisLib"):
        assert not name.startswith(("DualDTrainingLib", "DualDViewLib")), f"{path.stem} imports {name}"
        assert not name.startswith(FORBIDDEN_EVERYWHERE), f"{path.stem} imports {name}"
        if RANK[path.stem] <= INFERENCE:  # inference and below run outside Slicer too
            assert name.split(".")[0] not in ("slicer", "vtk"), f"{path.stem} imports {name}"
        target = _lib_module(name, "DualDSynthesisLib")
        if target is not None and target in RANK:
            assert RANK[target] <= RANK[path.stem], (
                f"upward import: {path.stem} ({list(LAYERS)[RANK[path.stem]]}) imports {target} "
                f"({list(LAYERS)[RANK[target]]})")


@pytest.mark.parametrize("path", _modules(TRAINING), ids=lambda p: p.stem)
def test_training_uses_only_inference_and_below(path: Path) -> None:
    for name, _top in _imports(path, "DualDTrainingLib"):
        assert not name.startswith(("DualDViewLib", "slicer", "vtk", *FORBIDDEN_EVERYWHERE)), f"{path.stem}: {name}"
        target = _lib_module(name, "DualDSynthesisLib")
        if target is not None and target in RANK:
            assert RANK[target] <= INFERENCE, f"{path.stem} imports the {list(LAYERS)[RANK[target]]} module {target}"


@pytest.mark.parametrize("path", _modules(VIEW), ids=lambda p: p.stem)
def test_viewer_never_imports_qt(path: Path) -> None:
    for name, _top in _imports(path, "DualDViewLib"):
        assert not name.startswith(FORBIDDEN_EVERYWHERE), f"{path.stem} imports {name}"


@pytest.mark.parametrize(("folder", "package", "module"),
                         [(SYNTHESIS, "DualDSynthesisLib", m) for m in TORCH_FREE_SYNTHESIS]
                         + [(TRAINING, "DualDTrainingLib", m) for m in TORCH_FREE_TRAINING])
def test_torch_free_modules_import_no_torch_at_module_level(folder: Path, package: str, module: str) -> None:
    top_level = {name for name, top in _imports(_path_of(folder, module), package) if top}
    assert not {n for n in top_level if n.split(".")[0] in ("torch", "safetensors")}, module
    # ... nor a module of ours that does (networks, losses, engine, devices, step, loop, ...)
    for name in top_level:
        for pkg, allowed in (("DualDSynthesisLib", TORCH_FREE_SYNTHESIS), ("DualDTrainingLib", TORCH_FREE_TRAINING)):
            target = _lib_module(name, pkg)
            assert target is None or target in allowed, f"{module} imports {pkg}.{target}, which needs torch"


def test_the_torch_free_modules_really_run_without_torch() -> None:
    """With torch made unimportable: a shipped bundle's typed details, duald-train's parser, RunConfig and its check."""
    code = """
import sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
from pathlib import Path
from DualDSynthesisLib.inference import contract
from DualDSynthesisLib.scene import logic
from DualDSynthesisLib.core import vocabulary
from DualDSynthesisLib.model.architecture import ArchitectureConfig
from DualDSynthesisLib.imaging.bundle import read_metadata
from DualDSynthesisLib.imaging.preprocess import PreprocessingSpec
from DualDTrainingLib import cli
from DualDTrainingLib.config import RunConfig
models = sorted(Path(sys.argv[1]).glob("*.safetensors"))
assert models
for path in models:
    meta = read_metadata(path)
    assert isinstance(meta.architecture, ArchitectureConfig) and isinstance(meta.preprocessing, PreprocessingSpec)
    print(path.stem, meta.architecture.in_channels, meta.preprocessing.context_slices, meta.variant)
args = cli.build_parser().parse_args(["--data", "d", "--source", "t1", "--target", "t2", "--output", "o"])
cfg = cli._config(args, False)
assert cfg.architecture().g_base_width == RunConfig.defaults()["base_width"]
cfg.check()  # every option's check runs without torch ...
import dataclasses
from DualDTrainingLib.errors import TrainingError
for bad in ({"best_metric": "dice"}, {"augment": 2.0}, {"tumour_fraction": -1.0}, {"spacing": "x"}, {"lambda1": -1.0},
            {"source_norm": "nyul"}, {"crop_size": 40}):
    try:  # ... and refuses a bad value in one sentence
        dataclasses.replace(cfg, **bad).check()
        raise AssertionError(f"accepted {bad}")
    except TrainingError:
        pass
assert "torch" not in [m for m, v in sys.modules.items() if v is not None]
print("ok")
"""
    env_path = f"{ROOT / 'DualDSynthesis'}:{ROOT / 'DualDTraining'}"
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "DualDSynthesis" / "Resources" / "Models")],
                          capture_output=True, text=True, timeout=600, env={"PYTHONPATH": env_path, "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
    assert "t1_to_t2 3 1 unet" in proc.stdout  # the shipped 2.5-D model, read without torch


def test_the_synthesis_command_answers_help_without_the_imaging_stack() -> None:
    """``duald-synthesize --help`` (and its parser) imports no numpy, SimpleITK, scipy, pydicom or torch: start-up
    (docs/performance.md, issue 21) is the interpreter and the parser, not the libraries a run needs."""
    code = """
import contextlib, io, sys
from DualDSynthesisLib.cli import synthesize
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    synthesize.main(["--help"])
assert "--heatmap-source" in out.getvalue() and "strip" in out.getvalue()
heavy = ("numpy", "SimpleITK", "scipy", "pydicom", "torch")
print(sorted(m for m in heavy if sys.modules.get(m) is not None))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "DualDSynthesis"), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
