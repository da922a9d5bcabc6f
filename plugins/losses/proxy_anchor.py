"""Proxy-Anchor loss: class proxies as anchors of all the batch's samples (Kim et al., CVPR 2020)."""

from __future__ import annotations

import torch
from torch import nn

from ._classifier import check_sizes
from ._precision import full_precision
from ._proxies import ProxyLoss
from .multi_similarity import soft_count


class ProxyAnchorLoss(ProxyLoss):
    """Proxy-Anchor: each class proxy pulls its samples in the batch and pushes the rest (Kim et al. 2020).

    With ``s(x, p)`` the cosine of embedding x and proxy p, ``X_p+`` / ``X_p-`` the batch's
    samples of / not of p's class, ``P+`` the proxies with a sample in the batch and C the
    number of proxies:

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
          + 1/C    sum_{p}       log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))

    Paper defaults: alpha = 32, delta = ``margin`` = 0.1. The proxies (a parameter of the
    loss, (num_classes, embedding_dim)) start as in the official code, Kaiming normal with
    fan-out (std sqrt(2 / C)); that code trains them at 100 times the network's learning rate
    (1e-2 against 1e-4, AdamW): give them theirs with ``train.loss_lr``. Equal to
    pytorch-metric-learning's ProxyAnchorLoss without a miner; a miner is refused here. Each
    proxy's terms sum over the whole batch (``needs_global_batch``).
    """

    loss_name = "proxy_anchor"
    needs_global_batch = True

    def __init__(self, embedding_dim: int, num_classes: int, alpha: float = 32.0,
                 margin: float = 0.1) -> None:
        check_sizes(embedding_dim, num_classes)
        if alpha <= 0:
            raise ValueError(f"alpha must be positive (the paper uses 32), got {alpha}")
        if not 0 <= margin < 1:
            raise ValueError(f"margin is a cosine margin in [0, 1) (the paper uses 0.1), got {margin}")
        super().__init__(nn.init.kaiming_normal_(torch.empty(num_classes, embedding_dim), mode="fan_out"))
        self.alpha, self.margin = alpha, margin

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        cos = self.cosines(embeddings, labels, indices_tuple).T  # (C, B): one row per proxy
        own = torch.arange(self.num_classes, device=labels.device)[:, None] == labels[None, :]
        pull = soft_count(-self.alpha * (cos - self.margin), own)
        push = soft_count(self.alpha * (cos + self.margin), ~own)
        return pull.sum() / own.any(dim=1).sum() + push.sum() / self.num_classes
