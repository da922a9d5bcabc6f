"""Run under torchrun by test_dino_center.py: DINO's centre after one update from each rank's share.

Each rank holds a contiguous, unequal share of a fixed batch of teacher outputs (rank 0 a
third, rank 1 the rest) and calls ``observe_teacher``; rank 0 saves the centre to argv[1].
"""

from __future__ import annotations

import sys

import torch

from hvkit import distributed
from hvkit_plugins.losses.dino import DINOLoss

BATCH, K = 12, 5


def teacher_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return tuple(torch.randn(BATCH, K, generator=g, dtype=torch.float64) + i for i in range(2))


def center(rank: int, world_size: int) -> torch.Tensor:
    """The centre after one step from a fixed start, on this rank's share (the whole batch in one process)."""
    loss = DINOLoss(embedding_dim=K).double()
    loss.center.copy_(torch.linspace(-1.0, 1.0, K))
    share = slice(0, BATCH // 3) if (world_size, rank) == (2, 0) else slice(BATCH // 3 if world_size == 2 else 0, BATCH)
    loss.observe_teacher([t[share] for t in teacher_views()])
    return loss.center


def main(out: str) -> None:
    rank, _, world_size = distributed.world()
    distributed.init(torch.device("cpu"))
    result = center(rank, world_size)
    if rank == 0:
        torch.save(result, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
