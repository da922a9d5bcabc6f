"""The FIFO queues of xbm, moco_v2, nnclr and swav: ring and newest-first writes against a plain Python deque over
many random-sized pushes, in and out of place, wrap-around and overflow by hand, extra columns, dtype and device,
and a state_dict round trip of an owner module."""

from __future__ import annotations

import random
from collections import deque

import pytest
import torch
from torch import nn

from hvkit_plugins._ring_buffer import filled, push_front, ring_slots, ring_write

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _pushes(seed: int, capacity: int, steps: int = 60, d: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of random size 0 … 2C + 1 (rows (n, d) float64, labels (n,) int64), every row a distinct value."""
    rng = random.Random(seed)
    batches, written = [], 0
    for _ in range(steps):
        n = rng.randint(0, 2 * capacity + 1)
        ids = torch.arange(written, written + n, dtype=torch.float64)
        batches.append((ids[:, None] + torch.linspace(0, 0.5, d, dtype=torch.float64), 1000 + ids.long()))
        written += n
    return batches


class _Ring(nn.Module):
    """An owner as xbm is one: rows, labels beside them and the count of rows ever written, all buffers."""

    def __init__(self, capacity: int, d: int = 3) -> None:
        super().__init__()
        self.capacity = capacity
        self.register_buffer("rows", torch.zeros(capacity, d, dtype=torch.float64))
        self.register_buffer("labels", torch.full((capacity,), -1, dtype=torch.int64))
        self.register_buffer("written", torch.zeros((), dtype=torch.int64))

    def push(self, rows: torch.Tensor, labels: torch.Tensor, in_place: bool) -> torch.Tensor:
        slots = ring_slots(self.written, len(rows), self.capacity)
        self.rows = ring_write(self.rows, rows, slots, in_place)
        self.labels = ring_write(self.labels, labels, slots, in_place)
        self.written += len(rows)
        return slots


@pytest.mark.parametrize("capacity", [1, 4, 7, 16])
@pytest.mark.parametrize("in_place", [True, False])
def test_ring_writes_equal_a_deque_over_random_pushes(capacity, in_place):
    ring, reference = _Ring(capacity), deque(maxlen=capacity)  # of (k, row, label), k the row's number
    written = 0
    for rows, labels in _pushes(capacity * 10 + in_place, capacity):
        before = ring.rows
        snapshot = before.clone()
        slots = ring.push(rows, labels, in_place)
        for j in range(len(rows)):
            reference.append((written + j, rows[j], labels[j]))
        written += len(rows)
        assert (ring.rows is before) == in_place
        if not in_place:
            assert torch.equal(before, snapshot)  # the old queue is left as it was
        assert slots.tolist() == [k % capacity for k, _, _ in reference][len(reference) - len(slots):]
        assert int(ring.written) == written
        for k, row, label in reference:  # the k-th row ever written sits in slot k mod C, the oldest gone
            assert torch.equal(ring.rows[k % capacity], row) and int(ring.labels[k % capacity]) == int(label)
        kept = sorted(reference, key=lambda entry: entry[0] % capacity)  # the filled part, in slot order
        assert torch.equal(filled(ring.rows, ring.written), torch.stack([row for _, row, _ in kept]) if kept
                           else ring.rows[:0])
        assert filled(ring.labels, ring.written).tolist() == [int(label) for _, _, label in kept]


@pytest.mark.parametrize("capacity", [1, 3, 8])
@pytest.mark.parametrize("in_place", [True, False])
def test_newest_first_writes_equal_a_list_over_random_pushes(capacity, in_place):
    buffer, reference = torch.zeros(capacity, 3, dtype=torch.float64), []
    for rows, _ in _pushes(capacity + 50 * in_place, capacity):
        before, snapshot = buffer, buffer.clone()
        buffer = push_front(buffer, rows, in_place)
        reference = ([*rows] + reference)[:capacity]  # the batch in front, in its order; the first C stay
        assert (buffer is before) == in_place
        if not in_place:
            assert torch.equal(before, snapshot)
        assert torch.equal(filled(buffer, len(reference)), torch.stack(reference) if reference else buffer[:0])


def test_wrap_around_by_hand():
    rows = torch.arange(7.0)[:, None]
    buffer = torch.zeros(5, 1)
    for written, n in ((0, 2), (2, 2), (4, 3)):
        ring_write(buffer, rows[written:written + n], ring_slots(written, n, 5))
    # rows 0-6 into slots 0, 1 | 2, 3 | 4, 0, 1: rows 5 and 6 replace rows 0 and 1
    assert buffer.flatten().tolist() == [5, 6, 2, 3, 4]
    assert filled(buffer, 7).flatten().tolist() == [5, 6, 2, 3, 4]
    assert filled(buffer, 3).flatten().tolist() == [5, 6, 2]


def test_overflow_keeps_the_newest_rows_where_one_at_a_time_would_leave_them():
    # 2 rows written, then 7 into a ring of 4: rows 0-2 of the write would be overwritten within it; rows 3-6,
    # the 5th to 8th of all time (0-based), land in slots 5, 6, 7, 8 mod 4. A count congruent modulo C (moco_v2's
    # position) gives the same slots.
    slots = ring_slots(2, 7, 4)
    assert slots.tolist() == [1, 2, 3, 0]
    assert torch.equal(ring_slots(torch.tensor(2 + 4 * 9), 7, 4), slots)
    assert torch.equal(ring_slots(torch.tensor(2 % 4), 7, 4), slots)
    buffer = ring_write(torch.zeros(4, 1), torch.arange(7.0)[:, None], slots, in_place=False)
    assert buffer.flatten().tolist() == [6, 3, 4, 5]
    assert push_front(torch.zeros(4, 1), torch.arange(7.0)[:, None]).flatten().tolist() == [0, 1, 2, 3]


def test_an_empty_write_changes_nothing():
    buffer = torch.arange(6.0).view(3, 2)
    slots = ring_slots(5, 0, 3)
    assert slots.shape == (0,)
    assert torch.equal(ring_write(buffer.clone(), torch.zeros(0, 2), slots), buffer)
    assert torch.equal(push_front(buffer.clone(), torch.zeros(0, 2)), buffer)


def test_filled_is_a_view_of_the_buffer():
    buffer = torch.zeros(4, 2)
    part = filled(buffer, torch.tensor(3))
    assert part.shape == (3, 2) and part.data_ptr() == buffer.data_ptr()
    assert filled(buffer, 0).shape == (0, 2) and filled(buffer, 9).shape == (4, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_stored_detached_in_the_buffers_dtype_and_device(device):
    buffer = torch.zeros(4, 2, dtype=torch.float64, device=device)
    labels = torch.zeros(4, dtype=torch.int64, device=device)
    rows = torch.randn(3, 2, requires_grad=True)  # float32, on the CPU, with a gradient
    slots = ring_slots(torch.tensor(1, device=device), 3, 4)
    assert slots.device.type == device and slots.dtype == torch.int64
    new = ring_write(buffer, rows * 2, slots, in_place=False)
    assert new.dtype == torch.float64 and new.device.type == device and not new.requires_grad
    torch.testing.assert_close(new[1:].cpu(), (rows * 2).detach().double())
    ring_write(labels, torch.tensor([7, 8, 9]), slots)
    assert labels.tolist() == [0, 7, 8, 9]
    pushed = push_front(buffer, rows, in_place=False)
    assert pushed.dtype == torch.float64 and pushed.device.type == device and not pushed.requires_grad
    assert torch.equal(buffer, torch.zeros_like(buffer))
    pushed_in_place = push_front(buffer.transpose(0, 1), torch.ones(1, 4, dtype=torch.float64, device=device))
    assert pushed_in_place.data_ptr() == buffer.data_ptr() and buffer[:, 0].tolist() == [1, 1, 1, 1]


def test_a_state_dict_round_trip_continues_identically():
    straight, first = _Ring(5), _Ring(5)
    pushes = _pushes(3, 5, steps=12)
    for rows, labels in pushes[:6]:
        straight.push(rows, labels, in_place=False)
        first.push(rows, labels, in_place=True)
    state = first.state_dict()
    assert set(state) == {"rows", "labels", "written"}
    restored = _Ring(5)
    restored.load_state_dict(state)
    for rows, labels in pushes[6:]:
        straight.push(rows, labels, in_place=False)
        restored.push(rows, labels, in_place=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
