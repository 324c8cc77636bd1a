"""Terminal output that survives a non-UTF-8 locale."""

from __future__ import annotations

import argparse
import sys


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
