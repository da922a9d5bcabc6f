"""Contra-X: cross-entropy plus a supervised contrastive term (Ai, Wang, Tan & Tan, AACL 2022)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hvkit.api import MetricLoss

from ._classifier import check_batch, check_sizes
from .supcon import supcon_loss


def similarity_kl(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Contra-X's released contrastive term: ``KL(softmax(T / tau) || softmax(S / tau))`` row-wise.

    ``S`` is the cosine-similarity matrix and ``T`` the same-label indicator matrix, both with
    their diagonal; the KL divergences of the rows are summed and divided by the batch size.
    """
    z = F.normalize(embeddings, dim=1)
    same_label = (labels[:, None] == labels[None, :]).to(z.dtype)
    log_p = F.log_softmax(z @ z.T / temperature, dim=1)
    log_q = F.log_softmax(same_label / temperature, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


class ContraXLoss(MetricLoss):
    """Contra-X (Ai et al. 2022): cross-entropy of a linear classifier plus weighted supervised contrastive.

    ``L = CE(W z + b, y) + w * L_con(z, y)``: the classifier ``(W, b)`` maps ``embedding_dim`` to
    ``num_classes`` (context arguments) and is a trainable parameter of this loss, so the
    optimiser must include ``loss.parameters()``. ``L_con`` is SupCon (Khosla et al. 2020, see
    :func:`~hvkit_plugins.losses.supcon.supcon_loss`) by default, or ``contrastive: kl`` for the
    released code's variant (:func:`similarity_kl`). Defaults follow the released code:
    ``contrastive_weight`` w = 1, ``temperature`` = 0.1. After a call, ``terms()`` gives its
    detached ``cross_entropy`` and ``contrastive`` parts for logging.
    """

    needs_global_batch = True

    def __init__(self, embedding_dim: int, num_classes: int, contrastive_weight: float = 1.0,
                 temperature: float = 0.1, contrastive: Literal["supcon", "kl"] = "supcon") -> None:
        super().__init__()
        check_sizes(embedding_dim, num_classes)
        if contrastive_weight < 0:
            raise ValueError(f"contra_x: contrastive_weight must be >= 0, got {contrastive_weight}")
        if temperature <= 0:
            raise ValueError(f"contra_x: temperature must be > 0, got {temperature}; try 0.1")
        if contrastive not in ("supcon", "kl"):
            raise ValueError(f"contra_x: contrastive must be 'supcon' or 'kl', got {contrastive!r}")
        self.classifier = nn.Linear(embedding_dim, num_classes)
        self.contrastive_weight = contrastive_weight
        self.temperature = temperature
        self.contrastive = contrastive
        self._terms: dict[str, torch.Tensor] = {}

    def class_weights(self) -> torch.Tensor:
        """The softmax classifier's weight (C, D), for ``regularized``."""
        return self.classifier.weight

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, self.classifier.in_features, self.classifier.out_features)
        if self.contrastive == "kl" and indices_tuple is not None:
            raise ValueError("contra_x: contrastive 'kl' uses every pair and cannot take a miner; "
                             "drop the miner or use contrastive: supcon")
        cross_entropy = F.cross_entropy(self.classifier(embeddings), labels)
        if self.contrastive == "supcon":
            contrastive = supcon_loss(embeddings, labels, self.temperature, indices_tuple)
        else:
            contrastive = similarity_kl(embeddings, labels, self.temperature)
        self._terms = {"cross_entropy": cross_entropy.detach(), "contrastive": contrastive.detach()}
        return cross_entropy + self.contrastive_weight * contrastive

    def terms(self) -> dict[str, torch.Tensor]:
        """The last call's detached ``cross_entropy`` and (unweighted) ``contrastive`` parts."""
        return dict(self._terms)
