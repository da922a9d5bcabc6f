"""First-in-first-out queues of past embeddings kept in a module's buffers (xbm, moco_v2, nnclr, swav).

A queue of capacity C is a buffer whose first dimension is the slot, ``(C, ...)``, beside a
count of the rows written so far that its owner keeps in a buffer of its own, so the queue's
state_dict names are the owner's. Extra columns (xbm's labels) are further ``(C, ...)``
buffers written at the same slots. Rows are stored detached, in the buffer's dtype.

Two layouts:

- ring (:func:`ring_slots`, :func:`ring_write`; xbm, moco_v2, nnclr): the k-th row ever
  written (k = 0, 1, …) lives in slot ``k mod C``. A write of n rows touches n slots and needs
  only the count of rows written before it, or any number congruent to it modulo C
  (moco_v2 keeps that count modulo C). Of a write of more than C rows only the last C stay,
  as if the rows had gone in one at a time. The filled part is slots ``[0, min(written, C))``
  (:func:`filled`), in slot order.
- newest first (:func:`push_front`; swav, the layout of the official SwAV code and of swav's
  checkpoints): every write moves the older rows back by n and puts its n rows in slots
  ``[0, n)`` in their own order, an O(C) copy; of more than C rows the first C stay.

A write is in place (the buffer is overwritten) or out of place (a new tensor is returned and
the old one left as it was): out of place for a loss whose backward pass runs after the write
and still needs the queue it was computed with (moco_v2, nnclr).
"""

from __future__ import annotations

import torch


def ring_slots(written: torch.Tensor | int, count: int, capacity: int,
               device: torch.device | str | None = None) -> torch.Tensor:
    """The slots of the rows a write of ``count`` rows keeps, after ``written`` rows: the last ``min(count, C)``.

    Row j of the write is the (written + j)-th row ever written, so the kept rows
    ``j = count - kept … count - 1`` go to ``(written + j) mod C``; returned as a (kept,) int64 tensor.
    """
    kept = min(count, capacity)
    start = torch.as_tensor(written, device=device) + (count - kept)
    return (start + torch.arange(kept, device=start.device)) % capacity


def ring_write(buffer: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor,
               in_place: bool = True) -> torch.Tensor:
    """The last ``len(slots)`` of ``rows`` written at ``slots``: ``buffer`` itself, or out of place a new tensor.

    ``slots`` comes from :func:`ring_slots`; one call per column (embeddings, labels …) with the same slots.
    """
    rows = rows[rows.shape[0] - slots.shape[0]:].detach().to(buffer.device, buffer.dtype)
    slots = slots.to(buffer.device)
    return buffer.index_copy_(0, slots, rows) if in_place else buffer.index_copy(0, slots, rows)


def push_front(buffer: torch.Tensor, rows: torch.Tensor, in_place: bool = True) -> torch.Tensor:
    """Newest-first layout: ``rows`` (n, ...) in slots [0, n) in their order, the older rows moved back by n.

    Of more than C rows the first C stay. Returns ``buffer`` or, out of place, a new tensor.
    """
    rows = rows.detach().to(buffer.device, buffer.dtype)
    pushed = torch.cat([rows, buffer])[:buffer.shape[0]]
    return buffer.copy_(pushed) if in_place else pushed


def filled(buffer: torch.Tensor, written: torch.Tensor | int) -> torch.Tensor:
    """The filled part of a ring or newest-first queue after ``written`` rows: slots [0, min(written, C)), a view."""
    return buffer[:min(int(written), buffer.shape[0])]
