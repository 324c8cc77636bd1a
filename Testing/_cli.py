"""Running ``duald-synthesize`` in-process in a test, quietly, and reading what it said."""

from __future__ import annotations

import pytest
from DualDSynthesisLib.cli import synthesize as cli


def run_quiet(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``duald-synthesize -q ARGV``."""
    code = cli.main(["-q", *argv])
    return code, capsys.readouterr().err.strip().splitlines()
