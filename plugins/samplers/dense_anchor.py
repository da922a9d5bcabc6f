"""Densely-Anchored Sampling (Liu et al., ECCV 2022): extra embeddings appended before mining and the loss."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hvkit.api import Component, MetricLoss


class DenseAnchorLoss(MetricLoss):
    """Densely-Anchored Sampling (Liu et al. 2022): T produced embeddings per real one, then mining and loss.

    For every real embedding e of class y, DAS ("DAS: Densely-Anchored Sampling for Deep
    Metric Learning") produces ``num_produce`` (T) embeddings ``normalize(γ ⊙ e + r_b · b)``
    that carry label y and are detached (no gradient flows through them):

    - Discriminative Feature Scaling: per class, a count of how often each channel is among
      an embedding's ``top_k`` (K) largest channels, accumulated over training; γ_c is drawn
      from U[1 - r_s, 1 + r_s] (``scale_range`` r_s) on the class's K most counted channels
      (ties: lower channel first) and is 1 on the others.
    - Memorized Transformation Shifting: per class, a FIFO bank of the ``bank_size`` (Z) latest
      within-class differences ``e_i - e_j`` (i != j, of the batch, in row-major order, zero
      differences skipped); b is a uniformly drawn entry of the class's bank (zero while it is
      empty), scaled by ``shift_scale`` r_b.

    Each batch first updates the counts and banks, then draws γ and b independently for every
    produced embedding, with torch's global generator. The batch handed on is the real
    embeddings followed by the T produced copies, labels repeated; ``miner`` (if given) mines
    it and ``loss`` receives it. Without a miner, an ``indices_tuple`` passed in goes to the loss
    unchanged (it indexes the real embeddings, which keep their places). Counts and banks are
    buffers (saved in checkpoints) of ``num_classes x embedding_dim`` and
    ``num_classes x Z x embedding_dim``; under DDP each rank keeps its own. Defaults T 3, K 4,
    Z 10, r_s 0.01, r_b 0.01, the paper's settings.
    """

    def __init__(self, loss: Component["loss"], num_classes: int, embedding_dim: int,
                 miner: Component["miner"] | None = None, num_produce: int = 3, top_k: int = 4,
                 bank_size: int = 10, scale_range: float = 0.01, shift_scale: float = 0.01) -> None:
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(f"num_classes and embedding_dim must be positive, got {num_classes} "
                             f"and {embedding_dim}")
        if num_produce < 1:
            raise ValueError(f"num_produce must be at least 1, got {num_produce}")
        if not 1 <= top_k <= embedding_dim:
            raise ValueError(f"top_k must lie in [1, embedding_dim={embedding_dim}], got {top_k}")
        if bank_size < 1:
            raise ValueError(f"bank_size must be at least 1, got {bank_size}")
        if not 0 <= scale_range < 1:
            raise ValueError(f"scale_range must lie in [0, 1), got {scale_range}")
        if shift_scale < 0:
            raise ValueError(f"shift_scale must be non-negative, got {shift_scale}")
        self.loss: Callable = loss
        self.miner: Callable | None = miner
        self.needs_global_batch = getattr(loss, "needs_global_batch", False)
        self.reads_norms = getattr(loss, "reads_norms", False)
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.num_produce = num_produce
        self.top_k = top_k
        self.bank_size = bank_size
        self.scale_range = scale_range
        self.shift_scale = shift_scale
        self.register_buffer("channel_counts", torch.zeros(num_classes, embedding_dim,
                                                           dtype=torch.long))
        self.register_buffer("bank", torch.zeros(num_classes, bank_size, embedding_dim))
        self.register_buffer("bank_pushed", torch.zeros(num_classes, dtype=torch.long))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        if indices_tuple is not None and self.miner is not None:
            raise ValueError("dense_anchor got an indices_tuple and has its own miner; mine in "
                             "one place only")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"dense_anchor expects embeddings of shape (B, {self.embedding_dim}), "
                             f"got {tuple(embeddings.shape)}")
        labels = labels.to(embeddings.device, torch.long)
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"dense_anchor labels must lie in [0, {self.num_classes}), got "
                             f"{int(labels.min())} to {int(labels.max())}")
        produced = self.produce(embeddings, labels)
        embeddings = torch.cat([embeddings, produced.to(embeddings.dtype)])
        labels = labels.repeat(self.num_produce + 1)
        if self.miner is not None:
            indices_tuple = self.miner(embeddings, labels)
        return self.loss(embeddings, labels, indices_tuple)

    @torch.no_grad()
    def produce(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Update counts and banks with the batch, then return its T x B produced embeddings."""
        x = embeddings.detach().to(self.bank.dtype)
        top = x.topk(self.top_k, dim=1).indices
        self.channel_counts.index_put_((labels.unsqueeze(1).expand_as(top), top),
                                       torch.ones_like(top), accumulate=True)
        self._push_differences(x, labels)

        t, (b, d) = self.num_produce, x.shape
        frequent = torch.sort(self.channel_counts[labels], dim=1, descending=True,
                              stable=True).indices[:, : self.top_k].expand(t, b, self.top_k)
        gamma = 1 + self.scale_range * (2 * torch.rand(t, b, self.top_k, device=x.device,
                                                               dtype=x.dtype) - 1)
        scale = torch.ones(t, b, d, device=x.device, dtype=x.dtype).scatter_(2, frequent, gamma)
        filled = self.bank_pushed[labels].clamp(max=self.bank_size)
        slot = (torch.rand(t, b, device=x.device) * filled).long()
        shift = self.bank[labels, slot]
        return F.normalize(x * scale + self.shift_scale * shift, dim=2).reshape(t * b, d)

    def _push_differences(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Enqueue the within-class differences ``x_i - x_j`` into the class banks, FIFO."""
        same = labels.unsqueeze(1) == labels.unsqueeze(0)
        i, j = torch.where(same.fill_diagonal_(False))
        diff = x[i] - x[j]
        nonzero = diff.abs().sum(dim=1) > 0
        diff, cls = diff[nonzero], labels[i[nonzero]]
        counts = torch.bincount(cls, minlength=self.num_classes)
        by_class = torch.sort(cls, stable=True)
        first = torch.cumsum(counts, dim=0) - counts
        rank = torch.empty_like(cls)
        rank[by_class.indices] = torch.arange(len(cls), device=cls.device) - first[by_class.values]
        keep = rank >= counts[cls] - self.bank_size
        slot = (self.bank_pushed[cls] + rank) % self.bank_size
        self.bank[cls[keep], slot[keep]] = diff[keep]
        self.bank_pushed += counts
