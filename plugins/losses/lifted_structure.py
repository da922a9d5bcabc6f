"""Lifted structured loss (Oh Song et al., CVPR 2016) and its generalised form (Hermans et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss

from ._pairs import euclidean_distances, label_masks, masked_logsumexp, pair_counts, reference_set, tuple_masks


def _check_margins(name: str, pos_margin: float, neg_margin: float) -> None:
    if pos_margin < 0 or neg_margin <= pos_margin:
        raise ValueError(f"{name}: need 0 <= pos_margin < neg_margin, got pos_margin={pos_margin}, "
                         f"neg_margin={neg_margin} (defaults 0 and 1)")


def _pairs(indices_tuple: tuple, labels: torch.Tensor, name: str) -> tuple[torch.Tensor, ...]:
    """A miner's pairs ``(a1, p, a2, n)``, triplets split into pairs (PML's ``convert_to_pairs``)."""
    if len(indices_tuple) not in (3, 4):
        raise ValueError(f"{name}: indices_tuple must be a miner's triplets (a, p, n) or pairs (a1, p, a2, n), "
                         f"got a tuple of {len(indices_tuple)}")
    return lmu.convert_to_pairs(indices_tuple, labels)


class LiftedStructureLoss(MetricLoss):
    """Lifted structured loss, the paper's smooth form (Oh Song, Xiang, Jegelka & Savarese, CVPR 2016).

    With D the Euclidean distance (of L2-normalised embeddings unless ``normalize_embeddings``
    is off; the paper does not normalise, nor must a ``metric_train`` stage then: ``normalize:
    false``), for each positive pair (i, j)

        J_ij = log( sum_{k in N(i)} exp(m_neg - D_ik) + sum_{l in N(j)} exp(m_neg - D_jl) ) + D_ij - m_pos
        L    = 1/(2|P|) sum_{(i,j) in P} max(0, J_ij)^2

    N(i) the samples of another writer than i, P the unordered positive pairs (each ordered pair
    counted once with weight 1/2: the same mean). The paper's alpha is ``neg_margin`` (1) and has
    no ``pos_margin`` (0). Pairs are every pair of the batch, or a miner's ``indices_tuple``
    (triplets split into pairs): then N(i) holds the mined negative pairs anchored at i, and a
    positive pair with none contributes ``max(0, D_ij - m_pos)^2 / 2``. Equal to
    pytorch-metric-learning's LiftedStructureLoss with ``LpDistance``; one log-sum-exp per sample
    instead of PML's (positive pairs x negative pairs) matrix.
    """

    needs_global_batch = True  # pairs are a batch-level construction

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, normalize_embeddings: bool = True) -> None:
        super().__init__()
        _check_margins("lifted_structure", pos_margin, neg_margin)
        self.neg_margin, self.pos_margin, self.normalize_embeddings = neg_margin, pos_margin, normalize_embeddings

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        distance = euclidean_distances(embeddings, self.normalize_embeddings)
        if indices_tuple is None:
            positive, negatives = label_masks(labels, labels, is_batch=True)
        else:
            a1, p, a2, n = _pairs(indices_tuple, labels, "lifted_structure")
            negatives = pair_counts(a2, n, distance)
        # S_i = log sum_{k in N(i)} exp(m_neg - D_ik), once per sample; the pair's sum is logaddexp(S_i, S_j).
        per_sample, has_negative = masked_logsumexp(self.neg_margin - distance, negatives)
        if indices_tuple is None:
            # Two writers or more: every sample has a negative. One writer: S ~ -max float, every hinge 0 (PML: 0).
            joint = torch.logaddexp(per_sample[:, None], per_sample[None, :]) + distance - self.pos_margin
            losses = F.relu(joint).square().masked_fill(~positive, 0)
            count = positive.sum()
        else:
            joint = torch.logaddexp(per_sample[a1], per_sample[p])
            joint = torch.where(has_negative[a1] | has_negative[p], joint, 0) + distance[a1, p] - self.pos_margin
            losses = F.relu(joint).square()
            count = torch.as_tensor(len(a1) * (len(a2) > 0), device=distance.device)
        return (losses.sum() / 2) * (count > 0) / count.clamp(min=1)


class GeneralizedLiftedStructureLoss(MetricLoss):
    """Generalised lifted structure loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss", p. 4).

    Per anchor a, with D the Euclidean distance (of L2-normalised embeddings unless
    ``normalize_embeddings`` is off), P(a) / N(a) its positives / negatives:

        l_a = max(0, log sum_{p in P(a)} exp(D_ap - m_pos) + log sum_{n in N(a)} exp(m_neg - D_an))
        L   = 1/B sum_a l_a

    an empty sum's log taken as 0, every anchor of the batch counted in the mean. Pairs are every
    pair of the batch or a miner's ``indices_tuple`` (a pair mined twice counts once); with a
    reference set (``ref_emb``, ``ref_labels``) P(a) and N(a) are rows of the reference, and the
    mean is over the B anchors. Hermans et al.'s form is m_pos = 0, m_neg = m; defaults 0 and 1.
    Equal to pytorch-metric-learning's GeneralizedLiftedStructureLoss with ``LpDistance``.
    """

    needs_global_batch = True  # pairs are a batch-level construction
    accepts_reference = True

    def __init__(self, neg_margin: float = 1.0, pos_margin: float = 0.0, normalize_embeddings: bool = True) -> None:
        super().__init__()
        _check_margins("generalized_lifted_structure", pos_margin, neg_margin)
        self.neg_margin, self.pos_margin, self.normalize_embeddings = neg_margin, pos_margin, normalize_embeddings

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        name = "generalized_lifted_structure"
        ref_emb, ref_labels, is_batch = reference_set(name, embeddings, labels, ref_emb, ref_labels)
        distance = euclidean_distances(embeddings, self.normalize_embeddings, ref_emb)
        if indices_tuple is None:
            positive, negative = label_masks(labels, ref_labels, is_batch)
        else:
            positive, negative = tuple_masks(_pairs(indices_tuple, labels, name), labels, len(ref_labels))
        pulled, has_positive = masked_logsumexp(distance - self.pos_margin, positive)
        pushed, has_negative = masked_logsumexp(self.neg_margin - distance, negative)
        losses = F.relu(torch.where(has_positive, pulled, 0) + torch.where(has_negative, pushed, 0))
        return losses.mean()
