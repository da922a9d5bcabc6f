"""Signal-to-noise-ratio contrastive loss (Yuan, Chen, Zhou, Yang & Wang, "Signal-To-Noise Ratio: A Robust Distance
Metric for Deep Metric Learning", CVPR 2019)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from hvkit.api import MetricLoss

from ._pairs import margin_terms, reduce_terms, reference_set
from ._precision import full_precision


def snr_distances(embeddings: torch.Tensor, normalize: bool, reference: torch.Tensor | None = None) -> torch.Tensor:
    """(B, R) SNR distances ``var(r_j - x_i) / var(x_i)`` of the rows x_i to those of ``reference`` (default: the
    rows), L2-normalised first when ``normalize``: PML's ``SNRDistance``.

    The variance is over the D components; with centred rows (x - mean x) the (D - 1)
    factors cancel, and ``||x - r||^2 = ||x||^2 + ||r||^2 - 2 x.r`` gives the whole matrix
    from one matmul (clamped at 0 against rounding) instead of a (B, R, D) tensor of differences.
    """
    same = reference is None or reference is embeddings
    if normalize:
        embeddings = F.normalize(embeddings, dim=1)
        reference = embeddings if same else F.normalize(reference, dim=1)
    x = embeddings - embeddings.mean(1, keepdim=True)
    r = x if same else reference - reference.mean(1, keepdim=True)
    signal = x.square().sum(1)
    partner = signal if same else r.square().sum(1)
    noise = torch.addmm(signal[:, None] + partner[None, :], x, r.T, alpha=-2).clamp(min=0)
    return noise / signal[:, None]


class SNRContrastiveLoss(MetricLoss):
    """Contrastive loss on the SNR distance: same-writer pairs within ``pos_margin``, others past ``neg_margin``.

    The SNR distance of an anchor a and a partner b treats b - a as noise on the signal a:
    ``d(a, b) = var(b - a) / var(a)``, the variance over the embedding's components (not
    symmetric; :func:`snr_distances`), of L2-normalised embeddings unless
    ``normalize_embeddings`` is off. Then

        L = reduce_(a,p) [d_ap - m_pos]_+  +  reduce_(a,n) [m_neg - d_an]_+  +  λ 1/B sum_i |sum_k x_ik|

    each sum reduced on its own — ``nonzero_mean`` over its positive terms (PML's
    AvgNonZeroReducer), ``mean`` over all — and λ = ``regularizer_weight`` weighting the
    paper's zero-mean regulariser of the batch's embeddings (as given, before any
    normalisation). Defaults m_pos = 0, m_neg = 1, λ = 0: PML's (the paper adds the
    regulariser; give it a weight to have it). Pairs are every ordered
    pair of the batch, or a miner's ``indices_tuple`` (pairs, or triplets split into pairs,
    repeats counted); with a reference set (``ref_emb``, ``ref_labels``) they are (batch row,
    reference row) and the regulariser covers the batch only.

    Equal to pytorch-metric-learning's SignalToNoiseRatioContrastiveLoss, with
    ``embedding_regularizer=ZeroMeanRegularizer(), embedding_reg_weight=λ`` when λ > 0 (and
    ``SNRDistance(normalize_embeddings=False)`` without normalisation), but
    from one matmul instead of PML's (B, R, D) differences. PML returns 0 when a tuple holds at
    most one pair of each kind; hvkit scores that pair.
    """

    needs_global_batch = True  # pairs are a batch-level construction
    accepts_reference = True

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, regularizer_weight: float = 0.0,
                 normalize_embeddings: bool = True,
                 reduction: Literal["nonzero_mean", "mean"] = "nonzero_mean") -> None:
        super().__init__()
        if pos_margin < 0 or neg_margin <= pos_margin:
            raise ValueError(f"snr_contrastive: need 0 <= pos_margin < neg_margin, got pos_margin={pos_margin}, "
                             f"neg_margin={neg_margin} (defaults 0 and 1)")
        if regularizer_weight < 0:
            raise ValueError(f"snr_contrastive: regularizer_weight must be >= 0 (default 0: none), "
                             f"got {regularizer_weight}")
        if reduction not in ("nonzero_mean", "mean"):
            raise ValueError(f"snr_contrastive: reduction must be 'nonzero_mean' or 'mean', got {reduction!r}")
        self.pos_margin, self.neg_margin = pos_margin, neg_margin
        self.regularizer_weight, self.normalize_embeddings = regularizer_weight, normalize_embeddings
        self.reduction = reduction

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("snr_contrastive", embeddings, labels, ref_emb, ref_labels)
        distance = snr_distances(embeddings, self.normalize_embeddings, None if is_batch else ref_emb)
        pulled, pushed, counts = margin_terms(distance, labels, ref_labels, is_batch, indices_tuple,
                                              self.pos_margin, self.neg_margin)
        loss = reduce_terms(pulled, counts[0], self.reduction) + reduce_terms(pushed, counts[1], self.reduction)
        if self.regularizer_weight:
            loss = loss + self.regularizer_weight * embeddings.sum(1).abs().mean()
        return loss
