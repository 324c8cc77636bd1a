"""The training tools' outcomes as exceptions, torch-free so ``duald-train`` can name them in its
``except`` clauses before (and even when) PyTorch imports."""

from __future__ import annotations

from DualDSynthesisLib.core.errors import DualDError

EXIT_NON_FINITE = 3  # a loss became NaN/inf; the last checkpoint is untouched


class TrainingError(DualDError):
    """A problem with the user's data or options; the message is one sentence."""


class DiscoveryError(DualDError):
    """The data cannot be used at all (bad path, unknown contrast, nothing found) or a pair's file cannot be read."""


class TrainingStopped(RuntimeError):
    """The run stopped early (signal: 130/143 after saving; non-finite loss: 3, nothing saved)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
