"""Cross-Batch Memory (Wang et al., CVPR 2020): the batch's anchors paired with a FIFO memory of past embeddings."""

from collections.abc import Callable

import torch
from torch import nn

from hvkit.api import Component, MetricLoss
from hvkit.registry import get_registry


class CrossBatchMemoryLoss(MetricLoss):
    """Cross-Batch Memory (XBM, Wang, Zhang, Huang & Scott 2020): the batch's anchors against a memory of past batches.

    XBM ("Cross-Batch Memory for Embedding Learning") keeps a FIFO queue of the last
    ``memory_size`` (M) embeddings and labels, detached. Each step first writes the batch of B
    over the oldest entries, then applies ``loss`` to every pair (i, j) with anchor i in the
    batch and j one of the F <= M filled memory entries, j not i's own copy: a positive when
    ``y_i = y_j``, a negative otherwise. The batch's own pairs are among them (its copies are in
    the memory) but, like every memory entry, carry no gradient: it reaches each pair through
    its anchor only. These are pytorch-metric-learning's CrossBatchMemory semantics (equal to
    it, value and gradient); the official code instead adds the batch's own loss, with gradient
    on both sides, to the memory's. ``miner`` (if given) mines the F memory entries and its
    pairs or triplets whose anchor is one of the batch's copies are kept, the anchor then the
    live embedding (PML's miner sees the anchor's own copy as a candidate too, which only
    matters for an anchor with no other positive).

    ``loss`` is called as ``loss(batch, labels, pairs, ref_emb=memory, ref_labels=memory_labels)``:
    the batch's B rows are the anchors, the F memory rows their partners, so it builds only the
    B x F matrix, and a loss that averages over its anchors (multi_similarity) averages over
    the batch, as in PML. Only a loss with ``accepts_reference`` can serve (contrastive,
    multi_similarity, triplet, circle, generalized_lifted_structure, supcon, tuplet_margin among
    hvkit's); any other is refused with ValueError. An ``indices_tuple`` from outside (a stage's miner) covers
    the batch only and is refused: give xbm its ``miner``. PML's ``enqueue_mask`` is left out.

    The paper enables the memory after a warm-up (1k iterations), once the features drift
    slowly: the first ``start_step`` calls apply the loss (and miner) to the batch alone and
    store nothing. Memory, labels and the counts of enqueued embeddings and calls are buffers
    (saved in checkpoints: a resumed run continues identically). Under DDP xbm needs the global
    batch: every rank stores the same gathered batches, so one memory of global embeddings.
    Defaults M 1024 (PML's), start_step 0.
    """

    needs_global_batch = True  # one memory of the global batches, the same on every rank

    def __init__(self, loss: Component["loss"], embedding_dim: int, memory_size: int = 1024,
                 miner: Component["miner"] | None = None, start_step: int = 0) -> None:
        super().__init__()
        if memory_size < 1:
            raise ValueError(f"xbm: memory_size must be > 0, got {memory_size}")
        if embedding_dim < 1:
            raise ValueError(f"xbm: embedding_dim must be positive, got {embedding_dim}")
        if start_step < 0:
            raise ValueError(f"xbm: start_step must be non-negative, got {start_step}")
        _check_accepts_reference(loss)
        self.loss: Callable = loss
        self.miner: Callable | None = miner
        self.embedding_dim, self.memory_size, self.start_step = embedding_dim, memory_size, start_step
        self.register_buffer("memory", torch.zeros(memory_size, embedding_dim))
        self.register_buffer("memory_labels", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("enqueued", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise ValueError("xbm: an indices_tuple from outside covers the batch only; give xbm its own "
                             "miner, which mines the batch against the memory")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"xbm expects embeddings of shape (B, {self.embedding_dim}), "
                             f"got {tuple(embeddings.shape)}")
        if len(embeddings) > self.memory_size:
            raise ValueError(f"xbm: a batch of {len(embeddings)} embeddings does not fit memory_size "
                             f"{self.memory_size}; make the memory at least one batch long")
        labels = labels.to(embeddings.device, torch.long)
        self.steps += 1
        if self.steps <= self.start_step:  # warm-up: the plain loss on the batch
            mined = self.miner(embeddings, labels) if self.miner is not None else None
            return self.loss(embeddings, labels, mined)
        slots = self.enqueue(embeddings, labels)
        filled = int(self.enqueued.clamp(max=self.memory_size))
        reference = self.memory[:filled].to(embeddings.dtype)
        reference_labels = self.memory_labels[:filled]
        pairs = self.pairs(labels, reference, reference_labels, slots)
        return self.loss(embeddings, labels, pairs, ref_emb=reference, ref_labels=reference_labels)

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Write the batch over the oldest memory entries; return the (B,) slots it took."""
        slots = (self.enqueued + torch.arange(len(labels), device=labels.device)) % self.memory_size
        self.memory[slots] = embeddings.detach().to(self.memory.dtype)
        self.memory_labels[slots] = labels
        self.enqueued += len(labels)
        return slots

    @torch.no_grad()
    def pairs(self, labels: torch.Tensor, reference: torch.Tensor, reference_labels: torch.Tensor,
              slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(anchor rows of the batch, partner rows of the memory), never an anchor with its own copy."""
        b = len(labels)
        if self.miner is None:
            same = labels[:, None] == reference_labels[None, :]
            a2, n = torch.nonzero(~same, as_tuple=True)
            same[torch.arange(b, device=same.device), slots] = False  # not the anchor's own copy
            a1, p = torch.nonzero(same, as_tuple=True)
            return a1, p, a2, n
        row = torch.full((len(reference),), -1, dtype=torch.long, device=labels.device)
        row[slots] = torch.arange(b, device=labels.device)  # memory slot -> batch row of its live embedding
        mined = self.miner(reference, reference_labels)
        groups = [mined] if len(mined) == 3 else [mined[:2], mined[2:]]
        out: list[torch.Tensor] = []
        for anchor, *partners in groups:
            keep = row[anchor] >= 0
            out += [row[anchor[keep]]] + [x[keep] for x in partners]
        return tuple(out)


def losses_with_reference() -> list[str]:
    """The registered loss names whose factory declares ``accepts_reference``, in the registry's order."""
    registry = get_registry()
    return [n for n in registry.names("loss") if getattr(registry.get("loss", n).factory, "accepts_reference", False)]


def _check_accepts_reference(loss: nn.Module) -> None:
    """Raise ValueError unless ``loss`` takes a reference set (``accepts_reference``): the memory is one."""
    if not getattr(loss, "accepts_reference", False):
        accepting = losses_with_reference()
        raise ValueError(f"xbm: {type(loss).__name__} takes no reference set (accepts_reference is not True), "
                         f"so it cannot pair the batch with the memory; wrap a loss that does: "
                         f"{', '.join(accepting) or 'none is installed'}")
