"""Shared checks of the classifier-based losses, whose class weights are parameters of the loss."""

from __future__ import annotations

import torch
from torch import nn

from hvkit.api import MetricLoss


def check_sizes(embedding_dim: int, num_classes: int) -> None:
    """Raise ValueError unless ``embedding_dim >= 1`` and ``num_classes >= 2``."""
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim must be at least 1, got {embedding_dim}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 for a classifier loss, got {num_classes}")


def check_batch(embeddings: torch.Tensor, labels: torch.Tensor, embedding_dim: int,
                num_classes: int, loss: str | None = None) -> None:
    """Raise ValueError unless embeddings are (B, embedding_dim) and labels (B,) lie in [0, num_classes).

    ``loss``, when given, names the loss at the start of the message.
    """
    who = f"{loss}: " if loss else ""
    if embeddings.ndim != 2 or embeddings.shape[1] != embedding_dim:
        raise ValueError(f"{who}embeddings must have shape (batch, {embedding_dim}), got "
                         f"{tuple(embeddings.shape)}: set embedding_dim to the embedding size")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"{who}labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0 or high >= num_classes:
            raise ValueError(f"{who}labels must lie in [0, {num_classes}), got {low}..{high}: remap labels "
                             "or set num_classes to their count")


def check_scale(scale: float) -> None:
    """Raise ValueError unless the logit scale is positive."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")


class PMLClassifierLoss(MetricLoss):
    """Base of the losses that wrap a pytorch-metric-learning classifier loss with weight ``W`` (D, classes).

    Embeddings are cast to the weight's dtype before the call: PML would otherwise cast ``W``
    itself to the embeddings' dtype (fp16 under autocast), in place and for good.
    """

    def __init__(self, loss: nn.Module, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.loss = loss
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, self.embedding_dim, self.num_classes)
        return self.loss(embeddings.to(self.loss.W.dtype), labels, indices_tuple)
