"""Multi-class N-pair loss (Sohn, NeurIPS 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss


def first_pair_per_class(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchors, positives): each writer's first and second sample in batch order; a writer seen once drops out."""
    same = labels[:, None] == labels[None, :]
    later = same.triu(1)  # later[i, j]: j > i is of i's writer
    first = ~same.tril(-1).any(1)
    anchors = (first & later.any(1)).nonzero(as_tuple=True)[0]
    return anchors, later[anchors].byte().argmax(1)  # argmax: the first of the maxima


class NPairsLoss(MetricLoss):
    """Multi-class N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", 2016).

    One pair (f_i, f_i+) per writer of the batch, N writers: a cross-entropy over the pairs'
    dot-product similarities, each anchor's own positive against the other writers' positives,
    plus the paper's L2 regulariser on the embeddings:

        L = 1/N sum_i -log( exp(f_i . f_i+) / sum_j exp(f_i . f_j+) )  +  reg_lambda * 1/B sum_b ||f_b||^2

    The pair of a writer is its first two samples in batch order, or with a miner's
    ``indices_tuple`` its first mined positive pair; a writer with no pair drops out, so batches
    need 2 samples per writer (the paper's: N writers x 2, the ``pk`` sampler with
    ``samples_per_class: 2``). Defaults are the paper's: raw embeddings (normalising bounds the
    logits to [-1, 1]; Sohn keeps their norm small with the regulariser instead), ``reg_lambda``
    0.002, the value of TensorFlow's npairs_loss (which scales its term by 1/2 and averages over
    the pairs only). The regulariser covers every embedding of the batch, before any normalisation.
    A ``metric_train`` stage L2-normalises the embeddings before the loss unless ``normalize: false``;
    on unit vectors the logits lie in [-1, 1] and the softmax is nearly flat, so turn it off.
    Equal to pytorch-metric-learning's NPairsLoss: its default (cosine) is ``normalize_embeddings:
    true, reg_lambda: 0``; this default is NPairsLoss with ``DotProductSimilarity(normalize_embeddings=False)``,
    ``embedding_regularizer=LpRegularizer(power=2)`` and ``embedding_reg_weight=0.002``.
    """

    needs_global_batch = True  # the pairs and their negatives are the whole batch

    def __init__(self, reg_lambda: float = 0.002, normalize_embeddings: bool = False) -> None:
        super().__init__()
        if reg_lambda < 0:
            raise ValueError(f"npairs: reg_lambda must be non-negative (the paper uses 0.002, 0 turns it off), "
                             f"got {reg_lambda}")
        self.reg_lambda, self.normalize_embeddings = reg_lambda, normalize_embeddings

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        if indices_tuple is None:
            anchors, positives = first_pair_per_class(labels)
        elif len(indices_tuple) in (3, 4):
            anchors, positives = lmu.convert_to_pos_pairs_with_unique_labels(indices_tuple, labels)
        else:
            raise ValueError(f"npairs: indices_tuple must be a miner's triplets (a, p, n) or pairs "
                             f"(a1, p, a2, n), got a tuple of {len(indices_tuple)}")
        features = F.normalize(embeddings, dim=1) if self.normalize_embeddings else embeddings
        logits = features[anchors] @ features[positives].T
        targets = torch.arange(len(anchors), device=embeddings.device)
        loss = F.cross_entropy(logits, targets, reduction="sum") / max(1, len(anchors))
        if self.reg_lambda:
            loss = loss + self.reg_lambda * embeddings.square().sum(1).mean()
        return loss
