"""One hvkit process at a time in a run directory, and who it is.

``hvkit run`` (fresh or ``--resume``) and ``hvkit eval`` hold an exclusive lock (``flock(2)``) on
``RUN_DIR/.lock`` while they work (rank 0 under several processes). A second command on the same
directory is refused with one line naming the holder, instead of two processes overwriting each
other's checkpoints and outputs. The kernel releases the lock when its holder exits however it
ends (SIGKILL, out of memory), so a lock is never stale; the file keeps the last holder's record,
which counts only while the lock is held. ``hvkit status`` reads it to tell a running run from a
stopped one. On Windows the lock is ``msvcrt.locking`` on one byte far past the record (Windows locks
are mandatory: a lock on the record would hide it from ``hvkit status``), with no shared mode: a reader
takes it exclusively for an instant, which a writer retries. Over NFS the lock is as good as the server's
locking, and a file system without locks gets a warning and no lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hvkit import distributed
from hvkit.errors import HvkitError

if os.name == "nt":
    import msvcrt
else:
    import fcntl

LOCK = ".lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK)  # EDEADLK: msvcrt's "still locked"
_TRIES = 5  # a reader (hvkit status) holds the lock shared for an instant: retry before refusing
_PAUSE = 0.1
log = logging.getLogger("hvkit")


class InUse(HvkitError):
    """Another process holds the run directory."""


@dataclass(frozen=True)
class Holder:
    """The process that holds a run directory: its command, pid, host and start time."""

    command: str
    pid: int
    host: str
    since: str

    def __str__(self) -> str:
        return f"{self.command} (pid {self.pid} on {self.host}, since {self.since})"


def _record(file: IO[str]) -> Holder | None:
    """The record in a held lock file; None when the holder has not written it yet."""
    file.seek(0)
    try:
        return Holder(**json.loads(file.read()))
    except (ValueError, TypeError):
        return None


class Flock:
    """``flock(2)`` locks: shared or exclusive, per open file, released when the file closes."""

    def try_lock(self, file: IO[str], shared: bool = False) -> None:
        fcntl.flock(file, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)

    def wait_lock(self, file: IO[str]) -> None:
        fcntl.flock(file, fcntl.LOCK_EX)

    def unlock(self, file: IO[str]) -> None:
        fcntl.flock(file, fcntl.LOCK_UN)


class WindowsLock:
    """``msvcrt.locking`` on the byte at :attr:`OFFSET`, exclusive only (``shared`` is taken exclusively)."""

    OFFSET = 1 << 30  # past any record, which stays readable: Windows locks bar other handles' reads

    def __init__(self, module: Any = None):
        self.msvcrt = module or msvcrt

    def _at(self, file: IO[str], mode: int) -> None:
        file.flush()
        os.lseek(file.fileno(), self.OFFSET, os.SEEK_SET)
        try:
            self.msvcrt.locking(file.fileno(), mode, 1)
        finally:
            file.seek(0)

    def try_lock(self, file: IO[str], shared: bool = False) -> None:
        self._at(file, self.msvcrt.LK_NBLCK)

    def wait_lock(self, file: IO[str]) -> None:
        while True:
            try:
                return self.try_lock(file)
            except OSError as exc:
                if exc.errno not in _HELD:
                    raise
            time.sleep(_PAUSE)

    def unlock(self, file: IO[str]) -> None:
        self._at(file, self.msvcrt.LK_UNLCK)


backend: Flock | WindowsLock = WindowsLock() if os.name == "nt" else Flock()
"""This platform's file locks."""


def _locked(file: IO[str], shared: bool = False) -> bool | None:
    """Whether the lock was taken without waiting: False when another process holds it, None when the
    file system has no locks (some network file systems)."""
    try:
        backend.try_lock(file, shared)
    except OSError as exc:
        if exc.errno in _HELD:
            return False
        if exc.errno in _NO_LOCKS:
            return None
        raise
    return True


def holder(run_dir: Path) -> Holder | None:
    """The process working in ``run_dir`` now, or None when none is. A holder whose record is not
    written yet is reported with pid 0 and command ``hvkit``."""
    path = run_dir / LOCK
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as file:
        taken = _locked(file, shared=True)
        if taken:
            backend.unlock(file)
        if taken is not False:  # free, or no locks to tell
            return None
        return _record(file) or Holder("hvkit", 0, "?", "?")


class RunLock:
    """The exclusive lock on ``run_dir``, taken with :meth:`acquire` and released by :meth:`release`
    (or the process's exit)."""

    def __init__(self, run_dir: Path, command: str):
        self.path = run_dir / LOCK
        self.command = command
        self._file: IO[str] | None = None
        self._taken = False

    def acquire(self) -> None:
        """Take the lock and write this process's record; :class:`InUse` naming the holder when another
        process has it."""
        try:
            file = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise HvkitError(f"{self.path}: cannot open the run directory's lock file ({exc.strerror}); hvkit "
                             "writes in a run directory while it works") from None
        for attempt in range(_TRIES):
            taken = _locked(file)
            if taken is None:
                log.warning("%s: the file system has no file locks; nothing keeps a second hvkit process "
                            "out of this run directory", self.path.parent)
            if taken is not False:
                self._taken = bool(taken)
                break
            if attempt < _TRIES - 1:
                time.sleep(_PAUSE)
        else:
            other = _record(file)
            file.close()
            who = str(other) if other else "another hvkit process"
            stop = f" (kill -INT {other.pid} stops it at the next step)" if other and other.pid else ""
            raise InUse(f"{self.path.parent} is in use by {who}; wait for it to end{stop}")
        record = Holder(self.command, os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"))
        file.seek(0)
        file.truncate()
        file.write(json.dumps(record.__dict__))
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            if self._taken:
                backend.unlock(self._file)
            self._file.close()
            self._file, self._taken = None, False


@contextlib.contextmanager
def holding(run_dir: Path, command: str, check: Callable[[], None] | None = None) -> Iterator[None]:
    """``run_dir`` locked for ``command`` while the block runs, by rank 0 under several processes.
    ``check``, when given, runs once the lock is held (say, that no other process made a run there
    meanwhile); when the lock is taken or ``check`` refuses, every rank raises the same error."""
    lock = RunLock(run_dir, command)
    refused = None
    if distributed.world()[0] == 0:
        try:
            lock.acquire()
            if check is not None:
                check()
        except HvkitError as exc:
            lock.release()
            refused = exc
        except BaseException:
            lock.release()
            raise
    refused = distributed.broadcast_object(refused)
    if refused is not None:
        raise refused
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) while the block runs, waiting as long as
    another process holds it: for what several processes write in turn, each from what it reads under
    the lock (a sweep's summary). Where the file system has no locks the block runs unguarded."""
    with open(path, "a", encoding="utf-8") as file:
        taken = True
        try:
            backend.wait_lock(file)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            taken = False
        try:
            yield
        finally:
            if taken:
                backend.unlock(file)
