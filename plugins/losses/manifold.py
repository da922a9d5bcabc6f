"""Manifold loss: an N-pair loss on random-walk manifold similarities to proxies (Aziere & Todorovic, "Ensemble Deep
Manifold Similarity Learning using Hard Proxies", CVPR 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._classifier import check_batch, check_sizes, cosine_matrix
from ._pairs import masked_logsumexp
from ._precision import full_precision
from ._proxies import ProxyLoss

AFFINITY_TEMPERATURE = 0.5  # exp(cos / 0.5), PML's (and the paper's Gaussian-like) edge weight


def hinged_softplus(scores: torch.Tensor, own: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over rows of ``log(1 + sum_j exp(z_j))``, ``z_j = scores_j - scores_own + margin`` over the j != own with
    ``z_j >= 0`` (the other terms are dropped, not counted as exp(0)); 0 for a row with none."""
    z = scores - scores.gather(1, own[:, None]) + margin
    keep = (z >= 0) & (torch.arange(scores.shape[1], device=own.device) != own[:, None])
    total, any_kept = masked_logsumexp(z, keep)
    return (F.softplus(total) * any_kept).mean()


class ManifoldLoss(ProxyLoss):
    """Manifold loss: samples and proxies as one graph, similarities by a closed-form random walk (Aziere & Todorovic).

    The batch's n embeddings and the K proxies, L2-normalised, are the nodes of a graph with
    edge weights ``W_ij = exp(max(cos_ij, 0) / 0.5)`` (W_ii = 0). With ``S = D^-1/2 W D^-1/2``
    (D the degrees) the random walk with restart ``alpha`` converges to the manifold similarities

        M = (1 - alpha) (I - alpha S)^-1                                  ((n + K) x (n + K))

    Each sample i belongs to one meta-class m_i, whose proxy it should be closest to. With
    ``M_ik`` its similarity to proxy k (intrinsic) and ``C_ik`` the cosine of M's rows of
    sample i and proxy k (context), each gives the N-pair-like term

        l_i = log(1 + sum_{k != m_i, z_k >= 0} exp(z_k)),   z_k = s_ik - s_im_i + margin

    (the terms with z_k < 0 dropped), and L = mean_i l^M_i + ``lambda_c`` mean_i l^C_i.
    The meta-classes follow the paper's ensemble learners (after Xuan et al. 2018): the
    classes are split at random into ``num_proxies`` groups of (nearly) equal size, drawn
    once from the global generator when the loss is built and kept as the buffer
    ``meta_classes`` (num_classes,); by default there is one proxy per class and no
    grouping. The proxies (the parameter ``proxies``, (K, embedding_dim), float32) start
    standard normal as in PML; give them their own rate with ``train.loss_lr``. The paper's
    hard-proxy estimation is left out, as in PML. Equal, value and gradient, to
    pytorch-metric-learning's ManifoldLoss given the same proxies and these meta-classes as
    its ``indices_tuple`` (PML ignores labels and draws a meta-class per sample, per call, at
    random); PML inverts in float32 even for float64 input, this in the input's precision, by
    a Cholesky factorisation (I - alpha S is symmetric positive definite). Defaults alpha 0.8,
    margin 5e-4, lambda_c 1: PML's. A miner is refused. The graph spans the whole batch
    (``needs_global_batch``).
    """

    loss_name = "manifold"
    needs_global_batch = True

    def __init__(self, embedding_dim: int, num_classes: int, num_proxies: int | None = None, lambda_c: float = 1.0,
                 alpha: float = 0.8, margin: float = 5e-4) -> None:
        check_sizes(embedding_dim, num_classes, loss=self.loss_name)
        if num_proxies is not None and num_proxies < 2:
            raise ValueError(f"manifold: num_proxies must be at least 2 (each proxy a group of classes; default one "
                             f"per class), got {num_proxies}")
        if num_proxies is not None and num_proxies > num_classes:
            raise ValueError(f"manifold: num_proxies = {num_proxies} exceeds num_classes = {num_classes} (each proxy a "
                             "group of classes)")
        k = num_classes if num_proxies is None else num_proxies
        if not (lambda_c >= 0 and math.isfinite(lambda_c)):
            raise ValueError(f"manifold: lambda_c (the context term's weight) must be finite and >= 0 (default 1), "
                             f"got {lambda_c}")
        if not 0 < alpha < 1:
            raise ValueError(f"manifold: alpha (the random walk's continuation) must lie in (0, 1) (default 0.8), "
                             f"got {alpha}")
        if margin < 0:
            raise ValueError(f"manifold: margin must be >= 0 (default 5e-4), got {margin}")
        super().__init__(torch.randn(k, embedding_dim))
        self.num_classes, self.num_proxies = num_classes, k
        self.lambda_c, self.alpha, self.margin = lambda_c, alpha, margin
        groups = torch.arange(num_classes)  # one proxy per class, or a random split into k (nearly) equal groups
        if k < num_classes:
            groups[torch.randperm(num_classes)] = torch.arange(num_classes) % k
        self.register_buffer("meta_classes", groups)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise ValueError("manifold: the manifold loss compares each sample with the proxies of its meta-class, "
                             "not mined pairs or triplets: remove the miner")
        check_batch(embeddings, labels, self.embedding_dim, self.num_classes, loss=self.loss_name)
        n = len(embeddings)
        nodes = torch.cat([embeddings.to(self.proxies.dtype), self.proxies])
        eye = torch.eye(len(nodes), dtype=torch.bool, device=nodes.device)
        affinity = torch.exp(cosine_matrix(nodes, nodes).clamp(min=0) / AFFINITY_TEMPERATURE).masked_fill(eye, 0)
        scale = affinity.sum(dim=1).rsqrt()
        walk = eye.to(nodes.dtype) - self.alpha * (affinity * scale[:, None] * scale[None, :])
        similarity = (1 - self.alpha) * torch.cholesky_inverse(torch.linalg.cholesky(walk))
        own = self.meta_classes[labels]
        intrinsic = hinged_softplus(similarity[:n, n:], own, self.margin)
        context = cosine_matrix(similarity[:n], similarity[n:])
        return intrinsic + self.lambda_c * hinged_softplus(context, own, self.margin)
