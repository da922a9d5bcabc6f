"""Stopping a training loop cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's time limit).

The first such signal is deferred: the loop finishes its optimiser step, saves a checkpoint at
that step and stops, so ``hvkit run --resume`` continues to the result an uninterrupted run
gives. A second signal interrupts at once (``KeyboardInterrupt``), keeping the last periodic
checkpoint. Only a single process's main thread defers: under torchrun the ranks could see the
signal at different steps and wait on each other's collectives, so there the default holds.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from hvkit import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """Within ``with``: ``requested`` is the first SIGINT or SIGTERM received, else None."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if distributed.world()[2] == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._receive) for sig in SIGNALS}
        return self

    def _receive(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
