"""MoCo v2's queue under 2 gloo processes, each with half of each step's keys, equals 1 process's on the whole batch."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import moco_v2_queue_worker as worker  # noqa: E402


def test_two_processes_enqueue_every_ranks_keys_in_the_single_process_order(tmp_path, torchrun):
    out = tmp_path / "queue.pt"
    torchrun(HERE / "moco_v2_queue_worker.py", str(out))
    got = torch.load(out, weights_only=True)
    for symmetric in (False, True):
        expected_queue, expected_position = worker.queue(rank=0, world_size=1, symmetric=symmetric)
        queue, position = got[symmetric]
        torch.testing.assert_close(queue, expected_queue, rtol=1e-12, atol=1e-12)
        assert int(position) == int(expected_position)
    # by hand, asymmetric: 12 second-view keys from slot 0, the last two wrapping to slots 0 and 1
    keys = F.normalize(torch.cat([worker.teacher_views(step)[1] for step in range(2)]), dim=1)
    torch.testing.assert_close(got[False][0], torch.cat([keys[10:], keys[2:10]]))
