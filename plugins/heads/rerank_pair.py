"""The re-ranked pair verifier: a cosine verifier's pairs rescored by k-reciprocal neighbourhoods of their set."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hvkit.api import Component
from hvkit.index.rerank import check_settings, k_reciprocal_scores


class RerankPair(nn.Module):
    """Pair verifier: k-reciprocal re-ranking (Zhong et al. 2017) in the space of a cosine verifier.

    ``base`` (a verifier with an embedding space: ``cosine_pair``, ``wccn_pair``, ``pcaw_pair``) is
    fitted as usual; the pairs of a set of images are then scored by ``1 − d*``, where ``d*`` mixes
    the Jaccard distance of the two images' k-reciprocal neighbourhoods *within that set* with
    their squared distance in the base's space (weight ``weight``; :func:`~hvkit.index.rerank.
    k_reciprocal_scores`). Two images whose neighbours are the same images — another sample of
    the same hand — score higher than their cosine alone says. Defaults are the paper's (k1 = 20,
    k2 = 6, λ = 0.3); Jordan et al. 2020 re-rank writer retrieval the same way.

    Transductive: a pair's score depends on the other images of its split (the test writers'
    for the test pairs, the validation writers' for the threshold), so it scores a set of
    pairs, never two images alone.
    """

    pair_verifier = True

    def __init__(self, in_dim: int, base: Component["head"] = "wccn_pair", k1: int = 20, k2: int = 6,
                 weight: float = 0.3):
        super().__init__()
        if not hasattr(base, "embed"):
            raise ValueError(f"rerank_pair: base verifier {type(base).__name__} has no embedding space to re-rank "
                             "in; use cosine_pair, wccn_pair or pcaw_pair")
        check_settings(k1, k2, weight, "rerank_pair")
        self.base, self.k1, self.k2, self.weight = base, k1, k2, weight
        self.out_dim = 1

    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
            unlabelled: torch.Tensor | None = None) -> "RerankPair":
        """Fits the base verifier (its mean, and its whitening if any)."""
        self.base.fit(embeddings, labels, unlabelled)
        return self

    def score_pairs(self, embeddings: torch.Tensor, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Re-ranked score of each pair ``(first[n], second[n])`` among all rows of ``embeddings``."""
        device = next(iter(self.base.buffers()), torch.empty(0)).device
        with torch.no_grad():
            space = self.base.embed(embeddings.to(device)).float()
        return k_reciprocal_scores(space, np.stack([first, second], axis=1), k1=self.k1, k2=self.k2,
                                   weight=self.weight, device=str(device)).astype(np.float32)

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("rerank_pair scores pairs within a set of images (score_pairs); two embeddings alone "
                           "have no neighbourhood")
