"""Multi-similarity pair mining (Wang et al., CVPR 2019)."""

from __future__ import annotations

import torch
from torch import nn

from hvkit_plugins.losses._pairs import label_masks
from hvkit_plugins.losses.multi_similarity import hard_pairs

from ._distances import pair_matrix, partners


def _by_similarity(mask: torch.Tensor, similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (row, column) pairs of ``mask``, row by row, each row's by ascending ``similarity`` (a stable sort:
    equal values in column order)."""
    rows, cols = torch.where(mask)
    order = torch.sort(similarity[rows, cols], stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    return rows[order], cols[order]


class MultiSimilarityMiner(nn.Module):
    """Multi-similarity pair mining (Wang et al. 2019) on cosine similarity, epsilon 0.1.

    With S the cosine similarity, keeps the negative pairs with ``S_an + epsilon > min_p S_ap``
    and the positive pairs with ``S_ap - epsilon < max_n S_an`` of each anchor and returns them
    as ``(a1, p, a2, n)`` ("Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning"); pair it with the ``multi_similarity`` loss, which mines the same pairs itself
    when given none. The pairs, and their order (by anchor, then by ascending S), are those of
    pytorch-metric-learning's MultiSimilarityMiner, found by two masked reductions of S where PML
    sorts every row twice.

    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the anchors are the batch's rows and
    their pairs' partners the reference's, (i, i) included: PML's own mining given that reference.
    """

    accepts_reference = True

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        if epsilon < 0:
            raise ValueError(f"epsilon must be non-negative, got {epsilon}")
        self.epsilon = epsilon

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("multi_similarity", embeddings, labels, ref_emb, ref_labels)
        similarity = pair_matrix(embeddings, "cosine", True, reference)
        positive, negative = hard_pairs(similarity, *label_masks(labels.to(similarity.device), ref_labels, is_batch),
                                        self.epsilon)
        return *_by_similarity(positive, similarity), *_by_similarity(negative, similarity)
