"""NormSoftmax: cross-entropy over temperature-scaled cosines with the class weights (Zhai & Wu, BMVC 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from hvkit.api import MetricLoss

from ._classifier import check_batch, check_sizes, cosine_matrix
from ._precision import full_precision


class NormalizedSoftmaxLoss(MetricLoss):
    """Normalised softmax: a softmax classifier on the unit sphere, logits cos(x, w_c) / T (Zhai & Wu 2019).

    With x and the class weights w_c L2-normalised and y the sample's class:

        l = -log( exp(cos(x, w_y) / T) / sum_c exp(cos(x, w_c) / T) )

    and L is the mean of l over the batch. T = ``temperature`` = 0.05, the paper's (and
    pytorch-metric-learning's) default: the paper finds a low temperature essential, the
    logits of unit vectors lying in [-1/T, 1/T]. Its other ingredients (layer normalisation
    of the embedding, class-balanced sampling) belong to the model and the sampler. Equal,
    value and gradient, to PML's NormalizedSoftmaxLoss, whose miner weighting it keeps: a
    miner's ``indices_tuple`` weights each sample by how often it is mined. ProxyNCA++ with
    its positive in the denominator is the same loss at temperature 2T (``proxy_nca``: its
    squared distances are 2 - 2 cos). The class weights ``weight`` (num_classes,
    embedding_dim), a parameter of the loss, start standard normal as in PML and stay in
    their dtype (float32): the embeddings are cast to it, with autocast off. Only directions
    count, so the weights' learning rate (``train.loss_lr``) sets how fast they turn. The loss
    is a mean of per-sample terms: each rank's share suffices (no global batch).
    """

    loss_name = "normalized_softmax"

    def __init__(self, embedding_dim: int, num_classes: int, temperature: float = 0.05) -> None:
        super().__init__()
        check_sizes(embedding_dim, num_classes, loss=self.loss_name)
        if temperature <= 0:
            raise ValueError(f"{self.loss_name}: temperature must be positive (the paper uses 0.05), "
                             f"got {temperature}")
        self.embedding_dim, self.num_classes, self.temperature = embedding_dim, num_classes, temperature
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim))

    def class_weights(self) -> torch.Tensor:
        """The class weights ``weight`` (C, D), for ``regularized``."""
        return self.weight

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, self.embedding_dim, self.num_classes, loss=self.loss_name)
        logits = cosine_matrix(embeddings.to(self.weight.dtype), self.weight) / self.temperature
        if indices_tuple is None:
            return F.cross_entropy(logits, labels)
        losses = F.cross_entropy(logits, labels, reduction="none")
        return (losses * lmu.convert_to_weights(indices_tuple, labels, dtype=losses.dtype)).mean()
