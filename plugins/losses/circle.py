"""Circle loss with pair-wise labels (Sun et al., CVPR 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import MetricLoss

from ._pairs import label_masks, reference_set, tuple_masks
from ._precision import full_precision


class CircleLoss(MetricLoss):
    """Circle loss: each pair's similarity weighted by its distance from the optimum (Sun et al. 2020).

    For anchor i, with ``s_p`` its cosines to its positives (same label, not i) and ``s_n`` to
    its negatives:

        l_i = log(1 + sum_n exp(gamma a_n (s_n - m)) * sum_p exp(-gamma a_p (s_p - (1 - m))))
        a_p = [1 + m - s_p]_+,   a_n = [s_n + m]_+          (constants in the gradient)

    that is optima O_p = 1 + m, O_n = -m and margins Delta_p = 1 - m, Delta_n = m: the
    decision boundary is the circle s_n^2 + (s_p - 1)^2 = 2 m^2. L is the mean of l_i over
    the anchors with at least one positive and one negative (0 if there is none), i.e. the
    paper's per-sample loss with each sample as the anchor; a popular re-implementation
    instead pools all the batch's pairs into a single l.

    Defaults m = 0.4, gamma = 80: the paper's setting for learning with pair-wise labels
    (fine-grained retrieval: many classes, few images each), which is this loss's form and
    writer verification's situation, and pytorch-metric-learning's defaults. Its face setting,
    m = 0.25 and gamma = 256, is for the class-level-label (classifier) form.

    Equal to PML's CircleLoss, which averages the non-zero l_i: the same unless an l_i
    underflows to 0, which needs 2 gamma m^2 > 103 in float32 (l_i >= softplus(-2 gamma m^2)).
    A miner's ``indices_tuple`` (pairs or triplets) replaces the batch's pairs, as in PML.
    With a reference set (``ref_emb``, ``ref_labels``) s_p and s_n are the anchor's cosines to
    the reference's rows (PML's ``ref_emb``). Pairs span the batch (``needs_global_batch``).
    """

    needs_global_batch = True
    accepts_reference = True

    def __init__(self, m: float = 0.4, gamma: float = 80.0) -> None:
        super().__init__()
        if not 0 <= m < 1:
            raise ValueError(f"m is the relaxation margin, in [0, 1) (the paper uses 0.4 with pair-wise "
                             f"labels, 0.25 for faces), got {m}")
        if gamma <= 0:
            raise ValueError(f"gamma is the scale and must be positive (the paper uses 80 with pair-wise "
                             f"labels, 256 for faces), got {gamma}")
        self.m, self.gamma = m, gamma

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("circle", embeddings, labels, ref_emb, ref_labels)
        x = F.normalize(embeddings, dim=1)
        partners = x if is_batch else F.normalize(ref_emb, dim=1)
        positive, negative = (label_masks(labels, ref_labels, is_batch) if indices_tuple is None
                              else tuple_masks(indices_tuple, labels, len(ref_labels)))
        anchors = positive.any(dim=1) & negative.any(dim=1)
        s, positive, negative = (x[anchors] @ partners.T), positive[anchors], negative[anchors]
        a_p = (1 + self.m - s.detach()).clamp(min=0)
        a_n = (s.detach() + self.m).clamp(min=0)
        pull = (-self.gamma * a_p * (s - (1 - self.m))).masked_fill(~positive, float("-inf")).logsumexp(dim=1)
        push = (self.gamma * a_n * (s - self.m)).masked_fill(~negative, float("-inf")).logsumexp(dim=1)
        return F.softplus(pull + push).sum() / anchors.sum().clamp(min=1)
