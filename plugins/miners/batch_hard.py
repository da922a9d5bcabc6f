"""Batch-hard mining: the hardest positive and the hardest negative of every anchor."""

import torch
import torch.nn.functional as F
from torch import nn

from hvkit_plugins.losses._pairs import label_masks

from ._distances import partners


class BatchHardMiner(nn.Module):
    """Hardest positive and hardest negative of every anchor (Hermans et al. 2017, batch-hard).

    For every anchor a with a positive and a negative in the batch, returns the triplet
    ``(a, argmax_{p: y_p = y_a, p != a} d(a, p), argmin_{n: y_n != y_a} d(a, n))``, where d is
    the Euclidean distance between L2-normalised embeddings (``normalize=False``: between the
    raw embeddings). Squaring d, or cosine similarity of normalised embeddings, would pick the
    same triplets, so there is no option for them. Same triplets as pytorch-metric-learning's
    BatchHardMiner ("In Defense of the Triplet Loss for Person Re-Identification"), ranked by
    ``d(a, x)² - |a|² = |x|² - 2 a·x`` (one matrix product, no square roots) and without PML's
    dense index bookkeeping.

    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the anchors are the batch's rows and
    the hardest positive and negative of each are reference rows, a positive p = a included (the anchor's own copy
    in a memory is its easiest positive, never its hardest unless its only one): PML's triplets with that reference.
    """

    accepts_reference = True

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("batch_hard", embeddings, labels, ref_emb, ref_labels)
        x = F.normalize(embeddings, dim=1) if self.normalize else embeddings
        r = x if reference is None else F.normalize(reference, dim=1) if self.normalize else reference
        mat = (r * r).sum(dim=1) - 2 * x @ r.T
        pos, neg = label_masks(labels.to(mat.device), ref_labels, is_batch)
        hardest_pos = mat.masked_fill(~pos, float("-inf")).max(dim=1).indices
        hardest_neg = mat.masked_fill(~neg, float("inf")).min(dim=1).indices
        anchors = torch.nonzero(pos.any(dim=1) & neg.any(dim=1)).flatten()
        return anchors, hardest_pos[anchors], hardest_neg[anchors]
