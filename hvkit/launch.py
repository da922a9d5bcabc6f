"""Several processes on one machine (``hvkit run --nproc N``): torchrun, with its failures read as hvkit's.

The parent launches torchrun's agent in-process; the agent starts one rank a process. A rank that
fails prints its own error (once for every rank meeting the same one: :func:`hvkit.distributed.first_to_report`);
the parent then exits with that rank's code instead of torchrun's traceback and failure table, and says
something itself only when a rank died without a word (killed by a signal). A rank whose collective fails
because a peer has already reported an error, or because the agent is stopping every rank on a signal,
exits quietly (:func:`quiet_after_peers`): the cause has been said once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hvkit import distributed
from hvkit.engine.interrupt import received
from hvkit.errors import HvkitError, Interrupted


def run_args(recipe: Path | None, overrides: list[str] | tuple[str, ...], run_dir: Path | None = None,
             resume: Path | None = None, device: str | None = None) -> list[str]:
    """The arguments of ``hvkit run`` that each process is given."""
    args = ["run"] + ([str(recipe)] if recipe is not None else []) + [f"--set={o}" for o in overrides]
    for flag, value in (("--run-dir", run_dir), ("--resume", resume), ("--device", device)):
        if value is not None:
            args += [flag, str(value)]
    return args


def launch(nproc: int, args: list[str], run_dir: Path | None) -> None:
    """Run ``hvkit ARGS`` in ``nproc`` processes under torchrun; exits with :func:`launched`'s code when
    it is not 0."""
    code = launched(nproc, args, run_dir)
    if code:
        sys.exit(code)


def launched(nproc: int, args: list[str], run_dir: Path | None) -> int:
    """Run ``hvkit ARGS`` in ``nproc`` processes under torchrun and return the exit code: 0, the failing
    rank's (the first to fail; of ranks failing together, one that did not exit quietly with 1), or
    128 + a signal's number that stopped every rank; a rank killed without a word is
    :class:`~hvkit.errors.Interrupted`. torchrun's own files (its log folder and the ranks' error files)
    live in a temporary folder removed afterwards, not one left in the temporary directory for each run.
    Each rank has :func:`_threads_per_rank` threads. torchrun's own line on a failed rank (:data:`FAILURE_LOG`)
    is silenced: the rank, or this function, says the failure."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        with tempfile.TemporaryDirectory(prefix="hvkit-torchrun-") as logs, _threads_per_rank(nproc), \
                _quiet(FAILURE_LOG):
            torchrun(["--standalone", f"--nproc_per_node={nproc}", f"--log-dir={logs}", "-m", "hvkit", *args])
    except SignalException as exc:  # forwarded to every rank, which has said where it stopped
        return 128 + exc.sigval.value
    except ChildFailedError as exc:
        rank, failure = min(exc.failures.items(), key=lambda item: (item[1].timestamp, item[1].exitcode == 1))
        if failure.exitcode >= 0:
            return failure.exitcode
        name = failure.signal_name()
        cause = " (out of memory?)" if name == "SIGKILL" else ""
        where = run_dir or "RUN_DIR (the run directory printed above)"
        raise Interrupted(f"rank {rank} of {nproc} was killed by {name}{cause}; the completed stages and the last "
                          f"checkpoint are kept; hvkit run --resume {where} continues", 128 - failure.exitcode) from None
    return 0


FAILURE_LOG = "torch.distributed.elastic.multiprocessing.api"
"""torchrun's logger of failed ranks ("failed (exitcode: 2) local_rank: 0 (pid: …) of binary: …")."""


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Within it, the logger ``name`` says nothing below CRITICAL."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def _threads_per_rank(nproc: int) -> Iterator[None]:
    """Within it, without ``OMP_NUM_THREADS`` set, the ranks share the cores: ``cores // nproc`` threads
    each, at least 1 (torchrun's own default is 1, with a warning); a value the user set is kept."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores() // nproc))
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


@contextlib.contextmanager
def quiet_after_peers() -> Iterator[None]:
    """Within it, under several processes, a failure that follows a signal this rank received or
    another rank's reported error exits quietly (1, or 128 + the signal's number)."""
    try:
        yield
    except HvkitError:
        raise
    except Exception:
        if distributed.world()[2] == 1:
            raise
        if distributed.peer_reported():
            sys.exit(1)
        stopped = received()
        if stopped is not None:
            sys.exit(128 + stopped.value)
        raise
