"""Where a training stage's batches come from: its images, its sampler, the sampler's order each epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from hvkit.api import BatchSampler
from hvkit.engine import StageContext


def split_images(ctx: StageContext, splits: list[str]) -> torch.Tensor:
    """The images of the dataset's ``splits``, concatenated in that order (labels unused: pre-training).

    A split the dataset lacks is a ValueError naming the splits it has (the pipeline names the stage).
    """
    missing = [s for s in splits if s not in ctx.dataset.splits]
    if missing:
        raise ValueError(f"dataset has no split {missing[0]!r} "
                         f"(has {', '.join(ctx.dataset.splits)})")
    return torch.cat([ctx.dataset.splits[s].images for s in splits])


def image_sampler(ctx: StageContext, spec: Any, count: int, batch_size: int) -> BatchSampler:
    """The recipe's sampler over ``count`` unlabelled images (each its own label), sharded for this process."""
    return ctx.build("sampler", spec, labels=np.arange(count), batch_size=batch_size, seed=ctx.seed,
                     rank=ctx.rank, world_size=ctx.world_size)


def epoch_batches(sampler: BatchSampler) -> Callable[[int], Iterator[list[int]]]:
    """The Trainer's ``batches(epoch)``: the sampler's batches, reshuffled for that epoch."""
    def batches(epoch: int) -> Iterator[list[int]]:
        sampler.set_epoch(epoch)
        return iter(sampler)
    return batches
