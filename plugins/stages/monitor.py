"""What a training stage logs with ``train.monitor_every``: how well the model in training tells the validation
writers apart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hvkit.engine import StageContext, TrainConfig
from hvkit.evaluation.roc import RocCounts
from hvkit_plugins.stages.encoder import embed, precise_batchnorm

MAX_IMAGES = 4096
"""Monitor at most this many validation images (a seeded sample): the pairs grow with its square."""


def writer_separation(embeddings: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """``val_auc``: the ROC AUC of the centred cosine over every pair of the images, same-writer pairs
    against different-writer ones (ties count a half); ``val_p1``: the share of images whose most similar
    other image (leave one out) is by their writer, among images whose writer has another. The centre is
    the images' own mean; no labels are fitted, so it reads what the features hold, as a frozen encoder's
    cosine verifier would."""
    z = F.normalize(embeddings.double() - embeddings.double().mean(dim=0), dim=1)
    similarity = (z @ z.T).numpy()
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    upper = np.triu_indices(len(labels), k=1)
    auc = RocCounts.from_scores(similarity[upper], same[upper]).auc()
    np.fill_diagonal(similarity, -np.inf)
    has_other = same.sum(axis=1) > 1
    nearest = similarity.argmax(axis=1)
    return {"val_auc": auc, "val_p1": float((labels[nearest] == labels)[has_other].mean())}


@contextmanager
def batchnorm_statistics_kept(encoder: nn.Module) -> Iterator[None]:
    """Every BatchNorm's buffers (running statistics, batch count) as they were before the block, after it."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{key: t.clone() for key, t in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for key, t in m.named_buffers(recurse=False):
                    t.copy_(buffers[key])


def writer_monitor(encoder: nn.Module, images: torch.Tensor, labels: np.ndarray, device: torch.device,
                   seed: int = 0, statistics_from: torch.Tensor | None = None) -> Callable[[], dict[str, float]]:
    """A monitor for :meth:`~hvkit.engine.Trainer.fit`: :func:`writer_separation` of the encoder's backbone
    features (what a later stage evaluates by default) of the validation ``images``, at most
    :data:`MAX_IMAGES` of them (a sample drawn once by ``seed``). With ``statistics_from`` (the images of a
    stage's ``precise_bn``) each check first re-estimates BatchNorm's running statistics on them as the stage
    does after training (:func:`~hvkit_plugins.stages.encoder.precise_batchnorm`), so it reads the model the
    stage would save, and gives the training its own statistics back afterwards."""
    counts = np.bincount(np.unique(np.asarray(labels), return_inverse=True)[1])
    if len(counts) < 2 or counts.max() < 2:
        raise ValueError(f"train.monitor_every needs validation writers with pairs of both kinds; the val split has "
                         f"{len(counts)} writers, at most {counts.max(initial=0)} images of one")
    if len(images) > MAX_IMAGES:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), MAX_IMAGES, replace=False))
        images, labels = images[torch.as_tensor(keep)], np.asarray(labels)[keep]

    def check() -> dict[str, float]:
        if statistics_from is None:
            return writer_separation(embed(encoder, images, device, "backbone"), labels)
        with batchnorm_statistics_kept(encoder):
            precise_batchnorm(encoder, statistics_from, device)
            return writer_separation(embed(encoder, images, device, "backbone"), labels)

    return check


def stage_monitor(ctx: StageContext, encoder: nn.Module, train: TrainConfig,
                  statistics_from: torch.Tensor | None = None) -> Callable[[], dict[str, float]] | None:
    """The :func:`writer_monitor` of the stage's validation writers when ``train.monitor_every`` is set, else None;
    ``encoder`` is what the stage saves (with ``train.ema`` the Trainer gives it the averaged weights)."""
    if train.monitor_every is None:
        return None
    if "val" not in ctx.dataset.splits:
        raise ValueError(f"train.monitor_every needs validation writers, and the data ({ctx.dataset.name}) has no "
                         "'val' split")
    val = ctx.dataset.splits["val"]
    return writer_monitor(encoder, val.images, val.labels, ctx.device, statistics_from=statistics_from)
