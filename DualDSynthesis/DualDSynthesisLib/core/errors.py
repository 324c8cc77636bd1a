"""The one base class of user errors (no torch, SimpleITK, Slicer or Qt import).

Every error that means "the user's input, options, model file or disk is at fault" derives from
:class:`DualDError` (a ``ValueError``, so older ``except ValueError`` callers keep working) and carries
one sentence for the user. The command-line tools catch only this class (plus the operating system's
``OSError``): a programming error such as a ``TypeError`` in our own code is never turned into a
"skipped" line but surfaces as a traceback. :func:`naming_input` names the input a per-input error line
is about exactly once (``duald-synthesize`` and the viewer).
"""

from __future__ import annotations


class DualDError(ValueError):
    """A problem the user can fix (bad input, bad option, bad model, full disk); the message is one sentence."""


class OutputExistsError(DualDError, FileExistsError):
    """An output path is taken and overwriting was not asked for (also a ``FileExistsError``)."""


class OutputWriteError(DualDError, OSError):
    """A file could not be written completely (disk full, read-only folder); nothing was left at its path."""


def naming_input(name: str, message: str) -> str:
    """``message`` naming the input ``name`` exactly once (the message may already name it): the per-input
    error lines of ``duald-synthesize`` and the viewer."""
    return message if name in message else f"{name}: {message}"
