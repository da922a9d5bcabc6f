"""Batch easy-hard mining (Xuan, Stylianou, Liu & Pless, "Hard Negative Examples are Hard, but Useful", ECCV 2020)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from hvkit_plugins.losses._pairs import label_masks

from ._distances import Distance, check_distance, pair_matrix, partners

Strategy = Literal["hard", "semihard", "easy", "all"]


class BatchEasyHardMiner(nn.Module):
    """One positive and one negative per anchor, each the easiest or the hardest of the batch, as ``(a, p, a, n)``.

    For every anchor a, with d the Euclidean distance between L2-normalised embeddings
    (``normalize=False``: the raw embeddings), ``pos_strategy`` picks among its positives p (same
    label, p != a): ``hard`` the farthest, ``easy`` the nearest (Xuan et al. 2020 train on these
    easy positives), ``semihard`` the farthest still nearer than the chosen negative
    (``d(a, p) < d(a, n)``), ``all`` every one; ``neg_strategy`` picks among its negatives n:
    ``hard`` the nearest, ``easy`` the farthest, ``semihard`` the nearest still farther than the
    chosen positive (``d(a, n) > d(a, p)``), ``all`` every one. ``allowed_pos_range`` and
    ``allowed_neg_range`` ``[low, high]`` leave out of that choice the pairs whose d lies outside
    (``all`` returns every pair regardless, as in PML: ``pair_margin`` thresholds all pairs). With
    ``distance="cosine"`` nearer means a higher cosine, and the ranges are in cosines. An anchor
    lacking a candidate of either kind gives no pair; with ``all`` on one side the other side's
    pairs stand alone. Defaults easy positives and semi-hard negatives: pytorch-metric-learning's.

    The pairs, their order and the ties (the first index wins) are those of PML's
    BatchEasyHardMiner with ``LpDistance(normalize_embeddings=normalize)`` or
    ``CosineSimilarity()``; ``batch_hard`` is ``hard``/``hard`` as triplets. With a reference set
    (``ref_emb``, ``ref_labels``: ``accepts_reference``) the anchors are the batch's rows and the
    candidates the reference's, p = a included (an anchor's own copy in a memory is then its
    easiest positive, which ``xbm`` drops, as PML's CrossBatchMemory does).
    """

    accepts_reference = True

    def __init__(self, pos_strategy: Strategy = "easy", neg_strategy: Strategy = "semihard",
                 allowed_pos_range: tuple[float, float] | None = None,
                 allowed_neg_range: tuple[float, float] | None = None,
                 distance: Distance = "euclidean", normalize: bool = True) -> None:
        super().__init__()
        check_distance("batch_easy_hard", distance, normalize)
        for setting, value in (("pos_strategy", pos_strategy), ("neg_strategy", neg_strategy)):
            if value not in ("hard", "semihard", "easy", "all"):
                raise ValueError(f"batch_easy_hard: {setting} must be 'hard', 'semihard', 'easy' or 'all', "
                                 f"got {value!r}")
        if pos_strategy == neg_strategy == "semihard":
            raise ValueError("batch_easy_hard: pos_strategy and neg_strategy cannot both be 'semihard'; each "
                             "is defined by the other side's choice")
        if {pos_strategy, neg_strategy} == {"semihard", "all"}:
            raise ValueError("batch_easy_hard: pos_strategy/neg_strategy 'semihard' needs one chosen pair on the "
                             "other side, not 'all'")
        for setting, bounds in (("allowed_pos_range", allowed_pos_range), ("allowed_neg_range", allowed_neg_range)):
            if bounds is not None and not (len(bounds) == 2 and all(math.isfinite(b) for b in bounds)
                                           and bounds[0] <= bounds[1]):
                raise ValueError(f"batch_easy_hard: {setting} must be [low, high] with low <= high, got {bounds!r}")
        self.pos_strategy, self.neg_strategy = pos_strategy, neg_strategy
        self.allowed_pos_range, self.allowed_neg_range = allowed_pos_range, allowed_neg_range
        self.distance, self.normalize = distance, normalize

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("batch_easy_hard", embeddings, labels, ref_emb, ref_labels)
        mat = pair_matrix(embeddings, self.distance, self.normalize, reference)
        positive, negative = label_masks(labels.to(mat.device), ref_labels, is_batch)
        allowed_pos, allowed_neg = (mask if bounds is None else mask & (mat >= bounds[0]) & (mat <= bounds[1])
                                    for mask, bounds in ((positive, self.allowed_pos_range),
                                                         (negative, self.allowed_neg_range)))
        far = -mat if self.distance == "cosine" else mat  # larger: farther apart, whichever the distance
        if self.pos_strategy == "semihard":
            neg = _pick(far, allowed_neg, self.neg_strategy == "easy")
            pos = _pick(far, allowed_pos & (far < neg[0].unsqueeze(1)), True)
        elif self.neg_strategy == "semihard":
            pos = _pick(far, allowed_pos, self.pos_strategy == "hard")
            neg = _pick(far, allowed_neg & (far > pos[0].unsqueeze(1)), False)
        else:
            pos = _pick(far, allowed_pos, self.pos_strategy == "hard") if self.pos_strategy != "all" else None
            neg = _pick(far, allowed_neg, self.neg_strategy == "easy") if self.neg_strategy != "all" else None
        if pos is not None and neg is not None:
            anchors = torch.where(pos[2] & neg[2])[0]
            return anchors, pos[1][anchors], anchors, neg[1][anchors]
        mined: list[torch.Tensor] = []
        for chosen, mask in ((pos, positive), (neg, negative)):
            if chosen is None:
                mined += torch.where(mask)
            else:
                anchors = torch.where(chosen[2])[0]
                mined += [anchors, chosen[1][anchors]]
        return tuple(mined)


def _pick(far: torch.Tensor, valid: torch.Tensor, farthest: bool
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the farthest (or nearest) valid entry's value (±inf in a row with none), its column, and whether any."""
    if farthest:
        value, index = far.masked_fill(~valid, float("-inf")).max(dim=1)
    else:
        value, index = far.masked_fill(~valid, float("inf")).min(dim=1)
    return value, index, valid.any(dim=1)
