"""Fault campaign (issue 15), training and evaluation: a constant target among good subjects, a broken or
interrupted PyTorch import, and ``--resume`` with a file that is not a checkpoint."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from _training_data import TINY_ARCH_FLAGS, write_subjects
from bundles import make_bundle
from DualDTrainingLib import checkpoint as ckpt
from DualDTrainingLib import cli
from DualDTrainingLib.discovery import discover


def _zero_target(data: Path, which: int) -> tuple[str, str]:
    """Make one subject's target all-zero; returns (subject, target file name)."""
    pair = sorted(discover(data, "t1", "t2").pairs, key=lambda p: p.subject)[which]
    image = sitk.ReadImage(str(pair.target))
    blank = sitk.Image(image.GetSize(), image.GetPixelID())
    blank.CopyInformation(image)
    sitk.WriteImage(blank, str(pair.target))
    return pair.subject, pair.target.name


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--source", "t1", "--target", "t2", "--output", str(out), "--iterations", "2",
            "--device", "cpu", "--workers", "1", *TINY_ARCH_FLAGS, *extra]


# ----------------------------------------------------------------------------- row 4: constant target


def test_constant_target_is_rejected_by_name_and_training_goes_on(tmp_path, capsys) -> None:
    data = write_subjects(tmp_path / "data", n=3)
    subject, name = _zero_target(data, 0)
    out = tmp_path / "run"
    code = cli.main(_train(data, out, "--val-every", "0"))
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    line = next(ln for ln in err.splitlines() if ln.startswith(f"rejected {subject}"))
    assert f"target file {name} is constant" in line and line.count(name) == 1
    assert (out / "model-final.safetensors").is_file()


def test_evaluate_skips_a_constant_target_and_scores_the_others(tmp_path, capsys) -> None:
    from DualDTrainingLib.evaluate_cli import main

    data = write_subjects(tmp_path / "data", n=3)
    subject, name = _zero_target(data, 1)
    model = make_bundle(tmp_path / "m.safetensors")
    code = main(["--model", str(model), "--data", str(data), "--source", "t1", "--target", "t2", "--device", "cpu",
                 "--json", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    skipped = [ln for ln in captured.err.splitlines() if ln.startswith(f"skipped {subject}")]
    assert len(skipped) == 1 and name in skipped[0] and "constant" in skipped[0]
    assert captured.out.count("PSNR") >= 2 and (tmp_path / "r.json").is_file()


# ----------------------------------------------------------------------------- row 9: broken / interrupted import


class _Exploding(types.ModuleType):
    def __init__(self, exc: BaseException) -> None:
        super().__init__("DualDTrainingLib.loop")
        self._exc = exc

    def __getattr__(self, name: str):
        raise self._exc


@pytest.mark.parametrize(("exc", "code", "words"), [
    (ImportError("libtorch_cpu.so: cannot open shared object file"), 2, "could not be imported (libtorch_cpu.so"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_a_broken_or_interrupted_torch_import_shows_its_cause(tmp_path, capsys, monkeypatch, exc, code,
                                                             words) -> None:
    monkeypatch.setitem(sys.modules, "DualDTrainingLib.loop", _Exploding(exc))
    result = cli.main(_train(tmp_path / "data", tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert result == code and len(err) == 1, err
    assert words in err[0] and "UnboundLocalError" not in err[0]


# ----------------------------------------------------------------------------- row 10: --resume with a non-checkpoint


@pytest.mark.parametrize("content", ["pickle", "garbage", "zip"])
def test_resume_from_a_file_that_is_not_a_checkpoint(tmp_path, capsys, content) -> None:
    out = tmp_path / "run"
    out.mkdir()
    last = out / ckpt.LAST
    if content == "pickle":
        torch.save(argparse.Namespace(step=3), last)  # weights_only=True refuses it with "weights_only=False" advice
    elif content == "garbage":
        last.write_bytes(np.random.default_rng(0).bytes(5000))
    else:
        torch.save({"not": "ours"}, last)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(last)
    assert str(info.value) == f"{last} is not a training checkpoint of this project (or it is damaged)"
    data = write_subjects(tmp_path / "data", n=2)
    code = cli.main(_train(data, out, "--resume"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "is not a training checkpoint of this project" in err[0] and "weights_only" not in err[0]
