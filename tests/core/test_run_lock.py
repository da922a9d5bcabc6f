"""The run lock on both of its platforms: ``flock`` here, and the Windows ``msvcrt.locking`` backend through
a stand-in for ``msvcrt`` with its semantics (a byte locked through one open file refuses every other
file's lock on it until unlocked; no shared mode). Two opens in one process conflict as two processes do."""

from __future__ import annotations

import errno
import json
import os
import threading

import pytest

from hvkit import run_lock
from hvkit.run_lock import InUse, RunLock


class Msvcrt:
    """``msvcrt.locking(fd, mode, nbytes)`` from the file's current position, as Windows' ``_locking``."""

    LK_UNLCK, LK_LOCK, LK_NBLCK = 0, 1, 2

    def __init__(self):
        self.held: dict[tuple[int, int, int], int] = {}  # (device, inode, offset) → the fd that holds it
        self.calls: list[tuple[int, int]] = []  # (mode, offset)

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        assert nbytes == 1
        stat, offset = os.fstat(fd), os.lseek(fd, 0, os.SEEK_CUR)
        key = (stat.st_dev, stat.st_ino, offset)
        self.calls.append((mode, offset))
        if mode == self.LK_UNLCK:
            if self.held.get(key) != fd:
                raise OSError(errno.EACCES, "Permission denied")
            del self.held[key]
        elif key in self.held:
            raise OSError(errno.EACCES, "Permission denied")
        else:
            self.held[key] = fd


@pytest.fixture(params=["flock", "msvcrt"])
def platform(request, monkeypatch) -> Msvcrt | None:
    """Each backend in turn: None for this platform's ``flock``, else the ``msvcrt`` stand-in in use."""
    if request.param == "flock":
        return None
    fake = Msvcrt()
    monkeypatch.setattr(run_lock, "backend", run_lock.WindowsLock(fake))
    return fake


def test_a_held_directory_names_its_holder_refuses_another_and_is_free_once_released(tmp_path, platform):
    first = RunLock(tmp_path, "hvkit run")
    first.acquire()
    record = json.loads((tmp_path / ".lock").read_text())
    assert record["command"] == "hvkit run" and record["pid"] == os.getpid()
    assert run_lock.holder(tmp_path).command == "hvkit run"
    with pytest.raises(InUse, match=rf"^{tmp_path} is in use by hvkit run \(pid {os.getpid()} on "):
        RunLock(tmp_path, "hvkit eval").acquire()
    assert run_lock.holder(tmp_path).command == "hvkit run"  # the refused process left the record alone
    first.release()
    assert run_lock.holder(tmp_path) is None
    second = RunLock(tmp_path, "hvkit eval")
    second.acquire()  # free again: neither the release nor status's probe left a lock behind
    assert run_lock.holder(tmp_path).command == "hvkit eval"
    second.release()
    assert (tmp_path / ".lock").stat().st_size < 200  # the record alone: nothing written at the locked byte
    if platform is not None:
        assert platform.held == {}
        assert {offset for _, offset in platform.calls} == {run_lock.WindowsLock.OFFSET}


def test_an_exclusive_block_waits_for_the_holder(tmp_path, platform):
    order = []

    def second():
        with run_lock.exclusive(tmp_path / "summary.lock"):
            order.append("second")

    with run_lock.exclusive(tmp_path / "summary.lock"):
        waiting = threading.Thread(target=second)
        waiting.start()
        waiting.join(0.3)
        order.append("first")
    waiting.join(10)
    assert order == ["first", "second"]
    if platform is not None:
        assert platform.held == {}


def test_a_windows_lock_error_other_than_held_is_raised(tmp_path, monkeypatch):
    class Broken(Msvcrt):
        def locking(self, fd, mode, nbytes):
            raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(run_lock, "backend", run_lock.WindowsLock(Broken()))
    with pytest.raises(OSError, match="Bad file descriptor"):
        RunLock(tmp_path, "hvkit run").acquire()
    with pytest.raises(OSError, match="Bad file descriptor"):
        with run_lock.exclusive(tmp_path / "summary.lock"):
            pytest.fail("the block ran")
