"""SoftTriple loss: a softmax over classes with K centres each (Qian et al., ICCV 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._classifier import check_batch, check_sizes, cosine_matrix
from ._precision import full_precision
from ._proxies import ProxyLoss

MERGE_EPS = 1e-5  # added to the squared centre distance inside the square root, as in the official code


def centre_spread(centres: torch.Tensor) -> torch.Tensor:
    """SoftTriple's regulariser R of the centres (C, K, D): sum_c sum_{k<k'} ||w_ck - w_ck'|| / (C K (K-1)), w unit.

    Each distance is ``sqrt(2 + eps - 2 cos(w_ck, w_ck'))`` with eps = 1e-5 (the official code's;
    it keeps the gradient finite when two centres meet). Only the K x K block of each class
    is formed, by :func:`cosine_matrix`. 0 when K = 1.
    """
    classes, k, _ = centres.shape
    if k < 2:
        return centres.new_zeros(())
    first, second = torch.triu_indices(k, k, offset=1, device=centres.device)
    cosines = cosine_matrix(centres, centres)[:, first, second]  # (C, K (K-1) / 2)
    return torch.sqrt(2 + MERGE_EPS - 2 * cosines).sum() / (classes * k * (k - 1))


class SoftTripleLoss(ProxyLoss):
    """SoftTriple: softmax with margin over relaxed similarities to K centres per class (Qian et al. 2019).

    With x and the centres w_ck L2-normalised, ``s_ck = <x, w_ck>``, y the sample's class:

        S'_c = sum_k softmax_k(s_ck / gamma) s_ck                      (relaxed class similarity)
        l    = -log( exp(la (S'_y - margin)) / (exp(la (S'_y - margin)) + sum_{c != y} exp(la S'_c)) )
        L    = mean_batch(l) + tau * R,   R = sum_c sum_{k<k'} sqrt(2 + 1e-5 - 2 <w_ck, w_ck'>) / (C K (K-1))

    R pulls a class's centres together so that redundant ones merge (:func:`centre_spread`).
    Defaults are the paper's (and pytorch-metric-learning's): K = ``centers_per_class`` = 10,
    lambda = ``la`` = 20, gamma = 0.1, delta = ``margin`` = 0.01, ``tau`` = 0.2. The centres
    (the parameter ``proxies``, (num_classes * K, embedding_dim), row ``c*K + k`` is centre k
    of class c) start uniform in ±1/sqrt(C K), the official code's init; that code trains
    them at 1e-2 against the network's 1e-4: give them theirs with ``train.loss_lr``. K = 1
    gives the normalised softmax with margin. With ``tau=0`` this equals PML's SoftTripleLoss,
    which has no R. A miner is refused. The loss is a batch mean plus a term of the centres
    alone: each rank's share suffices (no global batch). After a call ``terms()`` gives its
    detached ``softmax`` and (unweighted) ``regulariser`` parts.
    """

    loss_name = "soft_triple"

    def __init__(self, embedding_dim: int, num_classes: int, centers_per_class: int = 10, la: float = 20.0,
                 gamma: float = 0.1, margin: float = 0.01, tau: float = 0.2) -> None:
        check_sizes(embedding_dim, num_classes)
        if centers_per_class < 1:
            raise ValueError(f"centers_per_class must be at least 1 (the paper uses 10), got {centers_per_class}")
        if la <= 0:
            raise ValueError(f"la (the softmax scale lambda) must be positive (the paper uses 20), got {la}")
        if gamma <= 0:
            raise ValueError(f"gamma (the centre softmax temperature) must be positive (the paper uses 0.1), "
                             f"got {gamma}")
        if not 0 <= margin < 1:
            raise ValueError(f"margin is a cosine margin in [0, 1) (the paper uses 0.01), got {margin}")
        if tau < 0:
            raise ValueError(f"tau (the centre-merging weight) must be >= 0 (the paper uses 0.2), got {tau}")
        bound = 1 / math.sqrt(num_classes * centers_per_class)
        super().__init__(torch.empty(num_classes * centers_per_class, embedding_dim).uniform_(-bound, bound))
        self.num_classes, self.centers_per_class = num_classes, centers_per_class
        self.la, self.gamma, self.margin, self.tau = la, gamma, margin, tau
        self._terms: dict[str, torch.Tensor] = {}

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise ValueError("soft_triple: SoftTriple compares each sample with the class centres, not with "
                             "mined pairs or triplets: remove the miner")
        check_batch(embeddings, labels, self.embedding_dim, self.num_classes, loss=self.loss_name)
        k = self.centers_per_class
        cos = cosine_matrix(embeddings.to(self.proxies.dtype), self.proxies)  # (B, C K)
        # softmax over k on the (B, K, C) view: on the CPU, 3-4x faster than over a last dim of size K
        per_centre = cos.view(-1, self.num_classes, k).transpose(1, 2)
        relaxed = (torch.softmax(per_centre / self.gamma, dim=1) * per_centre).sum(dim=1)  # (B, C)
        target = F.one_hot(labels, self.num_classes).to(relaxed.dtype)
        softmax = F.cross_entropy(self.la * (relaxed - self.margin * target), labels)
        if self.tau == 0 or k == 1:
            self._terms = {"softmax": softmax.detach()}
            return softmax
        regulariser = centre_spread(self.proxies.view(self.num_classes, k, -1))
        self._terms = {"softmax": softmax.detach(), "regulariser": regulariser.detach()}
        return softmax + self.tau * regulariser

    def class_weights(self) -> torch.Tensor:
        """The centres as (C, K, D), a view of ``proxies``: centre k of class c at [c, k] (``regularized``)."""
        return self.proxies.view(self.num_classes, self.centers_per_class, -1)

    def terms(self) -> dict[str, torch.Tensor]:
        """The last call's detached ``softmax`` part and (unweighted, when computed) ``regulariser`` R."""
        return dict(self._terms)
