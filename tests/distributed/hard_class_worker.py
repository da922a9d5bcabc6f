"""Run under torchrun by test_hard_class_sampler.py: a model-aware sampler's batches under 2 processes.

Each rank's ``embed()`` gives other embeddings; ``sampler_batches`` must use rank 0's on every rank.
Rank 0 writes every rank's embed() calls and batches of epochs 0 and 1 to argv[1] (JSON).
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import torch

from hvkit import distributed
from hvkit_plugins.samplers.hard_class import HardClassSampler
from hvkit_plugins.stages.batches import sampler_batches

LABELS = np.repeat(np.arange(16), 4)


def embeddings(rank: int) -> torch.Tensor:
    """This rank's (unnormalised) embeddings of the 64 images."""
    return torch.from_numpy(np.random.default_rng(rank).normal(size=(len(LABELS), 8)))


def sampler(rank: int = 0, world_size: int = 1) -> HardClassSampler:
    return HardClassSampler(LABELS, batch_size=16, samples_per_class=2, hard_fraction=1.0, neighbours=1,
                            seed=7, rank=rank, world_size=world_size)


def main(out: str) -> None:
    rank, _, world_size = distributed.world()
    distributed.init(torch.device("cpu"))
    calls: list[int] = []

    def embed() -> torch.Tensor:
        calls.append(rank)
        return embeddings(rank)

    ctx = SimpleNamespace(is_main=rank == 0, log=lambda message: None)
    batches, _ = sampler_batches(ctx, sampler(rank, world_size), embed)
    shares = [[list(map(int, b)) for b in batches(epoch)] for epoch in range(2)]
    gathered = distributed.gather_objects({"calls": calls, "shares": shares})
    if rank == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(gathered, f)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
