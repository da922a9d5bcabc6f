"""Run under torchrun by test_moco_v2_queue.py: MoCo v2's queue after two steps, each rank enqueueing its share.

Each rank holds half of each step's teacher outputs (rank 0 the first half) and calls
``observe_teacher``; rank 0 saves the queue and its position to argv[1].
"""

from __future__ import annotations

import sys

import torch

from hvkit import distributed
from hvkit_plugins.losses.moco_v2 import MoCoV2Loss

BATCH, D, QUEUE = 6, 4, 10


def teacher_views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return tuple(torch.randn(BATCH, D, generator=g, dtype=torch.float64) for _ in range(2))


def queue(rank: int, world_size: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Queue and position after two steps from a fixed start, on this rank's share (one process: the whole batch)."""
    loss = MoCoV2Loss(embedding_dim=D, queue_size=QUEUE, symmetric=symmetric).double()
    loss.queue.copy_(torch.arange(QUEUE * D, dtype=torch.float64).view(QUEUE, D))
    share = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    for step in range(2):
        loss.observe_teacher([t[share] for t in teacher_views(step)])
    return loss.queue, loss.position


def main(out: str) -> None:
    rank, _, world_size = distributed.world()
    distributed.init(torch.device("cpu"))
    result = {symmetric: queue(rank, world_size, symmetric) for symmetric in (False, True)}
    if rank == 0:
        torch.save(result, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
