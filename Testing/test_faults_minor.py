"""The fault campaign's minor rows: --help shows defaults and examples, one "Done", a resumed finished run
does nothing, a NaN before the first checkpoint says so, and a run that fails early leaves no folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from _training_data import TINY_ARCH_FLAGS, write_subjects
from bundles import make_bundle
from DualDSynthesisLib.cli import synthesize as synth_cli
from DualDSynthesisLib.inference.engine import synthesize_file
from DualDTrainingLib import cli as train_cli
from DualDTrainingLib import evaluate_cli
from DualDTrainingLib.step import DualDTrainer, NonFiniteLossError
from test_engine import head


@pytest.mark.parametrize(("parser", "expected"), [
    (train_cli.build_parser, ["(default: 20000)", "examples:", "takes days"]),
    (evaluate_cli.build_parser, ["PSNR", "AUROC", "examples:"]),
    (synth_cli._parser, ["(default: auto)", "examples:"]),
])
def test_help_shows_defaults_and_examples(parser, expected) -> None:
    text = parser().format_help()
    for piece in expected:
        assert piece in text
    assert "(default: None)" not in text and "``" not in text  # no empty defaults, no raw reST markup


def test_progress_says_done_once(tmp_path: Path) -> None:
    source = tmp_path / "t1.nii.gz"
    sitk.WriteImage(head(), str(source))
    messages: list[str] = []
    synthesize_file(source, tmp_path / "out.nii.gz", model=make_bundle(tmp_path / "m.safetensors"), device="cpu",
                    progress=lambda _f, m: messages.append(m))
    assert messages.count("Done") == 1 and messages[-1] == "Done"


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--source", "t1", "--target", "t2", "--output", str(out), "--device", "cpu",
            "--workers", "1", "--val-every", "0", *TINY_ARCH_FLAGS, *extra]


def test_resuming_a_finished_run_does_nothing(tmp_path: Path, capsys) -> None:
    data, out = write_subjects(tmp_path / "data", n=2), tmp_path / "run"
    assert train_cli.main(_train(data, out, "--iterations", "2")) == 0
    final = out / "model-final.safetensors"
    before = final.stat().st_mtime_ns
    capsys.readouterr()
    assert train_cli.main(_train(data, out, "--iterations", "1", "--resume")) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert final.stat().st_mtime_ns == before  # not re-exported


def test_nan_before_the_first_checkpoint_says_none_was_written_and_leaves_no_folder(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    data, out = write_subjects(tmp_path / "data", n=2), tmp_path / "run"
    real_step = DualDTrainer.step

    def step(self: DualDTrainer, source: torch.Tensor, target: torch.Tensor):  # a diverging run (lr 1e6)
        if self.step_count == 2:
            raise NonFiniteLossError("G", float("nan"), self.step_count + 1)
        return real_step(self, source, target)

    monkeypatch.setattr(DualDTrainer, "step", step)
    code = train_cli.main(_train(data, out, "--iterations", "10", "--variant", "unet", "--checkpoint-every", "1000"))
    err = capsys.readouterr().err
    assert code == 3 and "no checkpoint had been written yet" in err and "still holds" not in err
    assert not out.exists()


def test_a_run_with_bad_data_leaves_no_empty_folder(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    out = tmp_path / "run"
    assert train_cli.main(_train(empty, out, "--iterations", "1")) == 2
    assert not out.exists()
