"""Run under torchrun by test_sync_batchnorm.py: two SGD steps of a BatchNorm model under DDP.

Each rank trains on its contiguous half of a fixed float64 batch with a per-sample loss; rank 0
saves the first step's gradients, the parameters and BatchNorm buffers after the second, and the
model's evaluation output, to the file given as argv[1]. World size 1 is the whole batch. With
argv[2] ``per_rank`` it is wrapped with ``sync_batchnorm=False`` (``train.sync_batchnorm: false``), each
rank's BatchNorm on its own half.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from hvkit import distributed

BATCH = 8


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5, momentum=0.3),
                         nn.BatchNorm1d(5, affine=False, momentum=None)).double()


def train(rank: int, world_size: int, per_rank: bool = False) -> dict[str, torch.Tensor]:
    net = model()
    wrapped = distributed.wrap(net, torch.device("cpu"), sync_batchnorm=not per_rank)
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(BATCH, 2, 4, 4, generator=g, dtype=torch.float64) + 1
    target = torch.randn(BATCH, 5, generator=g, dtype=torch.float64)
    share = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    found = {}
    for step in range(2):
        optimizer.zero_grad()
        loss = ((wrapped(x[share]) - target[share]) ** 2).mean()
        loss.backward()
        if step == 0:
            found |= {f"grad.{k}": p.grad.clone() for k, p in net.named_parameters()}
        optimizer.step()
    found |= {f"after.{k}": v.clone() for k, v in net.state_dict().items()}
    net.eval()
    with torch.no_grad():
        found["eval_output"] = net(x)
    return found


def main(out: str, mode: str = "synced") -> None:
    rank, _, world_size = distributed.world()
    distributed.init(torch.device("cpu"))
    found = train(rank, world_size, per_rank=mode == "per_rank")
    if rank == 0:
        torch.save(found, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
