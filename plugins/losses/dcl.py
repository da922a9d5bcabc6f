"""DCL: decoupled contrastive learning, NT-Xent without the positive in its denominator (Yeh et al., ECCV 2022).

Yeh, Hong, Hsu, Liu, Chen & LeCun, "Decoupled Contrastive Learning". With z the 2B L2-normalised
embeddings of both views, i+ the other view of sample i and s_ij = z_i . z_j, the loss of anchor i is

    L_i = -w_i s_{i,i+} / tau + log sum_{k != i, i+} exp(s_ik / tau),

averaged over the 2B anchors. NT-Xent's denominator also holds exp(s_{i,i+} / tau); dropping it
removes the negative-positive coupling factor 1 - p_i (p_i NT-Xent's probability of the positive)
that shrinks every gradient when the positive is easy or the batch small, so that
``L_i = NT-Xent_i + log(1 - p_i)``. DCL has w_i = 1; DCLW weights each positive pair by the
negative von Mises-Fisher weight

    w_i = 2 - exp(s_{i,i+} / sigma) / mean_j exp(s_{j,j+} / sigma)        (mean over the B pairs),

which averages 1 and gives harder positives (lower similarity) more weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views


def negative_von_mises_fisher_weights(positive: torch.Tensor, sigma: float) -> torch.Tensor:
    """DCLW's ``w_i = 2 - exp(s_i / sigma) / mean_j exp(s_j / sigma)`` for the (B,) positive cosines, as constants."""
    scaled = positive.detach() / sigma
    return 2 - scaled.numel() * torch.softmax(scaled, dim=0)


class DCLLoss(ViewLoss):
    """DCL (Yeh et al. 2022): NT-Xent whose denominator holds the 2B - 2 negatives only; DCLW with ``weight_sigma``.

    ``L = mean over the 2B anchors i of [-w_i z_i . z_{i+} / tau + log sum_{k != i, i+} exp(z_i . z_k / tau)]``
    on L2-normalised views, i+ the anchor's other view. ``weight_sigma`` None: DCL, w_i = 1;
    a value sigma: DCLW, w_i = :func:`negative_von_mises_fisher_weights` over the global batch's
    B positive pairs, taken as constants (no gradient), as lightly's ``DCLWLoss`` — the paper
    gives no rule, and the weights only rescale each pair's pull. Defaults are the paper's:
    ``temperature`` tau = 0.1, sigma = 0.5 for DCLW. One log over all 2B - 2 negatives, as the
    paper: lightly's ``DCLLoss`` adds one log-sum-exp per view instead (log A + log B for
    log(A + B); its open pull request 1827 fixes that). The often-cited
    github.com/raminnakhli/Decoupled-Contrastive-Learning (not the authors') returns the sum of
    the two directions' means, twice this value, and its ``loss/dcl.py`` differentiates through
    w, without the mean's factor B (its weights average 2 - 1/B). Weights are not clipped at 0.
    Needs B >= 2 (an anchor needs a negative). Computed in float32 at least, with autocast off.
    """

    def __init__(self, temperature: float = 0.1, weight_sigma: float | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"dcl: temperature must be > 0, got {temperature}; the paper uses 0.1")
        if weight_sigma is not None and weight_sigma <= 0:
            raise ValueError(f"dcl: weight_sigma must be > 0 or null (DCL), got {weight_sigma}; "
                             "the paper's DCLW uses 0.5")
        self.temperature = temperature
        self.weight_sigma = weight_sigma

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_views("dcl", z_a, z_b, min_batch=2)
        n = z_a.shape[0]
        z = F.normalize(torch.cat([z_a, z_b]), dim=1)
        positive = (z[:n] * z[n:]).sum(dim=1)
        own = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        own |= own.roll(n, dims=1)
        negatives = torch.logsumexp(((z @ z.T) / self.temperature).masked_fill(own, float("-inf")), dim=1)
        pull = positive / self.temperature
        if self.weight_sigma is not None:
            pull = pull * negative_von_mises_fisher_weights(positive, self.weight_sigma)
        return negatives.mean() - pull.mean()
