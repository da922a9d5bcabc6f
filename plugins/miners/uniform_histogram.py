"""Uniform-histogram pair mining: pairs drawn evenly over the range of their distances (pytorch-metric-learning's)."""

from __future__ import annotations

import torch
from torch import nn

from hvkit_plugins.losses._pairs import label_masks

from ._distances import Distance, check_distance, pair_matrix, partners


class UniformHistogramMiner(nn.Module):
    """Positive and negative pairs sampled evenly over ``num_bins`` bins of their distances, as ``(a1, p, a2, n)``.

    The ordered same-label pairs (a, p), a != p, and the different-label pairs (a, n) are
    binned apart: each kind's range ``[min d, max d]`` is cut into ``num_bins`` equal bins
    (each holding its left edge, the last both), and from every non-empty bin ``pos_per_bin``
    positive (``neg_per_bin`` negative) pairs are drawn uniformly with replacement. The pairs a
    loss sees are thus spread evenly over the distances, not crowded where most pairs lie (the
    easy negatives), in the spirit of the histogram loss (Ustinova & Lempitsky 2016) and of
    distance-weighted sampling (Wu et al. 2017). d is the Euclidean distance between
    L2-normalised embeddings (``normalize=False``: the raw embeddings), or the cosine with
    ``distance="cosine"``. Defaults 100 bins, 10 pairs per bin: pytorch-metric-learning's.

    The pairs are those of PML's UniformHistogramMiner with ``LpDistance(normalize_embeddings=
    normalize)`` or ``CosineSimilarity()``, in its order (bin by bin, the positives first), and on
    CPU the same draws from the same generator state: one ``torch.multinomial`` per non-empty bin,
    as PML makes them, but over that bin's pairs only, found by one sort of the bin numbers
    where PML compares every pair with every bin's edges. Draws come from ``generator`` when one
    is passed, else from torch's global generator (seeded, checkpointed and restored by hvkit).
    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the pairs are
    (batch row, reference row), i = j included: PML's with that reference.
    """

    accepts_reference = True

    def __init__(self, num_bins: int = 100, pos_per_bin: int = 10, neg_per_bin: int = 10,
                 distance: Distance = "euclidean", normalize: bool = True) -> None:
        super().__init__()
        check_distance("uniform_histogram", distance, normalize)
        for setting, value in (("num_bins", num_bins), ("pos_per_bin", pos_per_bin), ("neg_per_bin", neg_per_bin)):
            if value < 1:
                raise ValueError(f"uniform_histogram: {setting} must be at least 1, got {value}")
        self.num_bins, self.pos_per_bin, self.neg_per_bin = num_bins, pos_per_bin, neg_per_bin
        self.distance, self.normalize = distance, normalize

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("uniform_histogram", embeddings, labels, ref_emb, ref_labels)
        mat = pair_matrix(embeddings, self.distance, self.normalize, reference)
        mined: list[torch.Tensor] = []
        for mask, per_bin in zip(label_masks(labels.to(mat.device), ref_labels, is_batch),
                                 (self.pos_per_bin, self.neg_per_bin)):
            rows, cols = torch.where(mask)
            if len(rows):
                drawn = self.draw(mat[rows, cols], per_bin, generator)
                rows, cols = rows[drawn], cols[drawn]
            mined += [rows, cols]
        return tuple(mined)

    def draw(self, values: torch.Tensor, per_bin: int, generator: torch.Generator | None) -> torch.Tensor:
        """Positions in ``values`` of ``per_bin`` draws from each non-empty bin, bin by bin."""
        edges = torch.linspace(values.min(), values.max(), self.num_bins + 1, device=values.device,
                               dtype=values.dtype)
        bins = torch.bucketize(values, edges[1:-1], right=True)  # edges[i] <= v < edges[i + 1]; the last bin closed
        order = torch.argsort(bins, stable=True)  # each bin's pairs in their original order
        counts = torch.bincount(bins, minlength=self.num_bins).tolist()
        ones = torch.ones(max(counts), device=values.device)
        drawn, start = [], 0
        for count in counts:
            if count:
                pick = torch.multinomial(ones[:count], per_bin, replacement=True, generator=generator)
                drawn.append(order[start + pick])
            start += count
        return torch.cat(drawn)
