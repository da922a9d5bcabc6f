"""A weighted sum of metric losses (pytorch-metric-learning's MultipleLosses), to pair a loss with a regulariser."""

from __future__ import annotations

import torch
from torch import nn

from hvkit.api import Component, MetricLoss


class WeightedSumLoss(MetricLoss):
    """Weighted sum of metric losses: ``L = sum_k w_k L_k(embeddings, labels, indices_tuple)``.

    ``losses`` are loss specs (``[tuplet_margin, {name: intra_pair_variance, pos_eps: 0.01}]``),
    each built with the stage's context (``embedding_dim``, ``num_classes``), so a proxy or
    classifier loss may be one; their parameters are this loss's. ``weights`` (default all 1)
    has one number per loss. Each loss gets the same batch and the stage's miner tuple (PML's
    per-loss miners are left out). ``needs_global_batch`` if any loss needs it, ``reads_norms`` if any
    reads them (every loss then gets the embeddings a stage would otherwise normalise as they are); ``terms()``
    gives each part's last detached value, unweighted, keyed ``<position>_<class name>``. Equal
    to PML's MultipleLosses with a list of losses and weights.
    """

    def __init__(self, losses: list[Component["loss"]], weights: list[float] | None = None) -> None:
        super().__init__()
        if not losses:
            raise ValueError("weighted_sum: losses must name at least one loss")
        for loss in losses:
            if not isinstance(loss, MetricLoss):
                raise ValueError(f"weighted_sum: losses must be metric losses (embeddings, labels), got "
                                 f"{type(loss).__name__}")
        weights = [1.0] * len(losses) if weights is None else list(weights)
        if len(weights) != len(losses):
            raise ValueError(f"weighted_sum: weights must have one number per loss ({len(losses)}), "
                             f"got {len(weights)}")
        self.losses = nn.ModuleList(losses)
        self.weights = weights
        self.needs_global_batch = any(loss.needs_global_batch for loss in losses)
        self.reads_norms = any(loss.reads_norms for loss in losses)
        self._terms: dict[str, torch.Tensor] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        parts = [loss(embeddings, labels, indices_tuple) for loss in self.losses]
        self._terms = {f"{k}_{type(loss).__name__}": part.detach()
                       for k, (loss, part) in enumerate(zip(self.losses, parts))}
        return sum(w * part for w, part in zip(self.weights, parts))

    def terms(self) -> dict[str, torch.Tensor]:
        """The last call's detached, unweighted value of each loss."""
        return dict(self._terms)
