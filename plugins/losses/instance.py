"""Instance loss (Zheng, Zheng, Garrett, Yang, Xu & Shen, "Dual-path Convolutional Image-Text Embeddings with
Instance Loss", ACM TOMM 2020), in its batch form: the batch's own embeddings are the classifier.

With ``s_ij`` the cosine of samples i and j of the batch and ``t(i)`` the first sample of the batch with
i's label, each sample is classified among all B samples (itself included) into ``t(i)``:

    L = 1/B sum_i -log( exp(gamma s_{i t(i)}) / sum_j exp(gamma s_ij) )
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hvkit.api import MetricLoss

from ._pairs import cosine_similarities
from ._precision import full_precision


def first_of_label(labels: torch.Tensor) -> torch.Tensor:
    """(B,) int64: for each sample, the index of the batch's first sample with its label."""
    values, group = torch.unique(labels, return_inverse=True)
    positions = torch.arange(len(labels), device=labels.device)
    first = positions.new_full((len(values),), len(labels)).scatter_reduce_(0, group, positions, "amin")
    return first[group]


class InstanceLoss(MetricLoss):
    """Instance loss (Zheng et al. 2020): a softmax over the batch that picks each sample's writer exemplar.

    ``L = mean_i -log( exp(gamma cos(x_i, x_t(i))) / sum_j exp(gamma cos(x_i, x_j)) )`` over every sample
    i of the batch, j running over all B samples, i included; ``t(i)`` is the first sample of the batch
    with i's label (its writer's exemplar; a sample whose writer appears once is its own). With every
    label distinct, each sample its own class, this is the paper's instance classification with the
    normalised batch as the classifier. Default ``gamma`` 64, pytorch-metric-learning's (the
    authors' code defaults to 1).

    Equal, value and gradient, to PML's ``InstanceLoss`` on every batch whose first C rows hold one
    sample of each of its C labels in ascending order: PML's target for sample i is column
    ``rank(y_i)`` (the position of i's label among the sorted distinct labels, from ``torch.unique``),
    a batch position, which holds a sample of i's label on exactly those batches, and there it is
    ``t(i)``. On other batches PML's target is a sample of whatever label sits there (renaming the
    writers changes its value); this loss keeps the writer's exemplar, so it depends on the labels
    only through which samples share one, and on the batch's order only through which comes first.
    A miner and a reference set are refused, as in PML (``accepts_reference`` False: ``xbm`` refuses it).
    """

    needs_global_batch = True  # the batch is the classifier: each sample is scored against all others

    def __init__(self, gamma: float = 64.0) -> None:
        super().__init__()
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ValueError(f"instance: gamma must be positive and finite (default 64), got {gamma}")
        self.gamma = gamma

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise ValueError("instance: the instance loss classifies each sample against the whole batch, not "
                             "mined pairs or triplets: remove the miner")
        if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
            raise ValueError(f"instance: expected embeddings (B, D) and labels (B,), got "
                             f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
        logits = self.gamma * cosine_similarities(embeddings)
        return F.cross_entropy(logits, first_of_label(labels))
