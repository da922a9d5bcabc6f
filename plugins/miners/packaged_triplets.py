"""The triplets a batch arrives packed as: rows (0, 1, 2), (3, 4, 5), …"""

import torch
from torch import nn


class PackagedTripletsMiner(nn.Module):
    """Rows ``(3k, 3k + 1, 3k + 2)`` of the batch as (anchor, positive, negative), for a batch laid out in triplets.

    The counterpart of the ``fixed_triplets`` sampler (pytorch-metric-learning's
    ``EmbeddingsAlreadyPackagedAsTriplets``): the loss then sees exactly the triplets the sampler
    dealt, not every triplet the batch's labels allow. A packed triplet whose labels do not read
    ``y_a = y_p ≠ y_n``, and the last ``B mod 3`` rows, are left out (PML's miner would return
    them); so under any other sampler it mines only the triplets that happen to be valid.
    The embeddings are not read.
    """

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"packaged_triplets: {embeddings.shape[0]} embeddings but {labels.shape[0]} labels")
        starts = torch.arange(0, embeddings.shape[0] - 2, 3, device=labels.device)
        a, p, n = starts, starts + 1, starts + 2
        keep = (labels[a] == labels[p]) & (labels[a] != labels[n])
        return a[keep], p[keep], n[keep]
