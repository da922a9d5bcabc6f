"""FixedTripletSampler: one seeded set of valid triplets, dealt whole, shuffled per epoch, sharded by rank."""

import json
from collections import Counter

import numpy as np
import pytest

from hvkit.api import BatchSampler
from hvkit.testing import check_sampler, run_recipe_text, tiny_recipe
from hvkit_plugins.samplers.fixed_triplets import FixedTripletSampler

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])  # writer 3 has a single image


def epoch(sampler: FixedTripletSampler, e: int = 0) -> list[list[int]]:
    sampler.set_epoch(e)
    return list(sampler)


def triplets_of(batches: list[list[int]]) -> list[tuple[int, ...]]:
    flat = [i for b in batches for i in b]
    return [tuple(flat[k:k + 3]) for k in range(0, len(flat), 3)]


def test_is_a_batch_sampler_and_keeps_the_kit_contract():
    assert isinstance(FixedTripletSampler(LABELS, 6, triplets=10), BatchSampler)
    check_sampler(FixedTripletSampler, {"triplets": 40}, batch_size=12, allow_repeats=True)
    check_sampler(FixedTripletSampler, {"triplets": 25, "drop_last": True}, labels=LABELS, batch_size=6,
                  allow_repeats=True, world_size=1)  # a set drawn from 12 images repeats triplets


def test_every_triplet_is_anchor_positive_negative():
    sampler = FixedTripletSampler(LABELS, 9, seed=3, triplets=500)
    for a, p, n in sampler.triplets:
        assert a != p and LABELS[a] == LABELS[p] and LABELS[n] != LABELS[a]
    assert 3 not in LABELS[sampler.triplets[:, 0]]  # a lone image never anchors
    assert 9 in sampler.triplets[:, 2]  # but serves as a negative


def test_the_set_is_fixed_across_epochs_and_each_epoch_deals_it_whole_in_a_new_order():
    sampler = FixedTripletSampler(LABELS, 6, seed=1, triplets=20)
    fixed = Counter(map(tuple, sampler.triplets.tolist()))
    first, second = triplets_of(epoch(sampler, 0)), triplets_of(epoch(sampler, 1))
    assert Counter(first) == Counter(second) == fixed
    assert first != second
    assert len(epoch(sampler)) == len(sampler) == 10


def test_the_last_batch_is_topped_up_from_the_epoch_start_or_dropped():
    batches = epoch(FixedTripletSampler(LABELS, 9, seed=2, triplets=7))
    assert len(batches) == 3 and all(len(b) == 9 for b in batches)
    dealt = triplets_of(batches)
    assert dealt[7:] == dealt[:2]
    assert len(epoch(FixedTripletSampler(LABELS, 9, seed=2, triplets=7, drop_last=True))) == 2


def test_the_draw_is_uniform_over_anchor_writers_and_their_image_pairs():
    labels = np.repeat(np.arange(4), [2, 3, 6, 10])
    t = FixedTripletSampler(labels, 3, seed=0, triplets=60_000).triplets
    writers = np.bincount(labels[t[:, 0]], minlength=4) / len(t)
    assert np.allclose(writers, 0.25, atol=0.01)
    negatives = labels[t[labels[t[:, 0]] == 0, 2]]
    assert np.allclose(np.bincount(negatives, minlength=4)[1:] / len(negatives), 1 / 3, atol=0.015)
    big = t[labels[t[:, 0]] == 3]
    pairs = np.bincount(big[:, 0] * 21 + big[:, 1], minlength=21 * 21).reshape(21, 21)[11:, 11:]
    off_diagonal = pairs[~np.eye(10, dtype=bool)]
    assert np.all(np.diag(pairs) == 0) and off_diagonal.min() > 0.6 * off_diagonal.mean()


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_gets_whole_triplets_and_the_ranks_make_up_the_batch(world_size):
    single = epoch(FixedTripletSampler(LABELS, 18, seed=4, triplets=30), 2)
    shares = [epoch(FixedTripletSampler(LABELS, 18, seed=4, triplets=30, rank=r, world_size=world_size), 2)
              for r in range(world_size)]
    for step, batch in enumerate(single):
        assert [i for share in shares for i in share[step]] == batch
        for share in shares:
            a, p, n = np.asarray(share[step]).reshape(-1, 3).T
            assert np.all(LABELS[a] == LABELS[p]) and np.all(LABELS[a] != LABELS[n])


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=LABELS, batch_size=8), r"^batch_size 8 must be a multiple of 3 × world_size = 3: "),
    (dict(labels=LABELS, batch_size=6, world_size=3), r"^batch_size 6 must be a multiple of 3 × world_size = 9: "),
    (dict(labels=LABELS, batch_size=6, triplets=0), r"^triplets must be at least 1, got 0$"),
    (dict(labels=LABELS, batch_size=9, triplets=2, drop_last=True), r"^2 triplets fill no batch of 9 rows; "),
    (dict(labels=[5, 5, 5], batch_size=3), r"^a triplet needs two writers, but the labels hold 1$"),
    (dict(labels=[0, 1, 2], batch_size=3), r"^a triplet needs a writer with two images, but every writer has one$"),
])
def test_refusals(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FixedTripletSampler(**kwargs)


def test_metric_train_learns_from_the_fixed_triplets_alone(tmp_path):
    text = tiny_recipe("""
      train:
        stage: metric_train
        label_fraction: 1.0
        batch_size: 12
        sampler: {name: fixed_triplets, triplets: 10}
        loss: triplet
        miner: packaged_triplets
        train: {epochs: 2, log_every: 1, amp: false}
    """, name="fixed_triplets", writers=6, samples_per_writer=4)
    run_dir = run_recipe_text(text, tmp_path)
    rows = [json.loads(line) for line in (run_dir / "stages" / "train" / "log.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    assert len(steps) == 2 * 3 and all(np.isfinite(row["loss"]) for row in steps)  # ⌈30 / 12⌉ batches an epoch
