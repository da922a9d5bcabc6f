"""Neighbourhood Components Analysis (Goldberger, Roweis, Hinton & Salakhutdinov, NeurIPS 2004) as a batch loss."""

from __future__ import annotations

import torch

from hvkit.api import MetricLoss

from ._pairs import cosine_similarities, reference_set
from ._precision import full_precision


def anchor_weights(indices_tuple: tuple | None, size: int, anchors_only: bool, like: torch.Tensor) -> torch.Tensor:
    """(``size``,) weight of each sample: how often a miner's tuple names it, over the most named one's count.

    PML's ``convert_to_weights``: with ``anchors_only`` (a reference set, whose rows are the
    partners) only the anchors count, otherwise every index of the tuple. No tuple: all ones; an
    empty tuple: all zeros.
    """
    if indices_tuple is None:
        return like.new_ones(size)
    anchors = [indices_tuple[0], indices_tuple[2]] if len(indices_tuple) == 4 else [indices_tuple[0]]
    named = anchors if anchors_only else list(indices_tuple)
    counts = torch.bincount(torch.cat(named).to(like.device), minlength=size).to(like.dtype)
    return counts / counts.max().clamp(min=1)


class NCALoss(MetricLoss):
    """NCA: each sample's log-probability of picking a same-writer neighbour under a softmax over the batch.

    With ``d_ij`` the Euclidean distance of the L2-normalised embeddings (``d² = 2 - 2 cos``) and
    ``s`` the ``softmax_scale``, sample i picks j != i with probability
    ``p_ij = exp(-s d²_ij) / sum_{k != i} exp(-s d²_ik)``, and ``p_i = sum_{j: y_j = y_i} p_ij``
    (Goldberger et al. 2004, their p_ij and p_i, the embedding network in the place of their linear map;
    as a batch loss after Movshovitz-Attias et al., "No Fuss Distance Metric Learning using
    Proxies", ICCV 2017). Each sample's term is ``-w_i log p_i``, and L averages the terms of the
    samples with ``p_i > 0``: those that have a same-writer partner (0 when none has). As
    ``-s d² = 2 s cos - 2 s``, one softmax of ``2 s cos`` per row gives every ``p_ij``. Default
    ``softmax_scale`` 1: pytorch-metric-learning's.

    A miner's ``indices_tuple`` does not choose pairs: as in PML it weights each sample by how
    often the tuple names it, ``w_i = count_i / max_k count_k`` (every index counts, or only the
    anchors with a reference set); without one, ``w_i = 1``. With a reference set (``ref_emb``,
    ``ref_labels``) the softmax runs over its rows, (i, i) included; ``ref_emb`` being the very
    tensor ``embeddings`` is the batch itself, its diagonal left out, as in PML. Inside ``xbm``
    the anchor's own (detached) copy is thus one of its partners, at distance 0, as with PML's
    CrossBatchMemory. Equal to PML's NCALoss (value and gradient), except on two edges: an
    empty tuple gives 0 here, the unweighted loss in PML; and a batch where no sample has a
    same-writer partner gives 0 here, NaN in PML (a mean of nothing).
    """

    needs_global_batch = True  # the softmax runs over the whole batch
    accepts_reference = True

    def __init__(self, softmax_scale: float = 1.0) -> None:
        super().__init__()
        if not softmax_scale > 0:
            raise ValueError(f"nca: softmax_scale must be positive (default 1), got {softmax_scale}")
        self.softmax_scale = softmax_scale

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        itself = ref_emb is embeddings
        ref_emb, ref_labels, is_batch = reference_set("nca", embeddings, labels, ref_emb, ref_labels)
        is_batch = is_batch or itself
        if is_batch and len(labels) < 2:  # no partner at all
            return embeddings.sum() * 0
        logits = 2 * self.softmax_scale * cosine_similarities(embeddings, None if is_batch else ref_emb)
        if is_batch:
            logits.fill_diagonal_(float("-inf"))
        same = labels[:, None] == ref_labels[None, :]  # the diagonal's probability is 0 anyway
        p = torch.softmax(logits, dim=1).masked_fill(~same, 0).sum(1)
        kept = p > 0  # as PML: a sample without a same-writer partner (or whose mass underflows) is left out
        weights = anchor_weights(indices_tuple, len(labels), not is_batch, logits)
        return (-p[kept].log() * weights[kept]).sum() / kept.count_nonzero().clamp(min=1)
