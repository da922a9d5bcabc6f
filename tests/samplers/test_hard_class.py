"""HardClassSampler: PK until it sees embeddings, then confusable writers together, deterministic and sharded."""

from collections import Counter

import numpy as np
import pytest

from hvkit.api import BatchSampler
from hvkit.testing import check_sampler
from hvkit_plugins.samplers.hard_class import HardClassSampler, nearest_rows
from hvkit_plugins.samplers.pk import PKSampler

PAIRS = 12
LABELS = np.repeat(np.arange(2 * PAIRS), 6)  # 12 pairs of twin writers (2i, 2i+1), 6 images each


def twin_embeddings(seed: int = 0, dim: int = 16) -> np.ndarray:
    """Unit embeddings whose writer means sit in twin pairs: twins 0.05 apart, pairs far apart."""
    rng = np.random.default_rng(seed)
    pair = rng.normal(size=(PAIRS, dim))
    writer = pair[np.arange(2 * PAIRS) // 2] + 0.05 * rng.normal(size=(2 * PAIRS, dim))
    emb = writer[LABELS] + 0.02 * rng.normal(size=(len(LABELS), dim))
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def epoch(sampler: PKSampler, e: int = 0) -> list[list[int]]:
    sampler.set_epoch(e)
    return list(sampler)


def twins_per_batch(batches: list[list[int]]) -> float:
    """The mean number of twin pairs both in a batch."""
    found = 0
    for batch in batches:
        writers = set(LABELS[batch].tolist())
        found += sum(1 for w in writers if w % 2 == 0 and w + 1 in writers)
    return found / len(batches)


def observed(**kwargs) -> HardClassSampler:
    sampler = HardClassSampler(LABELS, **{"batch_size": 16, "samples_per_class": 2, **kwargs})
    sampler.observe_embeddings(twin_embeddings())
    return sampler


def test_is_a_batch_sampler_that_needs_embeddings():
    sampler = HardClassSampler(LABELS, batch_size=16)
    assert isinstance(sampler, BatchSampler)
    assert sampler.needs_embeddings and sampler.refresh_every == 1


@pytest.mark.filterwarnings("ignore:.*Sampler skips 1 writers")
@pytest.mark.parametrize("kwargs", [{}, {"samples_per_class": 3, "batches_per_epoch": 40, "seed": 5},
                                    {"samples_per_class": 4, "small_classes": "skip"}])
def test_before_any_embeddings_and_with_hard_fraction_zero_it_is_pk(kwargs):
    pk = PKSampler(LABELS[5:], batch_size=24, **kwargs)  # writer 0 keeps one image: replace / skip
    fresh = HardClassSampler(LABELS[5:], batch_size=24, **kwargs)
    plain = HardClassSampler(LABELS[5:], batch_size=24, hard_fraction=0.0, **kwargs)
    plain.observe_embeddings(twin_embeddings()[5:])
    for e in range(3):
        assert epoch(fresh, e) == epoch(plain, e) == epoch(pk, e)


def test_each_writer_learns_its_twin_as_nearest_writer():
    sampler = observed()
    nearest = sampler.nearest_writers
    assert nearest.shape == (2 * PAIRS, 8)  # neighbours default to P = 16 / 2
    np.testing.assert_array_equal(nearest[:, 0], sampler.writers ^ 1)
    assert HardClassSampler(LABELS, batch_size=16).nearest_writers is None


def test_nearest_rows_ranks_by_cosine_in_blocks_and_breaks_ties_by_index():
    unit = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    expected = [[4, 1, 2], [2, 0, 4], [1, 3, 0], [2, 1, 0], [0, 1, 2]]
    for block in (1, 2, 1024):
        assert nearest_rows(unit, 3, block=block).tolist() == expected


@pytest.mark.parametrize("neighbours, bound", [(1, 3.5), (3, 1.8)])
def test_twins_share_batches_far_more_often_than_under_pk(neighbours, bound):
    pk = [b for e in range(4) for b in epoch(PKSampler(LABELS, 16, samples_per_class=2), e)]
    hard = [b for e in range(4) for b in epoch(observed(neighbours=neighbours, hard_fraction=1.0), e)]
    # P = 8 of 24 writers: PK holds 12 · (8/24)(7/23) ≈ 1.2 twin pairs a batch; 4 groups of 2 twins at most 4
    assert twins_per_batch(pk) < 1.6
    assert twins_per_batch(hard) > bound


def test_groups_fill_the_first_slots_and_the_rest_is_drawn_as_pk():
    sampler = observed(neighbours=1, hard_fraction=0.5)  # 2 groups of 2, then 4 PK writers
    together = [LABELS[b][::2].tolist() for b in epoch(sampler)]  # the batch's writers, K = 2
    grouped = sum(w[0] ^ 1 == w[1] for w in together) + sum(w[2] ^ 1 == w[3] for w in together)
    assert grouped >= 0.8 * 2 * len(together)


def test_deterministic_by_seed_epoch_and_embeddings():
    first, again = observed(seed=3), observed(seed=3)
    assert epoch(first, 2) == epoch(again, 2) == epoch(first, 2)
    assert epoch(first, 2) != epoch(first, 3)
    assert epoch(first, 2) != epoch(observed(seed=4), 2)
    other = observed(seed=3)
    other.observe_embeddings(twin_embeddings(seed=1)[:, ::-1] + 0.3 * twin_embeddings(seed=2))
    assert epoch(other, 2) != epoch(first, 2)


def test_state_dict_restores_what_it_observed():
    sampler, fresh = observed(seed=1), HardClassSampler(LABELS, batch_size=16, samples_per_class=2, seed=1)
    assert fresh.state_dict() == {}
    fresh.load_state_dict(sampler.state_dict())
    assert epoch(fresh, 1) == epoch(sampler, 1)
    fresh.load_state_dict({})
    assert epoch(fresh, 1) == epoch(PKSampler(LABELS, 16, samples_per_class=2, seed=1), 1)
    with pytest.raises(ValueError, match=r"\(24, 8\) table"):
        fresh.load_state_dict({"nearest": np.zeros((24, 3), dtype=np.int64)})


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_take_contiguous_slices_of_every_single_process_batch(world_size):
    kwargs = dict(batch_size=16, samples_per_class=2, hard_fraction=1.0, neighbours=1, seed=1)
    single = epoch(observed(**kwargs), 5)
    shares = [epoch(observed(rank=r, world_size=world_size, **kwargs), 5) for r in range(world_size)]
    for step, batch in enumerate(single):
        assert [i for share in shares for i in share[step]] == batch
    for share in shares:  # whole writers, and each group (here twins) on one rank
        assert twins_per_batch(share) > 0.8 * 4 / world_size
        for batch in share:
            assert all(n == 2 for n in Counter(LABELS[batch]).values())


def test_an_epoch_shows_each_image_about_once():
    sampler = observed(hard_fraction=1.0, neighbours=1)
    chunks = (np.bincount(LABELS) // 2).sum()
    assert len(sampler) == chunks // 8
    for e in range(3):
        seen = Counter(i for batch in epoch(sampler, e) for i in batch)
        assert max(seen.values()) <= 2
        assert len(seen) >= 0.9 * sum(seen.values())


def test_every_batch_holds_p_distinct_writers_with_k_images_each():
    for batch in epoch(observed(hard_fraction=1.0, neighbours=2, batches_per_epoch=50)):
        per_writer = Counter(LABELS[batch].tolist())
        assert len(per_writer) == 8 and set(per_writer.values()) == {2}
        assert len(set(batch)) == 16


@pytest.mark.parametrize("shape", [(len(LABELS) - 1, 16), (len(LABELS),), (len(LABELS), 0)])
def test_embeddings_of_the_wrong_shape_raise(shape):
    sampler = HardClassSampler(LABELS, batch_size=16)
    with pytest.raises(ValueError, match=rf"shape \({len(LABELS)}, D\)"):
        sampler.observe_embeddings(np.ones(shape))


def test_non_finite_embeddings_raise():
    emb = twin_embeddings()
    emb[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        HardClassSampler(LABELS, batch_size=16).observe_embeddings(emb)


@pytest.mark.parametrize("kwargs, message", [
    (dict(hard_fraction=1.5), r"hard_fraction must be in \[0, 1\]"),
    (dict(hard_fraction=-0.1), r"hard_fraction must be in \[0, 1\]"),
    (dict(group_size=1), "group_size must be between 2 and the batch's 4 writers"),
    (dict(group_size=5), "group_size must be between 2 and the batch's 4 writers"),
    (dict(refresh_every=0), "refresh_every must be at least 1"),
    (dict(neighbours=0), "neighbours must be between group_size - 1 = 1 and the 23 other writers"),
    (dict(neighbours=24), "neighbours must be between"),
    (dict(hard_fraction=0.2), "holds no group of 2; set it to at least 0.5"),
    (dict(batch_size=24, world_size=2), "group_size 2 must divide the 3 writers each of the 2 ranks"),
    (dict(samples_per_class=0), "samples_per_class must be at least 1"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HardClassSampler(LABELS, **{"batch_size": 16, **kwargs})


def test_hard_fraction_zero_allows_any_group_size_and_world_size():
    HardClassSampler(LABELS, batch_size=24, world_size=2, hard_fraction=0.0)


class _Observed(HardClassSampler):
    """Observes fixed twin-like embeddings on construction, so the conformance kit sees hard batches."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 samples_per_class: int = 2, hard_fraction: float = 1.0) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size, samples_per_class,
                         hard_fraction=hard_fraction)
        rng = np.random.default_rng(0)
        means = rng.normal(size=(int(self.labels.max()) + 1, 8))
        self.observe_embeddings(means[self.labels] + 0.01 * rng.normal(size=(len(self.labels), 8)))


@pytest.mark.parametrize("factory, params", [
    (HardClassSampler, {"samples_per_class": 2}),
    (HardClassSampler, {"samples_per_class": 2, "hard_fraction": 1.0, "batches_per_epoch": 30}),
    (_Observed, {}),
])
def test_conforms_to_the_sampler_contract(factory, params):
    check_sampler(factory, params)


def test_across_documents_is_pk_s_until_embeddings_are_observed():
    labels = np.repeat(np.arange(20), 12)
    documents = labels * 3 + np.tile(np.arange(12) // 4, 20)
    settings = dict(samples_per_class=3, across_documents=True, documents=documents)
    hard, plain = HardClassSampler(labels, 18, **settings), PKSampler(labels, 18, **settings)
    hard.set_epoch(1)
    plain.set_epoch(1)
    batches = list(hard)
    assert batches == list(plain)
    assert all(len(set(documents[chunk])) == 3 for batch in batches for chunk in np.reshape(batch, (-1, 3)))
