"""Shared part of the proxy losses: one learnable proxy per class, compared with the embeddings by cosine."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from hvkit.api import MetricLoss

from ._classifier import check_batch, cosine_matrix


class ProxyLoss(MetricLoss):
    """Base of the losses with one proxy per class: the parameter ``proxies`` (num_classes, embedding_dim).

    :meth:`cosines` checks a batch and gives its (B, C) cosines with the proxies, in the
    proxies' dtype (the embeddings are cast to it, never the proxies to the embeddings'). A
    proxy loss compares each sample with the proxies, not with other samples, so a miner's
    ``indices_tuple`` is refused.
    """

    loss_name: ClassVar[str]

    def __init__(self, proxies: torch.Tensor) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim = proxies.shape
        self.proxies = nn.Parameter(proxies)

    def check(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None) -> None:
        """Raise ValueError for a miner's tuple or a batch of the wrong shape or labels."""
        if indices_tuple is not None:
            raise ValueError(f"{self.loss_name}: a proxy loss compares each sample with the class proxies, "
                             "not with mined pairs or triplets: remove the miner")
        check_batch(embeddings, labels, self.embedding_dim, self.num_classes, loss=self.loss_name)

    def cosines(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None) -> torch.Tensor:
        """(B, C) cosine similarities of the embeddings with the proxies (:func:`cosine_matrix`), after checking the
        batch."""
        self.check(embeddings, labels, indices_tuple)
        return cosine_matrix(embeddings.to(self.proxies.dtype), self.proxies)

    def class_weights(self) -> torch.Tensor:
        """The proxies (C, D), one row per class (per group of classes for ``manifold``), for ``regularized``."""
        return self.proxies
