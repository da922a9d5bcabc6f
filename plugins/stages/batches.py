"""Where a training stage's batches come from: its images, its sampler, the sampler's order each epoch.

A sampler may learn from the model (``needs_embeddings``, see :class:`hvkit.api.BatchSampler`):
:func:`sampler_batches` then shows it the current embeddings before each ``refresh_every``-th epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hvkit import distributed
from hvkit.api import BatchSampler
from hvkit.engine import StageContext
from hvkit.errors import RecipeError
from hvkit.registry import Registry


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
    """The recipe's sampler over ``count`` unlabelled images (each its own label), sharded for this process.

    A sampler that ``needs_embeddings`` of labelled writers (``hard_class``) is a ValueError here.
    """
    sampler = ctx.build("sampler", spec, labels=np.arange(count), batch_size=batch_size, seed=ctx.seed,
                        rank=ctx.rank, world_size=ctx.world_size)
    if getattr(sampler, "needs_embeddings", False):
        raise ValueError(_learns_from_writers(spec if isinstance(spec, str) else spec["name"]))
    return sampler


def check_image_sampler(spec: dict[str, Any], earlier: dict[str, Any], registry: Registry) -> None:
    """``check_recipe`` of a stage whose ``sampler`` draws unlabelled images: refuses, at ``hvkit validate``,
    a sampler that ``needs_embeddings`` of labelled writers."""
    name = spec["sampler"]["name"]
    if getattr(registry.get("sampler", name).factory, "needs_embeddings", False):
        raise RecipeError(_learns_from_writers(name), path="sampler")


def _learns_from_writers(name: str) -> str:
    return (f"sampler {name} learns from the embeddings of labelled writers (needs_embeddings), which only "
            "metric_train gives it; use random or pk for unlabelled images")


def epoch_batches(sampler: BatchSampler) -> Callable[[int], Iterator[list[int]]]:
    """The Trainer's ``batches(epoch)``: the sampler's batches, reshuffled for that epoch."""
    def batches(epoch: int) -> Iterator[list[int]]:
        sampler.set_epoch(epoch)
        return iter(sampler)
    return batches


def sampler_batches(ctx: StageContext, sampler: BatchSampler, embed: Callable[[], torch.Tensor]
                    ) -> tuple[Callable[[int], Iterator[list[int]]], dict[str, nn.Module]]:
    """The Trainer's ``batches(epoch)`` for any sampler, and the modules its checkpoints must add.

    A sampler with ``needs_embeddings`` is shown, before each epoch whose index is a multiple of
    its ``refresh_every``, ``embed()`` (N, D) of the images its labels index, L2-normalised:
    computed on rank 0 alone and broadcast, so every rank draws the same batches. The returned
    ``{"sampler": module}`` checkpoints the sampler's ``state_dict()`` and the epoch it last
    observed, so a run resumed inside an epoch draws that epoch's batches again; one resumed at
    an epoch boundary recomputes them from the resumed weights, as the run it continues did.
    Any other sampler: :func:`epoch_batches` and no module.
    """
    ordered = epoch_batches(sampler)
    if not getattr(sampler, "needs_embeddings", False):
        return ordered, {}
    state = _ObservedSampler(sampler)

    def batches(epoch: int) -> Iterator[list[int]]:
        if epoch % sampler.refresh_every == 0 and state.epoch != epoch:
            emb = F.normalize(embed().float(), dim=1).cpu().numpy() if ctx.is_main else None
            emb = distributed.broadcast_object(emb)
            sampler.observe_embeddings(emb)
            state.epoch = epoch
            ctx.log(f"epoch {epoch}: the sampler observed the embeddings of {len(emb)} images")
        return ordered(epoch)
    return batches, {"sampler": state}


class _ObservedSampler(nn.Module):
    """A model-aware sampler's checkpointed state: the epoch it last observed embeddings and its ``state_dict()``."""

    def __init__(self, sampler: Any) -> None:
        super().__init__()
        self.sampler, self.epoch = sampler, -1

    def get_extra_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch,
                "state": {k: torch.as_tensor(v) for k, v in self.sampler.state_dict().items()}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.sampler.load_state_dict({k: v.cpu().numpy() for k, v in state["state"].items()})
