"""Stopping a training loop cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's time limit).

The first such signal is deferred: the loop finishes its optimiser step, saves a checkpoint at
that step and stops, so ``hvkit run --resume`` continues to the result an uninterrupted run
gives. A second signal interrupts at once (``KeyboardInterrupt``, or :class:`Terminated` for a
SIGTERM), keeping the last periodic checkpoint; outside a training loop a SIGTERM interrupts at
once too, as Ctrl-C does, so the run can say what it keeps. Only a single process's main thread
handles them: under torchrun the ranks could see the signal at different steps and wait on each
other's collectives, so there the default holds.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

from hvkit import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handled_here() -> bool:
    """Whether this process may take over the signals: a single process, in its main thread."""
    return distributed.world()[2] == 1 and threading.current_thread() is threading.main_thread()


class Terminated(KeyboardInterrupt):
    """A SIGTERM received outside a training loop."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Stops where the signal lands: :class:`Terminated` for SIGTERM, ``KeyboardInterrupt`` for SIGINT."""
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _install(handlers: dict[int, object]) -> dict[int, object]:
    """Sets each signal's handler; returns the ones they replace (SIG_DFL for one set outside Python)."""
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    return {sig: signal.SIG_DFL if handler is None else handler for sig, handler in previous.items()}


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within it a SIGTERM raises :class:`Terminated` where it lands, as SIGINT raises ``KeyboardInterrupt``."""
    previous = _install({signal.SIGTERM: _interrupt}) if _handled_here() else {}
    try:
        yield
    finally:
        _install(previous)


class StopRequests:
    """Within ``with``: ``requested`` is the first SIGINT or SIGTERM received, else None."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if _handled_here():
            self._previous = _install({sig: self._receive for sig in SIGNALS})
        return self

    def _receive(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            _interrupt(signum, frame)
        self.requested = signal.Signals(signum)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        _install(self._previous)
