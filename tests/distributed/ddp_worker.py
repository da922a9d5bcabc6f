"""Run under torchrun by test_gradients.py: the gradients of every global-batch loss under DDP.

Each rank embeds its contiguous slice of a fixed float64 batch with a DDP-wrapped linear
model, the core gathers embeddings (and labels), the loss is scaled by the world size and
loss-parameter gradients are synchronised — the gather policy of hvkit.distributed. Rank 0
saves the model's and the loss's gradients per loss name to the file given as argv[1].
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from hvkit import distributed
from hvkit.api import ViewLoss
from hvkit.engine.context import build
from hvkit.registry import get_registry

BATCH, IN_DIM, DIM, CLASSES = 16, 12, 8, 4
SPECS = {"vicregl": {"name": "vicregl", "num_matches": 3, "local_dims": [8, 8]}}  # maps of 2 x 2 cells


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x_a = torch.randn(BATCH, IN_DIM, generator=g, dtype=torch.float64)
    x_b = x_a + 0.1 * torch.randn(BATCH, IN_DIM, generator=g, dtype=torch.float64)
    labels = torch.arange(BATCH) % CLASSES
    return x_a, x_b, labels


def gradients(name: str, rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """One step of loss ``name`` on this rank's share; world_size 1 is the whole batch."""
    torch.manual_seed(0)
    model = nn.Linear(IN_DIM, DIM).double()
    loss_fn = build(get_registry(), "loss", SPECS.get(name, name), embedding_dim=DIM, num_classes=CLASSES,
                    map_channels=DIM // 4).double()
    wrapped = distributed.wrap(model, torch.device("cpu"))
    x_a, x_b, labels = batch()
    share = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    gathered = getattr(loss_fn, "needs_global_batch", False)
    gather = distributed.gather_with_grad if gathered else (lambda t: t)
    if isinstance(loss_fn, ViewLoss):
        z_a, z_b = wrapped(torch.cat([x_a[share], x_b[share]])).chunk(2)
        maps = {}
        if getattr(loss_fn, "takes_feature_maps", False):  # each embedding seen as a (DIM / 4, 2, 2) map
            cells = torch.tensor([-0.5, 0.5], dtype=torch.float64)
            grid = torch.stack(torch.meshgrid(cells, cells, indexing="xy"), -1).expand(BATCH, 2, 2, 2)
            maps = {"maps": tuple(gather(z.view(-1, DIM // 4, 2, 2)) for z in (z_a, z_b)),
                    "positions": (grid, 0.7 * grid + 0.1)}
        loss = loss_fn(gather(z_a), gather(z_b), **maps)
    else:
        y = distributed.gather(labels[share]) if gathered else labels[share]
        loss = loss_fn(gather(wrapped(x_a[share])), y)
    (loss * (distributed.global_loss_scale() if gathered else 1.0)).backward()
    distributed.sync_loss_gradients(loss_fn, gathered)
    grads = {f"model.{k}": p.grad.clone() for k, p in model.named_parameters()}
    grads.update({f"loss.{k}": p.grad.clone() for k, p in loss_fn.named_parameters() if p.grad is not None})
    return grads


def main(out: str, names: list[str]) -> None:
    rank, _, world_size = distributed.world()
    distributed.init(torch.device("cpu"))
    results = {name: gradients(name, rank, world_size) for name in names}
    if rank == 0:
        torch.save(results, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
