"""NBC-Softmax: softmax plus a negative block-contrastive term over class means (Kulatilleke et al. 2022)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hvkit.api import MetricLoss

from ._classifier import check_batch, check_sizes, cosine_matrix


def negative_block_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, tau: float,
                               form: Literal["faithful", "normalised"],
                               num_classes: int) -> torch.Tensor:
    """The NBC term over the batch's class means; see :class:`NBCSoftmaxLoss` for the formula."""
    classes, inverse = torch.unique(labels, return_inverse=True)
    # A class mean and its sum have the same direction: the cosines of the sums.
    sums = embeddings.new_zeros(len(classes), embeddings.shape[1]).index_add_(0, inverse, embeddings)
    logits = cosine_matrix(sums, sums)
    logits = logits * tau if form == "faithful" else logits / tau
    # exp(0) = 1 on the diagonal makes each row's logsumexp log(1 + sum over the other classes).
    logits.fill_diagonal_(0)
    per_class = torch.logsumexp(logits, dim=1)
    return per_class.mean() / num_classes if form == "faithful" else per_class.mean()


class NBCSoftmaxLoss(MetricLoss):
    """NBC-Softmax: cross-entropy plus a negative block-contrastive term over class means (Kulatilleke et al. 2022).

    A linear classifier ``W x + b`` (a parameter of the loss) gives the softmax
    cross-entropy CE. For the m classes present in the batch, ``mu_k`` is the mean of
    class k's embeddings, L2-normalised, and ``c_kl = cos(mu_k, mu_l)``. With C =
    ``num_classes``:

        faithful:    L_nbc = 1/(C m) * sum_k log(1 + sum_{l != k} exp(tau * c_kl))
        normalised:  L_nbc = 1/m     * sum_k log(1 + sum_{l != k} exp(c_kl / tau))
        loss = w * CE + (1 - w) * L_nbc        (w = ce_weight)

    ``faithful`` is the reference code (gayanku/NBC-Softmax, its published setting
    ce_weight w = 0.5, tau = 0.2, no projection). There tau multiplies the cosines, so the logits
    stay in [-0.2, 0.2], and the division by the total class count C shrinks the term by
    another factor C: its gradient is nearly flat next to the cross-entropy.
    ``normalised`` reads tau as a temperature (divides by it, as InfoNCE does) and averages
    over the m classes present, so the term and its gradient are O(1) whatever C is. A
    batch with one class has L_nbc = 0. The term needs the whole batch
    (``needs_global_batch``); a miner's ``indices_tuple`` is not accepted.
    """

    needs_global_batch: ClassVar[bool] = True

    def __init__(self, embedding_dim: int, num_classes: int, ce_weight: float = 0.5, tau: float = 0.2,
                 form: Literal["faithful", "normalised"] = "faithful") -> None:
        super().__init__()
        check_sizes(embedding_dim, num_classes)
        if not 0 <= ce_weight <= 1:
            raise ValueError(f"ce_weight is the share of the cross-entropy and must lie in [0, 1], "
                             f"got {ce_weight}")
        if tau <= 0:
            raise ValueError(f"tau must be positive (the paper uses 0.2), got {tau}")
        if form not in ("faithful", "normalised"):
            raise ValueError(f"form must be 'faithful' or 'normalised', got {form!r}")
        self.embedding_dim, self.num_classes = embedding_dim, num_classes
        self.ce_weight, self.tau, self.form = ce_weight, tau, form
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def class_weights(self) -> torch.Tensor:
        """The softmax classifier's weight (C, D), for ``regularized``."""
        return self.classifier.weight

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise ValueError("NBC-Softmax uses every sample of the batch: remove the miner")
        check_batch(embeddings, labels, self.embedding_dim, self.num_classes)
        embeddings = embeddings.to(self.classifier.weight.dtype)
        ce = F.cross_entropy(self.classifier(embeddings), labels)
        nbc = negative_block_contrastive(embeddings, labels, self.tau, self.form, self.num_classes)
        return self.ce_weight * ce + (1 - self.ce_weight) * nbc
