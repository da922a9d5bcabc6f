"""Supervised contrastive loss (Khosla et al., NeurIPS 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import MetricLoss

from ._pairs import label_masks, reference_set, tuple_masks


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float,
                indices_tuple: tuple | None = None, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> torch.Tensor:
    """SupCon "L_out" averaged over the anchors that have at least one positive.

    ``l_i = -(1/|P(i)|) sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) )`` with
    ``s = z z^T / tau`` on L2-normalised ``z``, ``P(i)`` the same-label samples and ``A(i)`` all
    samples but ``i``. A miner's ``indices_tuple`` (pairs or triplets) restricts ``P(i)`` to the
    mined positive pairs and ``A(i)`` to the mined positive and negative pairs. With a reference
    set (``ref_emb``, ``ref_labels``) ``s`` is batch x reference and ``P(i)``, ``A(i)`` are rows
    of the reference (``A(i)`` all of them). A batch where no anchor has a positive gives 0
    (connected to the graph).
    """
    ref_emb, ref_labels, is_batch = reference_set("supcon", embeddings, labels, ref_emb, ref_labels)
    z = F.normalize(embeddings, dim=1)
    logits = (z @ (z if is_batch else F.normalize(ref_emb, dim=1)).T) / temperature
    positive, negative = (label_masks(labels, ref_labels, is_batch) if indices_tuple is None
                          else tuple_masks(indices_tuple, labels, len(ref_labels)))
    contrast = positive | negative  # every partner but the anchor itself, or the mined pairs
    n_positive = positive.sum(dim=1)
    anchors = n_positive > 0
    if not anchors.any():
        return embeddings.sum() * 0.0
    logits = logits.masked_fill(~contrast, float("-inf"))[anchors]
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mean_log_prob_pos = log_prob.masked_fill(~positive[anchors], 0.0).sum(dim=1) / n_positive[anchors]
    return -mean_log_prob_pos.mean()


class SupConLoss(MetricLoss):
    """Supervised contrastive loss (Khosla et al. 2020), multi-view: concatenate views, repeat labels.

    ``L = mean_i -(1/|P(i)|) sum_{p in P(i)} log( exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau) )``
    over L2-normalised embeddings and the anchors with a positive (see :func:`supcon_loss`).
    Default ``temperature`` tau = 0.1 (pytorch-metric-learning's default; the official code
    uses 0.07). ``base_temperature``, when set, scales the loss by ``tau / base_temperature``
    as the official code does (off by default). Equals pytorch-metric-learning's ``SupConLoss``
    whenever the batch holds two classes or more; on a one-class batch PML returns 0, this
    loss the paper's value (the denominator then holds only positives), and an anchor whose
    only mined pair is one positive adds a term 0 that PML leaves out of the mean. Takes a
    reference set (``ref_emb``, ``ref_labels``): the anchors' positives and denominator are its rows.
    """

    needs_global_batch = True
    accepts_reference = True

    def __init__(self, temperature: float = 0.1, base_temperature: float | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"supcon: temperature must be > 0, got {temperature}; try 0.1")
        if base_temperature is not None and base_temperature <= 0:
            raise ValueError(f"supcon: base_temperature must be > 0 or null, got {base_temperature}")
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
            raise ValueError(f"supcon: expected embeddings (B, D) and labels (B,), got "
                             f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
        loss = supcon_loss(embeddings, labels, self.temperature, indices_tuple, ref_emb, ref_labels)
        if self.base_temperature is not None:
            loss = loss * (self.temperature / self.base_temperature)
        return loss
