"""``hvkit run --nproc N``'s launcher around torchrun: the ranks' threads and torchrun's own files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch.distributed.run

from hvkit import launch


@pytest.fixture
def torchrun(monkeypatch):
    """torchrun's entry point replaced by one that records its arguments, OMP_NUM_THREADS, whether the
    log folder it is given exists and the level of its failure logger, and starts nothing."""
    calls = []

    def record(args):
        logs = Path(next(a for a in args if a.startswith("--log-dir=")).partition("=")[2])
        calls.append({"args": args, "threads": os.environ.get("OMP_NUM_THREADS"), "logs": logs,
                      "logs_exist": logs.is_dir(), "failure_log": logging.getLogger(launch.FAILURE_LOG).level})

    monkeypatch.setattr(torch.distributed.run, "main", record)
    return calls


@pytest.mark.parametrize("cores, nproc, threads", [(16, 4, "4"), (5, 2, "2"), (2, 4, "1")])
def test_ranks_share_the_cores_when_the_user_set_no_thread_count(torchrun, monkeypatch, cores, nproc, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launch, "_cores", lambda: cores)
    level = logging.getLogger(launch.FAILURE_LOG).level
    assert launch.launched(nproc, ["run", "r.yaml"], None) == 0
    (call,) = torchrun
    assert call["threads"] == threads
    assert "OMP_NUM_THREADS" not in os.environ
    assert call["args"] == ["--standalone", f"--nproc_per_node={nproc}", f"--log-dir={call['logs']}", "-m", "hvkit",
                            "run", "r.yaml"]
    assert call["logs_exist"] and not call["logs"].exists()
    assert call["failure_log"] == logging.CRITICAL and logging.getLogger(launch.FAILURE_LOG).level == level


def test_a_thread_count_the_user_set_is_kept(torchrun, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(launch, "_cores", lambda: 16)
    launch.launched(2, ["run", "r.yaml"], None)
    assert torchrun[0]["threads"] == "3" and os.environ["OMP_NUM_THREADS"] == "3"


def test_the_log_folder_is_removed_when_the_ranks_fail(monkeypatch):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    seen = []

    def fail(args):
        seen.append(Path(next(a for a in args if a.startswith("--log-dir=")).partition("=")[2]))
        raise ChildFailedError("hvkit", {1: ProcessFailure(local_rank=1, pid=7, exitcode=2, error_file="")})

    monkeypatch.setattr(torch.distributed.run, "main", fail)
    assert launch.launched(2, ["run", "r.yaml"], None) == 2
    assert not seen[0].exists()
