"""NNCLR's support set under 2 gloo processes, each with half of each step's views, is the same on both ranks and
equals 1 process's on the whole batch, as do the loss values that its nearest neighbours give."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import nnclr_support_worker as worker  # noqa: E402


def test_every_rank_holds_the_single_process_support_set(tmp_path, torchrun):
    out = tmp_path / "support.pt"
    torchrun(HERE / "nnclr_support_worker.py", str(out))
    expected = worker.trajectory(rank=0, world_size=1)
    assert int(expected["written"]) == 18  # three steps of 6: the ring of 10 has wrapped
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        torch.testing.assert_close(got["support"], expected["support"], rtol=1e-12, atol=1e-12)
        assert int(got["written"]) == 18
        torch.testing.assert_close(got["values"], expected["values"], rtol=1e-12, atol=1e-12)
