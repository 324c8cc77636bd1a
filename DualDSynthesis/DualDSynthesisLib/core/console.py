"""Terminal output that survives a non-UTF-8 locale."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import NoReturn


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The CLIs' --help: every option's default shown (not the empty ones: None, False, ""), descriptions
    and examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, "", []) or action.required:
            return action.help
        return super()._get_help_string(action)


def safe_console() -> None:
    """Make stdout/stderr escape characters their encoding lacks (×, →, ≥ in our messages) instead of
    raising ``UnicodeEncodeError`` mid-run: an ASCII locale (``LANG=C`` on a bare server) must not be
    able to kill a training run or a cohort synthesis."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def exit_now(code: int) -> NoReturn:
    """End a console-script process with ``code`` as soon as its work is done: flush the console, then
    ``os._exit``. Tearing down an interpreter that loaded torch (module finalisers, its thread pools, the
    networks' memory) took 0.55 s after a CPU synthesis of 240×240×155 — a quarter of the command's time
    outside the networks (docs/performance.md). Only for the console entry points, never for a ``main()``
    called in a process that goes on (tests, Slicer): every file is closed and renamed into place by then."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken console must not change the exit code
            stream.flush()
    os._exit(code)
