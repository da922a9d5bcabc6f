"""DINO's centre under 2 gloo processes with unequal shares equals 1 process's on the whole batch."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import dino_center_worker  # noqa: E402


def test_two_processes_update_the_centre_with_the_global_batch_mean(tmp_path, torchrun):
    out = tmp_path / "center.pt"
    torchrun(HERE / "dino_center_worker.py", str(out))
    expected = dino_center_worker.center(rank=0, world_size=1)
    t_1, t_2 = dino_center_worker.teacher_views()
    by_hand = 0.9 * torch.linspace(-1.0, 1.0, 5, dtype=torch.float64) + 0.1 * torch.cat([t_1, t_2]).mean(0)
    torch.testing.assert_close(expected, by_hand)
    torch.testing.assert_close(torch.load(out, weights_only=True), expected, rtol=1e-12, atol=1e-12)
