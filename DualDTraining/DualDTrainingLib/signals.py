"""SIGINT/SIGTERM during training: a flag the loop checks between steps (it then saves and stops)."""

from __future__ import annotations

import contextlib
import signal
from typing import Any


class StopSignals:
    """SIGINT/SIGTERM → a flag checked between steps; a second signal interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. a worker thread): no handlers
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
