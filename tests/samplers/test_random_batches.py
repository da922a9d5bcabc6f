"""RandomBatchSampler: shuffling without replacement, determinism, drop_last and DDP shares."""

import numpy as np
import pytest

from hvkit.api import BatchSampler
from hvkit.testing import check_sampler
from hvkit_plugins.samplers.random_batches import RandomBatchSampler

LABELS = np.arange(103) % 7


def epoch(sampler: RandomBatchSampler, e: int = 0) -> list[list[int]]:
    sampler.set_epoch(e)
    return list(sampler)


def test_is_a_batch_sampler():
    assert isinstance(RandomBatchSampler(LABELS, 10), BatchSampler)


def test_drop_last_gives_full_batches_without_repeats():
    batches = epoch(RandomBatchSampler(LABELS, 10, drop_last=True))
    assert len(batches) == 10 and all(len(b) == 10 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat) == 100


def test_without_drop_last_every_index_appears_and_batches_stay_full():
    batches = epoch(RandomBatchSampler(LABELS, 10))
    assert len(batches) == 11 and all(len(b) == 10 and len(set(b)) == 10 for b in batches)
    flat = [i for b in batches for i in b]
    assert set(flat) == set(range(103))
    assert flat[103:] == flat[:7]


def test_shuffles_and_is_deterministic_by_seed_and_epoch():
    sampler = RandomBatchSampler(LABELS, 10, seed=5)
    assert epoch(sampler, 1) == epoch(RandomBatchSampler(LABELS, 10, seed=5), 1)
    assert epoch(sampler, 1) != epoch(sampler, 2)
    assert epoch(sampler, 1) != epoch(RandomBatchSampler(LABELS, 10, seed=6), 1)
    assert [i for b in epoch(sampler, 1) for i in b][:103] != list(range(103))


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [2, 5])
def test_ranks_take_contiguous_slices_of_every_single_process_batch(world_size, drop_last):
    single = epoch(RandomBatchSampler(LABELS, 10, seed=2, drop_last=drop_last), 3)
    shares = [epoch(RandomBatchSampler(LABELS, 10, seed=2, rank=r, world_size=world_size,
                                       drop_last=drop_last), 3) for r in range(world_size)]
    assert [len(s) for s in shares] == [len(single)] * world_size
    for step, batch in enumerate(single):
        assert [i for share in shares for i in share[step]] == batch
        assert all(len(share[step]) == 10 // world_size for share in shares)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=200), "exceeds"),
    (dict(batch_size=10, world_size=3), "multiple of world_size"),
    (dict(batch_size=0), "at least 1"),
    (dict(batch_size=10, rank=-1, world_size=2), "rank"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomBatchSampler(LABELS, **kwargs)


@pytest.mark.parametrize("drop_last", [False, True])
def test_conforms_to_the_sampler_contract(drop_last):
    check_sampler(RandomBatchSampler, {"drop_last": drop_last}, labels=list(range(90)), world_size=2)
