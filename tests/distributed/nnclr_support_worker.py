"""Run under torchrun by test_nnclr_support.py: NNCLR's support set and values over three steps, each rank its share.

Each rank holds half of each step's two views (rank 0 the first half), gathers them as ``ssl_pretrain`` does for a
loss that declares ``needs_global_batch`` and calls the loss; every rank saves its support set, its count and the
step values to argv[1] with its rank in the name.
"""

from __future__ import annotations

import sys

import torch

from hvkit import distributed
from hvkit_plugins.losses.nnclr import NNCLRLoss

BATCH, D, SUPPORT = 6, 4, 10


def step_views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    base = torch.randn(BATCH, D, generator=g, dtype=torch.float64)
    return base, base + 0.3 * torch.randn(BATCH, D, generator=g, dtype=torch.float64)


def trajectory(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Support set, count and the three step values, on this rank's share (one process: the whole batch)."""
    torch.manual_seed(0)
    loss = NNCLRLoss(embedding_dim=D, support_size=SUPPORT, predictor_dim=8).double()
    share = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    values = [loss(*(distributed.gather_with_grad(v[share]) for v in step_views(step))).detach() for step in range(3)]
    return {"support": loss.support, "written": loss.written, "values": torch.stack(values)}


def main(out: str) -> None:
    rank, _, world_size = distributed.world()
    distributed.init(torch.device("cpu"))
    torch.save(trajectory(rank, world_size), f"{out}.{rank}")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
