"""Side-by-side writes finish, whatever signal arrives while they run (the SIGTERM-during-write fault row)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from DualDSynthesisLib.imaging.concurrent_writes import side_by_side, signals_deferred


class _Stop(Exception):
    pass


@pytest.fixture
def raising_sigterm():
    def handler(_signum, _frame):
        raise _Stop

    previous = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_every_write_ends_before_a_signal_sent_twice_is_raised(raising_sigterm) -> None:
    finished: list[str] = []

    def write(name: str):
        def run() -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # each writer is "interrupted", as two SIGTERMs from a scheduler
            time.sleep(0.3)
            finished.append(name)
        return run

    with pytest.raises(_Stop):
        side_by_side([write("synthetic"), write("heatmap")])
    assert sorted(finished) == ["heatmap", "synthetic"]  # nothing was still running when the signal was raised
    assert not [t for t in threading.enumerate() if t.name.startswith("duald-write")]


def test_the_callers_handler_is_back_and_a_quiet_block_raises_nothing(raising_sigterm) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with signals_deferred():
        pass
    assert signal.getsignal(signal.SIGTERM) is before
    side_by_side([lambda: None, lambda: None])


def test_a_failed_write_is_raised_after_the_others_end() -> None:
    finished: list[str] = []

    def slow() -> None:
        time.sleep(0.2)
        finished.append("slow")

    def broken() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        side_by_side([slow, broken])
    assert finished == ["slow"]
