"""Distance-weighted negative sampling (Wu et al. 2017, "Sampling Matters in Deep Embedding Learning")."""

import torch
import torch.nn.functional as F
from torch import nn

from hvkit_plugins.losses._pairs import label_masks

from ._distances import partners


class DistanceWeightedMiner(nn.Module):
    """One negative per positive pair, drawn with weight 1/q(d) (Wu et al. 2017, "Sampling Matters").

    Distances between random points of the unit sphere in R^n have the density
    ``q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2)``. For every positive pair (a, p), each ordered pair
    of distinct same-label examples once, one negative n is drawn with probability
    ``∝ 1/q(max(d(a, n), cutoff))`` over the negatives with ``d(a, n) < nonzero_loss_cutoff``;
    anchors without such a negative give no triplets. d is the Euclidean distance between the
    L2-normalised embeddings. Defaults: cutoff 0.5, nonzero_loss_cutoff 1.4 (the paper's); pair
    it with the ``margin`` loss (margin 0.2, learnable beta 1.2).

    The negatives follow pytorch-metric-learning's DistanceWeightedMiner distribution (which
    draws each anchor's positives at random with replacement instead of taking every pair once),
    normalised per anchor rather than by the batch's largest weight, so that no anchor is lost
    to underflow in high dimensions, and drawn for all anchors at once. Draws come from
    ``generator`` when one is passed, else from torch's global generator (which hvkit seeds,
    checkpoints and restores, so a resumed run replays them).

    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the anchors are the batch's rows and
    positives and negatives the reference's: every (anchor, reference positive) pair once, p = a included, with
    one negative drawn from the reference, as PML's miner draws them given that reference.
    """

    accepts_reference = True

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4) -> None:
        super().__init__()
        if not 0 < cutoff < nonzero_loss_cutoff:
            raise ValueError(f"need 0 < cutoff < nonzero_loss_cutoff, got cutoff {cutoff} and "
                             f"nonzero_loss_cutoff {nonzero_loss_cutoff}")
        self.cutoff = cutoff
        self.nonzero_loss_cutoff = nonzero_loss_cutoff

    def log_weights(self, embeddings: torch.Tensor, negative: torch.Tensor,
                    reference: torch.Tensor | None = None) -> torch.Tensor:
        """``log(1/q(d))`` of every (anchor, candidate) pair, ``-inf`` where n may not be drawn.

        ``negative`` is the (B, R) mask of the pairs of different labels; the candidates are the rows of
        ``reference`` (default: the batch's).
        """
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        x = F.normalize(embeddings.to(dtype), dim=1)
        r = x if reference is None else F.normalize(reference.to(dtype), dim=1)
        n = x.shape[1]
        sq_dist = (2 - 2 * x @ r.T).clamp(min=self.cutoff ** 2)
        log_w = -(n - 2) / 2 * sq_dist.log() - (n - 3) / 2 * torch.log1p(-sq_dist / 4)
        allowed = negative & (sq_dist < self.nonzero_loss_cutoff ** 2) & log_w.isfinite()
        return log_w.masked_fill(~allowed, float("-inf"))

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("distance_weighted", embeddings, labels, ref_emb, ref_labels)
        positive, negative = label_masks(labels.to(embeddings.device), ref_labels, is_batch)
        log_w = self.log_weights(embeddings, negative, reference)
        pos = positive & log_w.isfinite().any(dim=1, keepdim=True)
        anchors, positives = torch.where(pos)
        if anchors.numel() == 0:
            return anchors, positives, positives.clone()
        drawing = pos.any(dim=1)
        rows = torch.cumsum(drawing, dim=0) - 1
        log_w = log_w[drawing]
        draws = torch.multinomial((log_w - log_w.amax(dim=1, keepdim=True)).exp(),
                                  int(pos.sum(dim=1).max()), replacement=True,
                                  generator=generator)
        rank = (torch.cumsum(pos, dim=1) - 1)[anchors, positives]
        return anchors, positives, draws[rows[anchors], rank]
