"""Angular loss (Wang, Zhou, Wen, Liu & Lin, "Deep Metric Learning with Angular Loss", ICCV 2017)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss

from ._pairs import label_masks, pair_values, reference_set
from ._precision import full_precision


class AngularLoss(MetricLoss):
    """Angular loss: bound the angle at each negative of the triangle (anchor, positive, negative) by ``alpha``.

    For a triplet (a, p, n) with centre x_c = (x_a + x_p)/2 the paper's hinge is
    ``[||x_a - x_p||^2 - 4 tan^2(α) ||x_n - x_c||^2]_+``; on L2-normalised embeddings it is,
    up to a constant, ``f_apn = 4 tan^2(α) (x_a + x_p)^T x_n - 2 (1 + tan^2(α)) x_a^T x_p``,
    and its smooth N-pair form gives each positive pair

        l_ap = log(1 + sum_n exp(f_apn))

    over every n of another label than a's (0 when there is none); L is the mean of l_ap over
    the positive pairs. Default α = 40° (PML's; the paper finds 36°-55° good). The paper's
    N-pair batches hold one pair per class; here, as in PML, the positive pairs are every
    (a, p) of one label, a != p, or a miner's (triplets split into pairs,
    repeats counted) — whose negatives are ignored: each pair still meets every other-label
    sample, and a tuple without negative pairs gives 0. With a reference set (``ref_emb``,
    ``ref_labels``) p and n are reference rows. The (B, R) and, for a reference, (R, R) cosine
    matrices give every f_apn by two row gathers, one (pairs x R) matrix; the negatives are
    masked in (B, R), and f_apn's term without n is taken out of the log-sum-exp.

    Equal to pytorch-metric-learning's AngularLoss on L2-normalised inputs, value and gradient.
    PML normalises x_a and x_p but takes x_n as given; hvkit normalises x_n too, as the paper's
    derivation needs (PML's f_apn scales with ||x_n||: a network can lower it through norms
    alone). The ``metric_train`` stage normalises the embeddings before the loss by default,
    where the two agree.
    """

    needs_global_batch = True  # pairs are a batch-level construction
    accepts_reference = True

    def __init__(self, alpha: float = 40.0) -> None:
        super().__init__()
        if not 0 < alpha < 90:
            raise ValueError(f"angular: alpha is an angle in degrees, in (0, 90) (default 40), got {alpha}")
        self.alpha = alpha

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("angular", embeddings, labels, ref_emb, ref_labels)
        x = F.normalize(embeddings, dim=1)
        partners = x if is_batch else F.normalize(ref_emb, dim=1)
        cos = x @ partners.T  # (B, R): x_a . x_n, and x_a . x_p
        positive, negative = label_masks(labels, ref_labels, is_batch)
        if indices_tuple is None:
            anchors, positives = positive.nonzero(as_tuple=True)
        else:
            anchors, positives, negative_anchors, _ = lmu.convert_to_pairs(indices_tuple, labels)
            if len(negative_anchors) == 0:  # as PML: no mined negative pair, no loss
                anchors, positives = anchors[:0], positives[:0]
        sq_tan = math.tan(math.radians(self.alpha)) ** 2
        scaled = 4 * sq_tan * cos
        # the negatives of a pair are its anchor's: masked once in (B, R), exp(min) = 0 leaves the sum
        from_anchor = scaled.masked_fill(~negative, torch.finfo(cos.dtype).min)
        from_partner = scaled if is_batch else 4 * sq_tan * (partners @ partners.T)  # (R, R): x_p . x_n
        # f_apn's last term, -2 (1 + tan^2 α) x_a . x_p, is the same for every n: added after the log-sum-exp
        pushed = (torch.logsumexp(from_anchor.index_select(0, anchors) + from_partner.index_select(0, positives), 1)
                  - 2 * (1 + sq_tan) * pair_values(cos, anchors, positives))
        terms = torch.logaddexp(pushed, pushed.new_zeros(()))  # log(1 + sum_n exp f_apn); 0 without negatives
        return terms.sum() / max(len(anchors), 1)
