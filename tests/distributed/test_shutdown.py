"""distributed.shutdown ends the process group hvkit's init made, and only that one."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from hvkit import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_group():
    assert not dist.is_initialized()
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_the_group_init_made_is_ended(no_group, monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: (0, 0, 2))  # as under torchrun; the group itself has one rank
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.init(torch.device("cpu"))
    assert dist.is_initialized()
    distributed.shutdown()
    assert not dist.is_initialized()
    distributed.shutdown()  # a second call is a no-op


def test_a_group_made_elsewhere_is_left_alone(no_group, tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    distributed.init(torch.device("cpu"))
    distributed.shutdown()
    assert dist.is_initialized()


def test_no_rank_leaves_before_every_rank_ended_its_group(tmp_path, torchrun):
    """A rank exiting while a peer still tears its gloo connections down could abort at exit."""
    torchrun(Path(__file__).parent / "shutdown_worker.py", str(tmp_path))
    times = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert times[0]["ended"] >= times[1]["ended"] + 0.5  # rank 0 did end its group late
    assert times[1]["left"] >= times[0]["ended"]
