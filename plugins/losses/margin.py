"""Margin loss with learnable boundary beta (Wu et al., ICCV 2017)."""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.api import MetricLoss


class MarginLoss(MetricLoss):
    """Margin loss with learnable beta, for distance-weighted sampling (Wu et al. 2017).

    With ``D`` the Euclidean distance of L2-normalised embeddings, each triplet (a, p, n)
    contributes ``(alpha + D_ap - beta)_+ + (alpha + beta - D_an)_+``; the sum is divided
    by the number of non-zero terms. The paper's regulariser ``nu * beta`` is added (with
    per-class beta, ``nu * beta_{y_a}`` summed over the triplets and divided by that same
    number). Triplets come from a miner's ``indices_tuple`` (the paper's distance-weighted
    sampling), or are all valid triplets of the batch. Defaults: margin alpha 0.2, beta
    initialised to 1.2 and learned (a parameter of the loss; the paper gives it its own
    larger learning rate), one beta for all classes unless ``per_class_beta`` (which needs
    ``num_classes``), nu 0. Wraps pytorch-metric-learning's MarginLoss.
    """

    needs_global_batch = True  # mining pairs or triplets is a batch-level operation

    def __init__(self, margin: float = 0.2, beta: float = 1.2, learn_beta: bool = True,
                 per_class_beta: bool = False, nu: float = 0.0, num_classes: int | None = None) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be non-negative (the paper uses 0.2), got {margin}")
        if nu < 0:
            raise ValueError(f"nu must be non-negative (0 disables the beta regulariser), got {nu}")
        if per_class_beta and not num_classes:
            raise ValueError("per_class_beta needs num_classes (the number of training classes)")
        self.loss = pml_losses.MarginLoss(margin=margin, nu=nu, beta=beta, learn_beta=learn_beta,
                                          num_classes=num_classes if per_class_beta else None,
                                          triplets_per_anchor="all")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        return self.loss(embeddings, labels, indices_tuple)
