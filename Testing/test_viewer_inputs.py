"""duald-view with a multi-input model (issue 23): ``--input CONTRAST=PATH``, the session's other inputs reaching
the engine as ``others``, the automatic model choice, and the refusals (one sentence each)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer", reason="the viewer extra (trame-slicer) is not installed")

from _viewer_data import small_volume
from DualDSynthesisLib.imaging import model_choice
from DualDSynthesisLib.scene.display import create_headless_slicer
from DualDViewLib import app as view_app
from DualDViewLib import cli as view_cli
from DualDViewLib.session import ViewerError, ViewerSession
from input_bundles import models_folder
from test_slicer_inputs import RecordingEngine


@pytest.fixture
def session():
    app = create_headless_slicer()
    return ViewerSession(app.scene, app.application_logic)


@pytest.fixture
def case(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for contrast, scale in (("t1", 1.0), ("flair", 3.0)):
        image = sitk.GetImageFromArray(sitk.GetArrayFromImage(small_volume()) * scale)
        image.SetSpacing((1.5, 1.5, 3.0))
        files[contrast] = tmp_path / f"case_{contrast}.nii.gz"
        sitk.WriteImage(image, str(files[contrast]))
    return files


def test_the_sessions_other_inputs_reach_the_engine(session, case) -> None:
    session.load_source(case["t1"])
    node = session.load_other("t2f", case["flair"])  # an alias
    assert session.other_nodes == {"flair": node} and node.GetName() == "case_flair (flair)"
    engine = RecordingEngine()
    given = session.begin()
    try:
        outputs = session.finish(engine, session.run_engine(engine, given))
    finally:
        session.end()
    assert set(engine.others) == {"flair"} and outputs.synthetic_node is not None
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(case["flair"])))
    assert np.allclose(sitk.GetArrayFromImage(engine.others["flair"]), flair)
    session.load_source(case["t1"])  # a new case: the previous case's other inputs no longer apply
    assert session.other_nodes == {} and node.GetScene() is None


def test_bad_other_inputs_are_one_sentence(session, case, tmp_path) -> None:
    with pytest.raises(ViewerError, match="no source volume is loaded"):
        session.load_other("flair", case["flair"])
    session.load_source(case["t1"])
    with pytest.raises(ViewerError, match="'bogus' is not a known image contrast"):
        session.load_other("bogus", case["flair"])
    with pytest.raises(ViewerError, match="does not exist"):
        session.load_other("flair", tmp_path / "none.nii.gz")
    assert session.other_nodes == {}
    session.load_other("flair", case["flair"])
    with pytest.raises(ValueError, match="this model does not read flair"):  # before the engine runs
        session.run_engine(RecordingEngine("t1"), session.begin())
    session.end()


@pytest.mark.parametrize(("argv", "match"), [
    (["--input", "flair={flair}"], "give the SOURCE file too"),
    (["{t1}", "--input", "flair={flair}", "--input", "fla={flair}"], "are both the flair input"),
    (["{t1}", "--input", "nonsense={flair}"], "'nonsense' is not a known image contrast"),
    (["{t1}", "--input", "flair={missing}"], "the flair input {missing} does not exist"),
    (["{t1}", "--input", "{flair}"], "is not CONTRAST=PATH"),
])
def test_bad_input_options_are_refused_before_the_server_starts(case, tmp_path, capsys, argv, match) -> None:
    names = {**{k: str(v) for k, v in case.items()}, "missing": str(tmp_path / "F.nii.gz")}
    assert view_cli.main([a.format(**names) for a in argv]) == view_cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match.format(**names) in err[0]


class _FakeViewer:
    """Records what ``duald-view`` asks of the page, and serves nothing."""

    made: ClassVar[list[_FakeViewer]] = []

    def __init__(self, models=None, device="auto", models_folder=None) -> None:
        self.models, self.loaded, self.skipped_models = models, [], []
        self.state = SimpleNamespace(error="")
        self.server = SimpleNamespace(start=lambda **_: None)
        _FakeViewer.made.append(self)

    def load(self, kind, path) -> bool:
        self.loaded.append((kind, path))
        return True

    def load_other(self, contrast, path) -> bool:
        self.loaded.append((contrast, path))
        return True

    def exit_when_idle(self, *_args) -> None:
        pass


def test_the_model_for_the_given_inputs_is_offered_first(case, tmp_path, capsys, monkeypatch) -> None:
    models = models_folder(tmp_path / "Models", {"t1_to_t2": ("t1", "t2"), "t1flair_to_t2": ("t1,flair", "t2")})
    monkeypatch.setattr(model_choice, "MODELS_DIR", tmp_path / "Models")
    monkeypatch.setattr(model_choice, "DEFAULT_MODEL", models["t1_to_t2"])
    monkeypatch.setattr(view_app, "DualDViewer", _FakeViewer)
    monkeypatch.setattr(view_cli, "usable_port", lambda host, port: (port, None))
    assert view_cli.main([str(case["t1"]), "--input", f"FLAIR={case['flair']}", "--idle-exit", "0"]) == 0
    viewer = _FakeViewer.made[-1]
    assert viewer.models == [models["t1flair_to_t2"]]
    assert viewer.loaded == [("source", case["t1"].resolve()), ("flair", case["flair"].resolve())]
    assert "note: model t1flair_to_t2 chosen automatically (t1 + flair → t2)" in capsys.readouterr().err
