"""duald-train's command line: one-line errors, and the Slicer XML descriptor matching the parser."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _training_data import PYTHON, ROOT, TINY_ARCH_FLAGS, cli_env, write_subjects
from DualDTrainingLib import cli

XML = ROOT / "DualDTraining" / "DualDTraining.xml"
PARAMETER_TAGS = {"integer", "float", "double", "string", "boolean", "file", "directory", "image", "string-vector",
                  "integer-vector", "float-vector", "double-vector", "string-enumeration", "integer-enumeration",
                  "float-enumeration", "double-enumeration", "point", "region", "transform", "geometry", "table"}
_VALID = re.compile(r"^[_A-Za-z][_A-Za-z0-9]*$")  # SlicerExecutionModel's rule for <name> and <longflag>


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("cli") / "data", n=2)


def _base(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--source", "t1", "--target", "t2", "--output", str(out), "--iterations", "1",
            "--device", "cpu", *TINY_ARCH_FLAGS]


def _one_error_line(code: int, err: list[str], *words: str) -> None:
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("duald-train: error: ")
    for w in words:
        assert w in err[0]


def test_missing_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = _run(capsys, *_base(tmp_path / "nowhere", tmp_path / "out"))
    _one_error_line(code, err, "does not exist")


def test_no_pairs_found(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "subject1").mkdir(parents=True)
    (empty / "subject1" / "notes.txt").write_text("nothing here")
    code, err = _run(capsys, *_base(empty, tmp_path / "out"))
    _one_error_line(code, err, "no usable")


def test_unknown_contrast(capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path) -> None:
    argv = _base(data, tmp_path / "out")
    argv[argv.index("t2")] = "pet"
    code, err = _run(capsys, *argv)
    _one_error_line(code, err, "unknown target contrast", "pet")


def test_output_exists(capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("keep me")
    code, err = _run(capsys, *_base(data, out))
    _one_error_line(code, err, "not empty", "--overwrite")
    # --resume without a checkpoint is refused too
    code, err = _run(capsys, *_base(data, out), "--resume")
    _one_error_line(code, err, "checkpoint-last.pt")


def test_overwrite_keeps_foreign_files(capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("keep me")
    (out / "metrics.jsonl").write_text("old\n")
    assert cli.main([*_base(data, out), "--overwrite", "--variant", "unet"]) == 0
    assert (out / "something.txt").read_text(encoding="utf-8") == "keep me"
    assert "old" not in (out / "metrics.jsonl").read_text(encoding="utf-8")


def test_bad_option_value_is_one_line(capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*_base(data, tmp_path / "o"), "--variant", "cyclegan"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    code, err = _run(capsys, *_base(data, tmp_path / "o2"), "--best-metric", "dice")
    _one_error_line(code, err, "--best-metric")


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    """The real process: exit status 2 and exactly one line on stderr."""
    proc = subprocess.run([PYTHON, "-m", "DualDTrainingLib.cli", *_base(tmp_path / "nowhere", tmp_path / "o")],
                          capture_output=True, text=True, encoding="utf-8", env=cli_env(), timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_xml_descriptor_matches_the_parser() -> None:
    text = XML.read_text(encoding="utf-8")
    assert text.startswith("<?xml "), "Slicer requires the XML declaration on the first line"
    root = ET.fromstring(text)
    assert root.tag == "executable"
    flags, names = [], []
    for group in root.findall("parameters"):
        assert group.find("label") is not None
        for param in group:
            if param.tag in ("label", "description"):
                continue
            assert param.tag in PARAMETER_TAGS, param.tag
            name, longflag = param.findtext("name").strip(), param.findtext("longflag").strip()
            assert _VALID.match(name) and _VALID.match(longflag), (name, longflag)
            assert param.find("index") is None  # every parameter is passed by flag
            names.append(name)
            flags.append(longflag)
            if param.tag.endswith("-enumeration"):
                elements = [e.text for e in param.findall("element")]
                assert param.findtext("default") in elements
    assert len(set(names)) == len(names) and len(set(flags)) == len(flags)

    parser = cli.build_parser()
    accepted: dict[str, object] = {}
    for action in parser._actions:
        if "--help" in action.option_strings:
            continue
        slicer_flag = next(o for o in action.option_strings[::-1] if _VALID.match(o[2:]))
        accepted[slicer_flag[2:]] = action
    assert sorted(flags) == sorted(accepted)
    # defaults agree, so the Slicer panel starts from the console script's defaults
    for param in root.iter():
        longflag = param.findtext("longflag")
        if longflag is None or param.findtext("default") is None:
            continue
        action = accepted[longflag.strip()]
        default = param.findtext("default").strip()
        if action.required or longflag.strip() in ("source", "target"):  # the panel pre-fills a suggestion (t1,
            continue  # t2); the console script needs it given, or --init-from's bundle gives it
        if param.tag == "boolean":
            assert default == "false" and action.default is False
        elif param.tag == "string-vector":
            assert default == "" and action.default == []
        elif param.tag in ("integer", "integer-enumeration"):
            assert int(default) == action.default, longflag
        elif param.tag == "double":
            assert float(default) == pytest.approx(action.default), longflag
        else:
            assert default == action.default, longflag
    _xml_matches_run_config(root)


def _xml_defaults(root: ET.Element) -> dict[str, object]:
    """RunConfig field → the XML's default for it, typed as the panel passes it (no_flip false → flip True)."""
    found: dict[str, object] = {}
    for param in root.iter():
        name = param.findtext("name")
        if name is None or param.tag == "executable":
            continue
        name = name.strip()
        text = (param.findtext("default") or "").strip()
        if name in cli.NEGATED:  # no_flip false ↔ flip True
            found[cli.NEGATED[name]] = text != "true"
        elif name not in ("data", "source", "target", "output"):  # those four: the panel pre-fills a suggestion
            found[name] = {"boolean": lambda t: t == "true", "integer": int, "integer-enumeration": int,
                           "double": float, "string-vector": lambda t: [v for v in t.split(",") if v]
                           }.get(param.tag, str)(text)
    return found


def _same(value: object, default: object) -> bool:
    equal = value == pytest.approx(default) if isinstance(value, float) else value == default
    return equal and type(value) is type(default)


def _xml_matches_run_config(root: ET.Element) -> None:
    """Every XML default equals RunConfig's (the one definition), every enumeration equals its vocabulary."""
    from DualDSynthesisLib.core.vocabulary import CONTRAST_ALIASES, D2_TARGETS, VARIANTS
    from DualDSynthesisLib.model.architecture import D2_HEADS
    from DualDSynthesisLib.model.intensity import SOURCE_NORMS
    from DualDTrainingLib.config import SITE_CALIBRATIONS, TARGET_KINDS, RunConfig
    from DualDTrainingLib.training_config import D1_LAYOUTS, D1_PRECISIONS

    defaults = RunConfig.defaults()
    xml = _xml_defaults(root)
    unknown = set(xml) - set(defaults)
    assert not unknown, f"XML parameters that are no RunConfig option: {unknown}"
    for field, value in xml.items():
        assert _same(value, defaults[field]), field
    assert set(xml) == set(defaults) - {"slicer"}, "every RunConfig option has a panel field"
    enumerations = {"variant": VARIANTS, "d2_target": D2_TARGETS, "d2_head": D2_HEADS, "target_kind": TARGET_KINDS,
                    "source_norm": tuple(SOURCE_NORMS), "site_calibration": SITE_CALIBRATIONS,
                    "d1_precision": D1_PRECISIONS, "d1_layout": D1_LAYOUTS}
    for param in root.iter():
        name = (param.findtext("name") or "").strip()
        if name in enumerations:
            assert tuple(e.text for e in param.findall("element")) == enumerations[name], name
    source = next(p for p in root.iter("string") if p.findtext("name") == "source").findtext("description")
    for contrast, aliases in CONTRAST_ALIASES.items():  # the panel names every contrast the vocabulary knows
        if contrast != "seg":
            assert all(alias in source for alias in aliases), (contrast, source)


def test_step_settings_agree_in_argparse_xml_and_both_dataclasses() -> None:
    """The loss weights and optimiser settings: TrainingConfig's defaults are the ones RunConfig, duald-train's
    parser and the Slicer panel start from, and every option reaches the step."""
    from dataclasses import fields

    from DualDTrainingLib.config import STEP_OPTIONS, RunConfig
    from DualDTrainingLib.training_config import FIXED_SETTINGS, TrainingConfig

    step = TrainingConfig().to_dict()
    assert set(STEP_OPTIONS) == set(step) - set(FIXED_SETTINGS) and set(FIXED_SETTINGS) < set(step)
    run_fields = {f.name for f in fields(RunConfig)}
    assert set(STEP_OPTIONS) <= run_fields and not set(FIXED_SETTINGS) & run_fields
    required = ["--data", "d", "--source", "t1", "--target", "t2", "--output", "o"]
    parsed = vars(cli.build_parser().parse_args(required))
    xml = _xml_defaults(ET.fromstring(XML.read_text(encoding="utf-8")))
    for name in STEP_OPTIONS:
        for where, value in (("RunConfig", RunConfig.defaults()[name]), ("argparse", parsed[name]),
                             ("XML", xml[name])):
            assert _same(value, step[name]), f"{where}'s {name} default is {value!r}, TrainingConfig's {step[name]!r}"
    assert cli._config(cli.build_parser().parse_args(required), slicer=False).training() == TrainingConfig()
    changed = cli._config(cli.build_parser().parse_args([*required, "--lambda1", "0.5", "--gp-every", "3",
                                                         "--gp-batch", "4", "--d2-target", "error",
                                                         "--variant", "unet"]), False)
    assert changed.training() == TrainingConfig(variant="unet", lambda1=0.5, gp_every=3, gp_batch=4,
                                                d2_target="error")


def test_argparse_defaults_are_run_configs() -> None:
    from DualDTrainingLib.config import RunConfig

    args = cli.build_parser().parse_args(["--data", "d", "--source", "t1", "--target", "t2", "--output", "o"])
    assert cli._config(args, slicer=True) == RunConfig(Path("d"), "t1", "t2", Path("o"), slicer=True)
    changed = cli._config(cli.build_parser().parse_args(
        ["--data", "d", "--source", "t1", "--target", "t2", "--output", "o", "--no-flip", "--no_error_head",
         "--val-subjects", "a,b", "c", "--lr-g", "0.5"]), slicer=False)
    assert (changed.flip, changed.error_head, changed.lr_g) == (False, False, 0.5)
    assert changed.val_subjects == ["a", "b", "c"]


def test_slicer_entry_point_reports_filter_progress(data: Path, tmp_path: Path) -> None:
    """DualDTraining.py run as Slicer does: underscore flags, progress lines on stdout, empty stderr."""
    out = tmp_path / "slicer"
    argv = ["--data", str(data), "--source", "t1", "--target", "t2", "--output", str(out), "--iterations", "3",
            "--variant", "unet", "--device", "cpu", "--base_width", "4", "--depth", "2", "--d2_base_width", "4",
            "--val_subjects", "", "--val_every", "0", "--batch_size", "2", "--spacing", ""]
    proc = subprocess.run([PYTHON, str(ROOT / "DualDTraining" / "DualDTraining.py"), *argv], capture_output=True,
                          text=True, encoding="utf-8", env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    progress = [float(m) for m in re.findall(r"<filter-progress>([0-9.]+)</filter-progress>", proc.stdout)]
    assert progress and progress[-1] == 1.0
    assert "<filter-start>" in proc.stdout and "<filter-end>" in proc.stdout
    assert (out / "model-final.safetensors").is_file()
