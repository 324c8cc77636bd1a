"""Writing several output files at once, and finishing them all whatever signal arrives (torch-free).

The engine writes the synthetic and the heatmap side by side: compression and ITK's writers release the GIL,
so the synthetic's gzip overlaps the heatmap's quantisation (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs and hand the first one to the caller's handler after it.

    A handler that raises in the middle of threaded writes would leave writers running past the cleanup (an
    interrupted ``Thread.join`` even marks a running thread as stopped: CPython 3.11's bpo-45274 handling).
    Blocking the signals is not enough: any thread that has them unblocked (tqdm's monitor, torch's pools)
    lets Python run the handler in the main thread all the same. Outside the main thread (an embedding
    application) signals are not ours to change and the block just runs."""
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {signum: signal.signal(signum, lambda signum, _frame: caught.append(signum)) for signum in held}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)  # at once, so nothing after the writes (the commit) runs first
            elif handler == signal.SIG_DFL:
                if caught[0] == signal.SIGINT:
                    raise KeyboardInterrupt
                signal.raise_signal(caught[0])


def side_by_side(writes: list[Callable[[], object]]) -> None:
    """Run the file writes in threads (compression and ITK's writers release the GIL): the synthetic's gzip,
    the longest, overlaps the heatmap's quantisation. Every write ends before this returns or raises, even on
    Ctrl-C or SIGTERM (held for the seconds the writes take), so the transaction then removes every temporary
    file; the first failure is raised."""
    with signals_deferred(), ThreadPoolExecutor(max_workers=max(1, len(writes)),
                                                 thread_name_prefix="duald-write") as pool:
        futures = [pool.submit(write) for write in writes]
        wait(futures)
    for future in futures:
        future.result()
