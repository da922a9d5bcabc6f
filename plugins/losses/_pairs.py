"""What the pair and triplet losses share: the partners of the anchors, their pair masks and distances, and
the reduction of their terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu


def reference_set(name: str, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None,
                  ref_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(partners (R, D), their labels (R,), is_batch)``: the reference set, or the batch itself when none is given.

    ``is_batch`` is True for the batch itself, whose diagonal (each anchor with itself) is no pair.
    """
    if ref_emb is None and ref_labels is None:
        return embeddings, labels, True
    if ref_emb is None or ref_labels is None:
        given, missing = ("ref_emb", "ref_labels") if ref_labels is None else ("ref_labels", "ref_emb")
        raise ValueError(f"{name}: {given} was given without {missing}; a reference set needs both")
    if ref_emb.ndim != 2 or ref_emb.shape[1:] != embeddings.shape[1:] or ref_labels.shape != ref_emb.shape[:1]:
        raise ValueError(f"{name}: expected ref_emb (R, {embeddings.shape[-1]}) and ref_labels (R,) beside "
                         f"embeddings {tuple(embeddings.shape)}, got {tuple(ref_emb.shape)} and "
                         f"{tuple(ref_labels.shape)}")
    return ref_emb.to(embeddings.dtype), ref_labels.to(labels.device), False


def label_masks(labels: torch.Tensor, ref_labels: torch.Tensor, is_batch: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (B, R) masks of every positive (same label) and negative pair; no diagonal when ``is_batch``."""
    same = labels[:, None] == ref_labels[None, :]
    positive = same & ~torch.eye(*same.shape, dtype=torch.bool, device=same.device) if is_batch else same
    return positive, ~same


def tuple_masks(indices_tuple: tuple, labels: torch.Tensor, partners: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (B, ``partners``) masks of a miner's positive and negative pairs, triplets split into pairs."""
    a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels)
    positive = torch.zeros(len(labels), partners, dtype=torch.bool, device=labels.device)
    negative = torch.zeros_like(positive)
    positive[a1, p] = True
    negative[a2, n] = True
    return positive, negative


def masked_logsumexp(values: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise ``log sum_k w_k exp(v_k)`` over the entries of positive weight, and which rows have any.

    An empty row's value is finite and meaningless (the caller replaces it); it passes no gradient.
    """
    keep = weights if weights.dtype == torch.bool else weights > 0
    if weights.dtype != torch.bool:  # multiplicities: a pair mined twice counts twice, as in PML's gather
        values = values + weights.clamp(min=1).log()
    values = values.masked_fill(~keep, torch.finfo(values.dtype).min)
    return torch.logsumexp(values, dim=1), keep.any(1)


def pair_counts(rows: torch.Tensor, cols: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A matrix shaped and typed as ``like`` holding how often each (row, col) pair occurs: a miner's multiplicities."""
    return like.new_zeros(like.shape).index_put_((rows, cols), like.new_ones(len(rows)), accumulate=True)


def euclidean_distances(embeddings: torch.Tensor, normalize: bool,
                        reference: torch.Tensor | None = None) -> torch.Tensor:
    """(B, R) Euclidean distances from the rows to those of ``reference`` (default: the rows themselves),
    L2-normalised first when ``normalize``: PML's ``LpDistance``."""
    same = reference is None or reference is embeddings
    if normalize:
        embeddings = F.normalize(embeddings, dim=1)
        reference = embeddings if same else F.normalize(reference, dim=1)
    return torch.cdist(embeddings, embeddings if same else reference)


def cosine_similarities(embeddings: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """(B, R) cosines of the rows with those of ``reference`` (default: the rows themselves): PML's CosineSimilarity."""
    x = F.normalize(embeddings, dim=1)
    return x @ (x if reference is None or reference is embeddings else F.normalize(reference, dim=1)).T


def pair_values(matrix: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``matrix[rows, cols]`` through one flat ``index_select``, whose backward (an index_add) runs about twice as
    fast on CPU as advanced indexing's."""
    return matrix.reshape(-1).index_select(0, torch.add(cols, rows, alpha=matrix.shape[1]))


def margin_terms(distance: torch.Tensor, labels: torch.Tensor, ref_labels: torch.Tensor, is_batch: bool,
                 indices_tuple: tuple | None, pos_margin: float, neg_margin: float
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | int, torch.Tensor | int]]:
    """A contrastive loss's hinges ``[d_ap - m_pos]_+`` and ``[m_neg - d_an]_+`` and the counts of their pairs.

    Without ``indices_tuple`` over the whole (B, R) ``distance`` matrix, the entries of other pairs
    zeroed (no gather); with one, over its pairs (triplets split into pairs, repeats counted).
    """
    if indices_tuple is None:
        positive, negative = label_masks(labels, ref_labels, is_batch)
        pulled = F.relu(distance - pos_margin).masked_fill(~positive, 0)
        pushed = F.relu(neg_margin - distance).masked_fill(~negative, 0)
        return pulled, pushed, (positive.count_nonzero(), negative.count_nonzero())
    a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels)
    pulled = F.relu(pair_values(distance, a1, p) - pos_margin)
    pushed = F.relu(neg_margin - pair_values(distance, a2, n))
    return pulled, pushed, (len(a1), len(a2))


def reduce_terms(losses: torch.Tensor, terms: torch.Tensor | int, reduction: str) -> torch.Tensor:
    """Sum over the count of positive terms (``nonzero_mean``, PML's AvgNonZeroReducer) or over ``terms``, the
    count of all valid ones (``mean``); 0 when there are none."""
    if reduction == "nonzero_mean":
        count = (losses > 0).count_nonzero()
    else:
        count = torch.as_tensor(terms, device=losses.device)
    return losses.sum() / count.clamp(min=1)
