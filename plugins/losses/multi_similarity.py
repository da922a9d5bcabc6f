"""Multi-similarity loss with its own pair mining (Wang et al., CVPR 2019)."""

from __future__ import annotations

import torch

from hvkit.api import MetricLoss

from ._pairs import cosine_similarities, label_masks, reference_set, tuple_masks


def hard_pairs(similarity: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
               epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-similarity mining of (B, R) ``similarity``: of the ``positive`` / ``negative`` pair masks, each
    anchor's positives with ``S_ip - epsilon < max_n S_in`` and negatives with ``S_in + epsilon > min_p S_ip``
    (Wang et al. 2019); none of either for an anchor without the other kind."""
    with torch.no_grad():
        hardest_negative = similarity.masked_fill(~negative, float("-inf")).amax(1, keepdim=True)
        hardest_positive = similarity.masked_fill(~positive, float("inf")).amin(1, keepdim=True)
        return (positive & (similarity - epsilon < hardest_negative),
                negative & (similarity + epsilon > hardest_positive))


def soft_count(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log(1 + sum_{mask} exp(values))``; 0 for a row with nothing in the mask."""
    values = values.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(torch.cat([values, values.new_zeros(len(values), 1)], dim=1), dim=1)


class MultiSimilarityLoss(MetricLoss):
    """Multi-similarity loss with its own epsilon pair mining (Wang et al. 2019).

    With ``S`` the cosine similarities of the batch and, for anchor i, ``P_i`` / ``N_i`` its
    kept positive / negative pairs:

        L = 1/B sum_i [ 1/alpha log(1 + sum_{p in P_i} exp(-alpha (S_ip - base)))
                      + 1/beta  log(1 + sum_{n in N_i} exp( beta (S_in - base))) ]

    Mining (``mining=True`` and no ``indices_tuple``) keeps the negatives with
    ``S_in + epsilon > min_p S_ip`` and the positives with ``S_ip - epsilon < max_n S_in``,
    as pytorch-metric-learning's MultiSimilarityMiner followed by its MultiSimilarityLoss
    (which this equals), in one pass without sorting. With ``mining=False`` every pair is
    kept; a given ``indices_tuple`` (pairs or triplets) replaces the mining. With a reference
    set (``ref_emb``, ``ref_labels``) S is the (B, R) batch-to-reference matrix, mined the same
    way, and the mean is still over the B anchors (as PML's miner and loss given it). Defaults
    alpha 2, beta 50, base 0.5, epsilon 0.1 are the paper's; the official code uses beta 40.
    Unlike the official code, an anchor whose mined positives or negatives are empty still
    contributes its other term (the paper's formula, and PML's rule).
    """

    needs_global_batch = True  # mining pairs or triplets is a batch-level operation
    accepts_reference = True

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 epsilon: float = 0.1, mining: bool = True) -> None:
        super().__init__()
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be positive (the paper uses 2 and 50), got "
                             f"alpha={alpha}, beta={beta}")
        if epsilon < 0:
            raise ValueError(f"epsilon must be non-negative (the paper uses 0.1), got {epsilon}")
        self.alpha, self.beta, self.base, self.epsilon, self.mining = alpha, beta, base, epsilon, mining

    def pair_masks(self, similarity: torch.Tensor, labels: torch.Tensor, ref_labels: torch.Tensor, is_batch: bool,
                   indices_tuple: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean (B, R) masks of the positive and negative pairs the loss uses."""
        if indices_tuple is not None:
            return tuple_masks(indices_tuple, labels, similarity.shape[1])
        positive, negative = label_masks(labels, ref_labels, is_batch)
        if self.mining:
            return hard_pairs(similarity, positive, negative, self.epsilon)
        return positive, negative

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("multi_similarity", embeddings, labels, ref_emb, ref_labels)
        similarity = cosine_similarities(embeddings, ref_emb)
        positive, negative = self.pair_masks(similarity, labels, ref_labels, is_batch, indices_tuple)
        positive_term = soft_count(-self.alpha * (similarity - self.base), positive) / self.alpha
        negative_term = soft_count(self.beta * (similarity - self.base), negative) / self.beta
        return (positive_term + negative_term).mean()
