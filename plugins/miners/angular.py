"""Angular mining (Wang, Zhou, Wen, Liu & Lin, "Deep Metric Learning with Angular Loss", ICCV 2017)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hvkit_plugins.losses._pairs import label_masks

from ._distances import partners


class AngularMiner(nn.Module):
    """Triplets (a, p, n) whose angle at the negative exceeds ``angle`` degrees (Wang et al. 2017).

    With c = (x_a + x_p) / 2 the centre of the positive pair, the angle at the negative of the
    triangle the angular loss looks at is ``α' = arctan(||x_a - x_p|| / (2 ||x_n - x_c||))`` (the
    paper's Eq. 5: the loss penalises ``tan α' > tan α``); every triplet of anchor, positive (same
    label, p != a) and negative (other label) with ``α' > angle`` is kept, on L2-normalised
    embeddings as in the paper (``normalize=False``: the raw ones). As both lengths are
    non-negative and ``angle`` lies in (0°, 90°), that is ``||x_a - x_p||² > 4 tan²α ||x_n - x_c||²``;
    with G the Gram matrix of the embeddings, ``||x_a - x_p||² = G_aa + G_pp - 2 G_ap`` and
    ``||x_n - x_c||² = G_nn - G_an - G_pn + (G_aa + G_pp + 2 G_ap) / 4``: one matrix product, then
    (positive pairs x B) sums, O(B² k) memory for k per label, where pytorch-metric-learning's
    AngularMiner gathers the three embeddings of all B x B x B candidates. Default 20°, PML's.

    The triplets and their order (by anchor, then positive, then negative) are those of PML's
    AngularMiner, save a triplet whose angle lies within rounding of ``angle`` (PML's
    ``pairwise_distance`` adds 1e-6 to every coordinate difference). PML requires a normalising
    distance but measures the angle on the embeddings as given, so it equals ``normalize=True``
    on unit-length embeddings (what hvkit's ``metric_train`` stage passes by default) and
    ``normalize=False`` on any.

    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the anchors are the batch's rows,
    positives and negatives the reference's (a positive p = a included), G then the batch's products with the
    reference and the reference's with itself: PML's triplets with that reference, in its order.
    """

    accepts_reference = True

    def __init__(self, angle: float = 20.0, normalize: bool = True) -> None:
        super().__init__()
        if not 0 < angle < 90:
            raise ValueError(f"angular: angle must be in (0, 90) degrees, got {angle}")
        self.angle, self.normalize = angle, normalize

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("angular", embeddings, labels, ref_emb, ref_labels)
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        x = embeddings.to(dtype)
        x = F.normalize(x, dim=1) if self.normalize else x
        if reference is None:
            cross = ref_gram = x @ x.T
            sq_x = sq_r = cross.diagonal()
        else:
            r = reference.to(dtype)
            r = F.normalize(r, dim=1) if self.normalize else r
            cross, ref_gram = x @ r.T, r @ r.T
            sq_x, sq_r = (x * x).sum(dim=1), ref_gram.diagonal()
        positive, negative = label_masks(labels.to(x.device), ref_labels, is_batch)
        anchors, positives = torch.where(positive & negative.any(dim=1, keepdim=True))
        g_ap, ends = cross[anchors, positives].unsqueeze(1), (sq_x[anchors] + sq_r[positives]).unsqueeze(1)
        centre_sq = sq_r - cross[anchors] - ref_gram[positives] + (ends + 2 * g_ap) / 4
        wide = ends - 2 * g_ap > 4 * math.tan(math.radians(self.angle)) ** 2 * centre_sq
        pair, negatives = torch.where(wide & negative[anchors])
        return anchors[pair], positives[pair], negatives
