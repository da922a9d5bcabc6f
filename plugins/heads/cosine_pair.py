"""The cosine pair verifier: similarity of centred, optionally within-writer-whitened embeddings."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class CosinePair(nn.Module):
    """Pair verifier s(e1, e2) = cos(W(e1 − μ), W(e2 − μ)); no gradient training.

    μ is the mean embedding of the training images — all of them, labelled or not, when ``fit``
    is given ``unlabelled`` — which removes the component shared by every image (it dominates the
    raw cosine of ReLU features); ``centre: false`` keeps μ = 0.

    ``whiten: within_class`` sets W = S^(-1/2) with S = (1 − λ) Σ_w + λ (tr Σ_w / D) I, where
    Σ_w = (1/N) Σ_i (e_i − m_{y_i})(e_i − m_{y_i})ᵀ is the scatter of the labelled embeddings about
    their writer's mean: within-class covariance normalisation (WCCN, Hatch, Kajarekar & Stolcke
    2006, "Within-class covariance normalization for SVM-based speaker recognition"). Directions in
    which one writer's samples vary are shrunk, so the cosine weighs what separates writers. The
    shrinkage λ ∈ [0, 1] regularises Σ_w, estimated from few writers; with λ = 0 the scores are
    invariant to any invertible linear map of the embeddings. ``whiten: none`` keeps W = I.
    The decision threshold is chosen on validation writers by the verification evaluator.
    """

    pair_verifier = True

    def __init__(self, in_dim: int, centre: bool = True,
                 whiten: Literal["none", "within_class"] = "none", shrinkage: float = 0.5):
        super().__init__()
        if whiten not in ("none", "within_class"):
            raise ValueError(f"cosine_pair: whiten={whiten!r} must be 'none' or 'within_class'")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"cosine_pair: shrinkage={shrinkage} must lie in [0, 1]")
        self.centre, self.whiten, self.shrinkage = centre, whiten, shrinkage
        self.out_dim = 1
        self.register_buffer("mean", torch.zeros(in_dim))
        if whiten == "within_class":
            self.register_buffer("transform", torch.eye(in_dim))

    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
            unlabelled: torch.Tensor | None = None) -> "CosinePair":
        """μ from ``unlabelled`` (else ``embeddings``); W from the labelled ``embeddings`` and ``labels``."""
        device = self.mean.device
        if self.centre:
            reference = unlabelled if unlabelled is not None and len(unlabelled) else embeddings
            self.mean = reference.double().mean(dim=0).float().to(device)
        if self.whiten == "within_class":
            if labels is None:
                raise ValueError("cosine_pair: whiten='within_class' needs the writer labels of the embeddings")
            self.transform = within_class_whitening(embeddings, torch.as_tensor(labels), self.shrinkage).to(device)
        return self

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        a, b = e1 - self.mean, e2 - self.mean
        if self.whiten == "within_class":
            a, b = a @ self.transform, b @ self.transform
        return F.cosine_similarity(a, b, dim=1)


def within_class_whitening(embeddings: torch.Tensor, labels: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """S^(-1/2) (symmetric) of the shrunk within-class scatter S = (1 − λ) Σ_w + λ (tr Σ_w / D) I, in float64."""
    x = embeddings.double()
    _, group = torch.unique(labels.long(), return_inverse=True)
    counts = torch.bincount(group).double()
    means = torch.zeros(len(counts), x.shape[1], dtype=x.dtype).index_add_(0, group, x) / counts[:, None]
    residual = x - means[group]
    scatter = residual.T @ residual / len(x)
    dim = scatter.shape[0]
    level = scatter.trace() / dim
    if not level > 0:
        raise ValueError("cosine_pair: the labelled embeddings do not vary within any writer "
                         "(every writer has one sample, or the embeddings are constant)")
    shrunk = (1.0 - shrinkage) * scatter + shrinkage * level * torch.eye(dim, dtype=x.dtype)
    values, vectors = torch.linalg.eigh(shrunk)
    floor = values.max() * dim * torch.finfo(x.dtype).eps
    if not values.min() > floor:
        raise ValueError(f"cosine_pair: the within-class scatter is singular (rank {int((values > floor).sum())} "
                         f"of {dim}); use shrinkage > 0")
    return ((vectors / values.sqrt()) @ vectors.T).float()


class WCCNPair(CosinePair):
    """``cosine_pair`` with within-class covariance normalisation on by default (WCCN cosine scoring)."""

    def __init__(self, in_dim: int, centre: bool = True,
                 whiten: Literal["none", "within_class"] = "within_class", shrinkage: float = 0.5):
        super().__init__(in_dim, centre=centre, whiten=whiten, shrinkage=shrinkage)
