"""What the fine-tuning tests share (test_finetune.py, test_site_calibration.py): the tiny parent bundle and the
generated site (fixtures ``parent`` and ``site``, module-scoped, in conftest.py), the fine-tuning command line and
the refusal check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from _training_data import TINY_ARCH_FLAGS, write_subjects
from DualDTrainingLib import cli


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_site(root: Path) -> Path:
    """One generated subject the parent never saw, in a site folder named Testville."""
    return write_subjects(root / "Testville", n=1, seed=5)


def make_parent(root: Path) -> Path:
    """A tiny ``local`` model (G with the expected-error head, and D2) trained for two steps."""
    data = write_subjects(root / "data", n=2)
    out = root / "run"
    argv = ["--data", str(data), "--source", "t1", "--target", "t2", "--output", str(out), "--iterations", "2",
            "--device", "cpu", "--variant", "local", "--batch-size", "2", *TINY_ARCH_FLAGS]
    assert cli.main(argv) == 0
    return out / "model-final.safetensors"


def _argv(site: Path, parent: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(site), "--source", "t1", "--target", "t2", "--output", str(out), "--device", "cpu",
            "--init-from", str(parent), "--batch-size", "2", *extra]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], out: Path, *words: str) -> None:
    """Exit 2, one line naming the problem, the output folder not created."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duald-train: error: "), err
    for word in words:
        assert word in err[0], err[0]
    assert not out.exists()
