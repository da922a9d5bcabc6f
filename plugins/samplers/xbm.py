"""Cross-Batch Memory (Wang et al., CVPR 2020): the batch's anchors paired with a FIFO memory of past embeddings."""

from collections.abc import Callable

import torch
from torch import nn

from hvkit.api import Component, MetricLoss
from hvkit.registry import get_registry

from .._ring_buffer import filled, ring_slots, ring_write


class CrossBatchMemoryLoss(MetricLoss):
    """Cross-Batch Memory (XBM, Wang, Zhang, Huang & Scott 2020): the batch's anchors against a memory of past batches.

    XBM ("Cross-Batch Memory for Embedding Learning") keeps a FIFO queue of the last
    ``memory_size`` (M) embeddings and labels, detached. Each step first writes the batch of B
    over the oldest entries, then applies ``loss`` to every pair (i, j) with anchor i in the
    batch and j one of the F <= M filled memory entries, j not i's own copy: a positive when
    ``y_i = y_j``, a negative otherwise. The batch's own pairs are among them (its copies are in
    the memory) but, like every memory entry, carry no gradient: it reaches each pair through
    its anchor only. These are pytorch-metric-learning's CrossBatchMemory semantics (equal to
    it, value and gradient, with or without a miner); the official code instead adds the batch's
    own loss, with gradient on both sides, to the memory's.

    ``miner`` (if given) mines the batch against the memory, as PML's does: a miner that accepts a
    reference set (``accepts_reference``, every first-party miner and ``pml``) is called as
    ``miner(batch, labels, ref_emb=memory, ref_labels=memory_labels)``, so it builds the B x F
    matrix only, and its tuples that pair an anchor with its own copy are dropped (PML's
    ``remove_self_comparisons``). A miner without it (one written for plugin API 1.2 or older)
    still works, as minor API versions only add: it mines the F memory entries among themselves
    (F x F) and its tuples whose anchor is one of the batch's copies are kept, the anchor then the
    live embedding. That equals batch x memory mining for miners that judge each pair on its own
    or each anchor's row (margins, batch-hard), except that the own copy is never a candidate,
    which matters for an anchor with no other positive; for miners ranking all pairs at once
    (hdc, distance histograms) it differs.

    ``loss`` is called as ``loss(batch, labels, pairs, ref_emb=memory, ref_labels=memory_labels)``:
    the batch's B rows are the anchors, the F memory rows their partners, so it builds only the
    B x F matrix, and a loss that averages over its anchors (multi_similarity) averages over
    the batch, as in PML. Only a loss with ``accepts_reference`` can serve (hvkit's are listed by
    :func:`losses_with_reference`); any other is refused with ValueError. An ``indices_tuple`` from outside (a stage's miner) covers
    the batch only and is refused: give xbm its ``miner``.

    ``enqueue_mask`` (forward keyword, a (B,) bool tensor; PML's) splits the batch for callers
    that call the loss themselves with two kinds of rows, e.g. MoCo-style queries and momentum
    keys in one batch: only the masked rows are enqueued, the unmasked rows are the anchors, and
    no pair is dropped (no anchor has a copy in the memory). ``xbm(torch.cat([q, k]),
    torch.cat([y, y]), enqueue_mask=torch.arange(2 * B) >= B)`` pairs the queries with every
    stored key, this step's included. It needs a miner that accepts a reference set, or none;
    under several processes pass the mask of the gathered batch. The ``metric_train`` stage
    never passes one: its batch is one set of labelled rows, each both anchor and memory entry.

    The paper enables the memory after a warm-up (1k iterations), once the features drift
    slowly: the first ``start_step`` calls apply the loss (and miner) to the batch alone and
    store nothing (with ``enqueue_mask``: the anchors against this batch's masked rows, detached).
    Memory, labels and the counts of enqueued embeddings and calls are buffers
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

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                enqueue_mask: torch.Tensor | None = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise ValueError("xbm: an indices_tuple from outside covers the batch only; give xbm its own "
                             "miner, which mines the batch against the memory")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"xbm expects embeddings of shape (B, {self.embedding_dim}), "
                             f"got {tuple(embeddings.shape)}")
        labels = labels.to(embeddings.device, torch.long)
        keys, key_labels = embeddings, labels
        if enqueue_mask is not None:
            mask = self._split(enqueue_mask, len(embeddings)).to(embeddings.device)
            keys, key_labels, embeddings, labels = embeddings[mask], labels[mask], embeddings[~mask], labels[~mask]
        if len(keys) > self.memory_size:
            raise ValueError(f"xbm: a batch of {len(keys)} embeddings to enqueue does not fit memory_size "
                             f"{self.memory_size}; make the memory at least one batch long")
        self.steps += 1
        if self.steps <= self.start_step:  # warm-up: the plain loss on the batch
            if enqueue_mask is None:
                mined = self.miner(embeddings, labels) if self.miner is not None else None
                return self.loss(embeddings, labels, mined)
            reference, reference_labels, own = keys.detach(), key_labels, None
        else:
            slots = self.enqueue(keys, key_labels)
            reference = filled(self.memory, self.enqueued).to(embeddings.dtype)
            reference_labels = filled(self.memory_labels, self.enqueued)
            own = slots if enqueue_mask is None else None
        pairs = self.pairs(embeddings, labels, reference, reference_labels, own)
        return self.loss(embeddings, labels, pairs, ref_emb=reference, ref_labels=reference_labels)

    def _split(self, enqueue_mask: torch.Tensor, rows: int) -> torch.Tensor:
        """``enqueue_mask`` checked: a (B,) bool tensor leaving an anchor, with a miner that can use it."""
        is_tensor = isinstance(enqueue_mask, torch.Tensor)
        if not is_tensor or enqueue_mask.dtype != torch.bool or enqueue_mask.shape != (rows,):
            got = (f"{enqueue_mask.dtype} of shape {tuple(enqueue_mask.shape)}" if is_tensor
                   else type(enqueue_mask).__name__)
            raise ValueError(f"xbm: enqueue_mask must be a bool tensor of shape ({rows},), one flag a row, got {got}")
        if bool(enqueue_mask.all()):
            raise ValueError("xbm: enqueue_mask marks every row for the memory, leaving no anchor; leave some "
                             "rows unmasked (the anchors)")
        if self.miner is not None and not _takes_reference(self.miner):
            raise ValueError(f"xbm: enqueue_mask needs a miner that accepts a reference set (accepts_reference); "
                             f"{type(self.miner).__name__} mines the memory alone, where the anchors are not")
        return enqueue_mask

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Write the batch over the oldest memory entries (a ring, in place); return the (B,) slots it took."""
        slots = ring_slots(self.enqueued, len(labels), self.memory_size)
        ring_write(self.memory, embeddings, slots)
        ring_write(self.memory_labels, labels, slots)
        self.enqueued += len(labels)
        return slots.to(labels.device)

    @torch.no_grad()
    def pairs(self, embeddings: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor,
              reference_labels: torch.Tensor, own: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """(anchor rows of the batch, partner rows of the reference), never an anchor with its own copy.

        ``own`` holds each anchor's memory slot, or is None when no anchor has a copy in the reference.
        """
        if self.miner is None:
            same = labels[:, None] == reference_labels[None, :]
            a2, n = torch.nonzero(~same, as_tuple=True)
            if own is not None:
                same[torch.arange(len(labels), device=same.device), own] = False
            a1, p = torch.nonzero(same, as_tuple=True)
            return a1, p, a2, n
        if _takes_reference(self.miner):
            mined = self.miner(embeddings, labels, ref_emb=reference, ref_labels=reference_labels)
            return mined if own is None else _without_own_copies(mined, own)
        row = torch.full((len(reference),), -1, dtype=torch.long, device=labels.device)
        row[own] = torch.arange(len(labels), device=labels.device)  # memory slot -> batch row of its live embedding
        mined = self.miner(reference, reference_labels)
        groups = [mined] if len(mined) == 3 else [mined[:2], mined[2:]]
        out: list[torch.Tensor] = []
        for anchor, *partners in groups:
            keep = row[anchor] >= 0
            out += [row[anchor[keep]]] + [x[keep] for x in partners]
        return tuple(out)


def _takes_reference(miner: Callable) -> bool:
    """Whether ``miner`` declares ``accepts_reference``: it mines batch anchors against a reference set."""
    return getattr(miner, "accepts_reference", False) is True


def _without_own_copies(mined: tuple[torch.Tensor, ...], own: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``mined`` less its positives that are their anchor's own copy (memory slot ``own[anchor]``)."""
    anchor, positive = mined[0], mined[1]
    keep = positive != own[anchor]
    kept = (anchor[keep], positive[keep])
    return (*kept, mined[2][keep]) if len(mined) == 3 else (*kept, *mined[2:])


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
