"""Why a run stopped: ``RUN_DIR/stopped.json``, written when ``hvkit run`` ends in an error or on a signal
and removed when the run is started again, so that ``hvkit status`` and ``hvkit sweep`` can say it later,
from any process."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from hvkit import distributed
from hvkit.engine.checkpoint import write_json
from hvkit.errors import HvkitError, Interrupted, problems

STOPPED = "stopped.json"
log = logging.getLogger("hvkit")


@dataclass(frozen=True)
class Stop:
    """How a run's last ``hvkit run`` ended: its error lines, as the console said them, and whether a
    signal stopped it (``interrupted``) rather than an error."""

    time: str
    error: list[str]
    interrupted: bool


def read(run_dir: Path) -> Stop | None:
    """The record of ``run_dir``'s last stop; None when its last ``hvkit run`` has not stopped early (or was
    killed before it could write one)."""
    try:
        return Stop(**json.loads((run_dir / STOPPED).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _lines(error: BaseException) -> list[str] | None:
    """What to record of ``error`` on this rank: its problems for an :class:`HvkitError`; for another
    exception its type and message, unless another rank reported an error first, which this one only
    follows from (that rank records its own)."""
    if isinstance(error, HvkitError):
        return [str(problem) for problem in problems(error)]
    if distributed.peer_reported() or distributed.world()[0] != 0:
        return None
    return [f"{type(error).__name__}: {error}"]


@contextlib.contextmanager
def recorded(run_dir: Path) -> Iterator[None]:
    """Within it, a run's earlier record is gone (rank 0 removes it), and an exception leaving the block
    is recorded before it goes on: a user error by each rank meeting it, any other by rank 0. A record
    that cannot be written (a full disk) is a warning; the exception goes on unchanged."""
    if distributed.world()[0] == 0:
        (run_dir / STOPPED).unlink(missing_ok=True)
    try:
        yield
    except Exception as exc:
        lines = _lines(exc)
        if lines is not None:
            stop = Stop(time.strftime("%Y-%m-%dT%H:%M:%S"), lines, isinstance(exc, Interrupted))
            try:
                write_json(run_dir / STOPPED, asdict(stop))
            except OSError as failed:  # the error itself matters more than its record
                log.warning("%s: cannot record why the run stopped (%s)", run_dir, failed.strerror or failed)
        raise
