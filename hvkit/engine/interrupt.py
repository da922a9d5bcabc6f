"""Stopping a training loop cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's time limit).

The first such signal is deferred: the loop finishes its optimiser step, saves a checkpoint at
that step and stops, so ``hvkit run --resume`` continues to the result an uninterrupted run
gives. A second signal interrupts at once (``KeyboardInterrupt``, or :class:`Terminated` for a
SIGTERM), keeping the last periodic checkpoint; outside a training loop a SIGTERM interrupts at
once too, as Ctrl-C does, so the run can say what it keeps. Only the main thread handles them.

Under several processes (torchrun) each rank sees the signal at its own moment: the ranks agree
after every step (:meth:`StopRequests.agreed`, the largest signal number over ranks), so all stop
at the same step and save one checkpoint. A rank ignores every signal after its first: torchrun's
agent forwards the signal it receives, a scheduler may signal the ranks as well, and the agent's
SIGKILL after its shutdown timeout (30 s) is the hard stop.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

import torch

from hvkit import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)


_first: signal.Signals | None = None  # the first SIGINT or SIGTERM this process received


def _handled_here() -> bool:
    """Whether this thread may take over the signals: the main thread."""
    return threading.current_thread() is threading.main_thread()


def _several() -> bool:
    return distributed.world()[2] > 1


def received() -> signal.Signals | None:
    """The first SIGINT or SIGTERM this process received while hvkit handled them, else None."""
    return _first


def _note(signum: int) -> None:
    global _first
    if _first is None:
        _first = signal.Signals(signum)


class Terminated(KeyboardInterrupt):
    """A SIGTERM received outside a training loop."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Stops where the signal lands: :class:`Terminated` for SIGTERM, ``KeyboardInterrupt`` for SIGINT.
    Under several processes only the first signal stops a rank (a later one is ignored)."""
    if _several() and _first is not None:
        return
    _note(signum)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _install(handlers: dict[int, object]) -> dict[int, object]:
    """Sets each signal's handler; returns the ones they replace (SIG_DFL for one set outside Python)."""
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    return {sig: signal.SIG_DFL if handler is None else handler for sig, handler in previous.items()}


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within it a SIGTERM raises :class:`Terminated` where it lands, as SIGINT raises ``KeyboardInterrupt``."""
    previous = _install({sig: _interrupt for sig in SIGNALS}) if _handled_here() else {}
    try:
        yield
    finally:
        _install(previous)


class StopRequests:
    """Within ``with``: ``requested`` is the first SIGINT or SIGTERM received, else None; a second one
    interrupts at once in a single process and is ignored under several."""

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
            return
        _note(signum)
        self.requested = signal.Signals(signum)

    def agreed(self, device: torch.device) -> signal.Signals | None:
        """The stop every rank makes now: the largest signal any rank received (SIGTERM over SIGINT).
        A collective under several processes: every rank calls it at the same points."""
        local = 0 if self.requested is None else self.requested.value
        value = distributed.max_over_ranks(local, device)
        return signal.Signals(value) if value else None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        _install(self._previous)
