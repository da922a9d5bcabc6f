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
    raw cosine of ReLU features); ``centre: false`` keeps μ = 0. ``centre: each`` subtracts instead
    each embedding's own mean over its dimensions: the score is then Pearson's correlation of the
    two vectors (:class:`CorrelationPair`).

    ``whiten: within_class`` sets W = S^(-1/2) with S = (1 − λ) Σ_w + λ (tr Σ_w / D) I, where
    Σ_w = (1/N) Σ_i (e_i − m_{y_i})(e_i − m_{y_i})ᵀ is the scatter of the labelled embeddings about
    their writer's mean: within-class covariance normalisation (WCCN, Hatch, Kajarekar & Stolcke
    2006, "Within-class covariance normalization for SVM-based speaker recognition"). Directions in
    which one writer's samples vary are shrunk, so the cosine weighs what separates writers. The
    shrinkage λ ∈ [0, 1] regularises Σ_w, estimated from few writers; with λ = 0 the scores are
    invariant to any invertible linear map of the embeddings. ``whiten: none`` keeps W = I.

    ``whiten: total`` takes S from the covariance Σ_t of every training image about μ (no
    labels: PCA whitening, Jégou & Chum 2012), shrunk the same way. ``power`` p (for either
    whitening) sets W = S^(−p/2): 1 whitens fully, 0.5 flattens the spectrum half-way in log
    scale (each principal direction scaled by λ^(−1/4)), 0 keeps W = I. Self-supervised
    features put most of their variance in a few directions (the backbone's dimensional
    collapse, Jing et al. 2022); a partial flattening lets the rest count without amplifying
    noise as full whitening does. The decision threshold is chosen on validation writers by
    the verification evaluator.
    """

    pair_verifier = True

    def __init__(self, in_dim: int, centre: bool | Literal["each"] = True,
                 whiten: Literal["none", "within_class", "total"] = "none", shrinkage: float = 0.5,
                 power: float = 1.0):
        super().__init__()
        if whiten not in ("none", "within_class", "total"):
            raise ValueError(f"cosine_pair: whiten={whiten!r} must be 'none', 'within_class' or 'total'")
        if centre not in (True, False, "each"):
            raise ValueError(f"cosine_pair: centre={centre!r} must be true, false or 'each'")
        if centre == "each" and whiten != "none":
            raise ValueError(f"cosine_pair: centre='each' (Pearson's correlation) takes whiten='none', "
                             f"not whiten={whiten!r}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"cosine_pair: shrinkage={shrinkage} must lie in [0, 1]")
        if not 0.0 <= power <= 1.0:
            raise ValueError(f"cosine_pair: power={power} must lie in [0, 1] (1 whitens fully, 0 not at all)")
        self.centre, self.whiten, self.shrinkage, self.power = centre, whiten, shrinkage, power
        self.out_dim = 1
        self.register_buffer("mean", torch.zeros(in_dim))
        if whiten != "none":
            self.register_buffer("transform", torch.eye(in_dim))

    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
            unlabelled: torch.Tensor | None = None) -> "CosinePair":
        """μ and Σ_t from ``unlabelled`` (else ``embeddings``); Σ_w from the labelled ``embeddings``, ``labels``."""
        device = self.mean.device
        reference = unlabelled if unlabelled is not None and len(unlabelled) else embeddings
        if self.centre is True:
            self.mean = reference.double().mean(dim=0).float().to(device)
        if self.whiten == "within_class":
            if labels is None:
                raise ValueError("cosine_pair: whiten='within_class' needs the writer labels of the embeddings")
            self.transform = within_class_whitening(embeddings, torch.as_tensor(labels), self.shrinkage,
                                                    self.power).to(device)
        elif self.whiten == "total":
            residual = reference.double() - self.mean.double().cpu()
            self.transform = scatter_whitening(residual.T @ residual / len(residual), self.shrinkage, self.power,
                                               "the training embeddings do not vary").to(device)
        return self

    def embed(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``W(e − μ)`` per row: the space whose cosine this verifier scores."""
        if self.centre == "each":
            return embeddings - embeddings.mean(dim=1, keepdim=True)
        centred = embeddings - self.mean
        return centred @ self.transform if self.whiten != "none" else centred

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(self.embed(e1), self.embed(e2), dim=1)


def within_class_whitening(embeddings: torch.Tensor, labels: torch.Tensor, shrinkage: float,
                           power: float = 1.0) -> torch.Tensor:
    """S^(−power/2) of the shrunk within-class scatter about each writer's mean (:func:`scatter_whitening`)."""
    x = embeddings.double()
    _, group = torch.unique(labels.long(), return_inverse=True)
    counts = torch.bincount(group).double()
    means = torch.zeros(len(counts), x.shape[1], dtype=x.dtype).index_add_(0, group, x) / counts[:, None]
    residual = x - means[group]
    return scatter_whitening(residual.T @ residual / len(x), shrinkage, power,
                             "the labelled embeddings do not vary within any writer "
                             "(every writer has one sample, or the embeddings are constant)")


def scatter_whitening(scatter: torch.Tensor, shrinkage: float, power: float, flat: str) -> torch.Tensor:
    """S^(−power/2) (symmetric) of S = (1 − λ) scatter + λ (tr scatter / D) I, in float64.

    ``flat`` is the error's reason when the scatter's trace is zero.
    """
    dim = scatter.shape[0]
    level = scatter.trace() / dim
    if not level > 0:
        raise ValueError(f"cosine_pair: {flat}")
    shrunk = (1.0 - shrinkage) * scatter + shrinkage * level * torch.eye(dim, dtype=scatter.dtype)
    values, vectors = torch.linalg.eigh(shrunk)
    floor = values.max() * dim * torch.finfo(scatter.dtype).eps
    if not values.min() > floor:
        raise ValueError(f"cosine_pair: the scatter is singular (rank {int((values > floor).sum())} "
                         f"of {dim}); use shrinkage > 0")
    return ((vectors * values.pow(-power / 2)) @ vectors.T).float()


class WCCNPair(CosinePair):
    """``cosine_pair`` with within-class covariance normalisation on by default (WCCN cosine scoring)."""

    def __init__(self, in_dim: int, centre: bool = True,
                 whiten: Literal["none", "within_class", "total"] = "within_class", shrinkage: float = 0.5,
                 power: float = 1.0):
        super().__init__(in_dim, centre=centre, whiten=whiten, shrinkage=shrinkage, power=power)


class CorrelationPair(CosinePair):
    """Pearson's correlation of two feature vectors, r = cos(e1 − ē1 1, e2 − ē2 1), ē the mean of a
    vector's own D values (``cosine_pair`` with ``centre: each``); nothing is fitted.

    On binary vectors r is the φ coefficient (s11 s00 − s10 s01) / √((s10 + s11)(s01 + s00)(s11 + s01)(s00 + s10)),
    s_ab counting the dimensions where e1 has bit a and e2 bit b. The correlation dissimilarity
    (1 − φ) / 2 is the measure Zhang & Srihari (2003, "Binary vector dissimilarity measures for
    handwriting identification") found best for GSC's bits, and CEDAR-FOX's: with ``features: gsc``
    and ``feature_options: {binary: 0}`` this verifier scores pairs as CEDAR-FOX's GSC does.
    """

    def __init__(self, in_dim: int, centre: bool | Literal["each"] = "each",
                 whiten: Literal["none", "within_class", "total"] = "none", shrinkage: float = 0.5,
                 power: float = 1.0):
        super().__init__(in_dim, centre=centre, whiten=whiten, shrinkage=shrinkage, power=power)


class PCAWPair(CosinePair):
    """``cosine_pair`` after a half-way PCA whitening of every training image's covariance (no labels).

    W = S^(−1/4), S = 0.99 Σ_t + 0.01 (tr Σ_t / D) I: the cosine of centred embeddings whose
    principal directions are each scaled by λ^(−1/4) (``whiten: total``, ``power: 0.5``).
    """

    def __init__(self, in_dim: int, centre: bool = True,
                 whiten: Literal["none", "within_class", "total"] = "total", shrinkage: float = 0.01,
                 power: float = 0.5):
        super().__init__(in_dim, centre=centre, whiten=whiten, shrinkage=shrinkage, power=power)
