"""PKSampler: batch composition, determinism, DDP shares and small-writer policies."""

from collections import Counter

import numpy as np
import pytest
import torch

from hvkit.api import BatchSampler
from hvkit.testing import check_sampler
from hvkit_plugins.samplers.pk import PKSampler, dealt_by_document

LABELS = np.repeat(np.arange(30), np.random.default_rng(0).integers(4, 13, 30))  # 30 writers, 4-12 images


def epoch(sampler: PKSampler, e: int = 0) -> list[list[int]]:
    sampler.set_epoch(e)
    return list(sampler)


def test_is_a_batch_sampler():
    assert isinstance(PKSampler(LABELS, batch_size=16), BatchSampler)


@pytest.mark.parametrize("batch_size, k", [(16, 4), (12, 2), (15, 5)])
def test_every_batch_holds_p_distinct_writers_with_k_images_each(batch_size, k):
    sampler = PKSampler(LABELS, batch_size=batch_size, samples_per_class=k)
    sizes = np.bincount(LABELS)
    batches = epoch(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == batch_size
        per_writer = Counter(LABELS[batch].tolist())
        assert len(per_writer) == batch_size // k
        assert set(per_writer.values()) == {k}
        large = [i for i in batch if sizes[LABELS[i]] >= k]
        assert len(set(large)) == len(large)


def test_default_epoch_shows_each_image_about_once():
    sampler = PKSampler(LABELS, batch_size=16)
    chunks = (np.bincount(LABELS) // 4).sum()
    assert len(sampler) == chunks // 4
    for e in range(3):
        seen = Counter(i for batch in epoch(sampler, e) for i in batch)
        assert max(seen.values()) <= 2
        assert len(seen) >= 0.9 * sum(seen.values())


def test_batches_per_epoch_sets_the_length_beyond_one_round():
    sampler = PKSampler(LABELS, batch_size=16, batches_per_epoch=100)
    batches = epoch(sampler)
    assert len(batches) == len(sampler) == 100
    assert all(len(set(LABELS[b].tolist())) == 4 for b in batches)
    assert len({i for b in batches for i in b}) == len(LABELS)


def test_deterministic_by_seed_and_epoch():
    first, again = PKSampler(LABELS, 16, seed=3), PKSampler(LABELS, 16, seed=3)
    assert epoch(first, 2) == epoch(again, 2)
    assert epoch(first, 2) == epoch(first, 2)
    assert epoch(first, 2) != epoch(first, 3)
    assert epoch(first, 2) != epoch(PKSampler(LABELS, 16, seed=4), 2)


def test_accepts_a_label_tensor():
    assert epoch(PKSampler(torch.from_numpy(LABELS), 16)) == epoch(PKSampler(LABELS.tolist(), 16))


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_take_contiguous_slices_of_every_single_process_batch(world_size):
    single = epoch(PKSampler(LABELS, 16, seed=1, batches_per_epoch=14), 5)
    shares = [epoch(PKSampler(LABELS, 16, seed=1, rank=r, world_size=world_size,
                              batches_per_epoch=14), 5) for r in range(world_size)]
    assert [len(s) for s in shares] == [14] * world_size
    for step, batch in enumerate(single):
        assert [i for share in shares for i in share[step]] == batch
    for share in shares:
        for batch in share:
            assert all(n == 4 for n in Counter(LABELS[batch]).values())


def test_length_does_not_depend_on_the_world_size():
    assert len(PKSampler(LABELS, 16)) == len(PKSampler(LABELS, 16, rank=1, world_size=2)) > 0


def test_replace_tops_up_small_writers_from_their_own_images():
    labels = np.concatenate([np.repeat(np.arange(4), 8), [4, 4]])  # writer 4 has 2 images
    sampler = PKSampler(labels, batch_size=8, batches_per_epoch=60)
    small = [sorted(i for i in b if labels[i] == 4) for b in epoch(sampler)]
    small = [s for s in small if s]
    assert small, "the small writer was never drawn"
    for group in small:
        assert len(group) == 4 and set(group) == {32, 33}


def test_skip_drops_small_writers_and_says_so():
    labels = np.concatenate([np.repeat(np.arange(4), 8), [4, 4]])
    with pytest.warns(UserWarning, match="skips 1 writers"):
        sampler = PKSampler(labels, batch_size=8, small_classes="skip", batches_per_epoch=60)
    assert sampler.skipped_classes == [4]
    assert not {32, 33} & {i for b in epoch(sampler) for i in b}


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=10), "multiple of samples_per_class"),
    (dict(batch_size=4), "single writer"),
    (dict(batch_size=16, samples_per_class=0), "at least 1"),
    (dict(batch_size=128), "distinct writers"),
    (dict(batch_size=16, small_classes="pad"), "'replace' or 'skip'"),
    (dict(batch_size=16, world_size=3), "multiple of world_size"),
    (dict(batch_size=16, world_size=8), "multiple of 32"),
    (dict(batch_size=16, batches_per_epoch=0), "at least 1"),
    (dict(batch_size=16, rank=2, world_size=2), "0 <= rank < world_size"),
    (dict(batch_size=16, seed=-1), "non-negative"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PKSampler(LABELS, **kwargs)


def test_too_few_writers_after_skipping_raises():
    labels = np.array([0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="distinct writers"), pytest.warns(UserWarning):
        PKSampler(labels, batch_size=8, small_classes="skip")


@pytest.mark.parametrize("labels", [np.zeros((4, 2), dtype=int), np.array([0.5, 1.0]), []])
def test_bad_labels_raise(labels):
    with pytest.raises(ValueError, match="labels"):
        PKSampler(labels, batch_size=8)


def test_negative_epoch_raises():
    with pytest.raises(ValueError, match="epoch"):
        PKSampler(LABELS, 16).set_epoch(-1)


@pytest.mark.parametrize("params", [{}, {"samples_per_class": 2, "batches_per_epoch": 30}])
def test_conforms_to_the_sampler_contract(params):
    check_sampler(PKSampler, params)


def test_dealing_by_document_takes_one_image_of_each_document_in_turn():
    images = np.array([10, 11, 12, 20, 30, 31])
    documents = np.array([1, 1, 1, 2, 3, 3])
    dealt = dealt_by_document(images, documents, np.random.default_rng(0))
    assert sorted(dealt) == sorted(images)
    order = {d: [i for i in dealt if documents[images == i][0] == d] for d in (1, 2, 3)}
    assert order == {1: [10, 11, 12], 2: [20], 3: [30, 31]}  # each document's images in their given order
    assert len(set(documents[np.searchsorted(images, dealt[:3])])) == 3  # the first pass: each document once
    assert set(documents[np.searchsorted(images, dealt[3:5])]) == {1, 3}  # then each that has a second
    turns = {tuple(dealt_by_document(images, documents, np.random.default_rng(s))[:3]) for s in range(20)}
    assert len(turns) > 1  # the documents' turn is drawn


EQUAL = np.repeat(np.arange(20), 12)  # 20 writers, 12 images each in three documents of four
EQUAL_DOCUMENTS = EQUAL * 3 + np.tile(np.arange(12) // 4, 20)


@pytest.mark.parametrize("k, distinct", [(3, 3), (4, 3), (2, 2)])
def test_across_documents_spreads_each_writer_s_images_over_its_documents(k, distinct):
    spread = PKSampler(EQUAL, 6 * k, samples_per_class=k, across_documents=True, documents=EQUAL_DOCUMENTS)
    plain = PKSampler(EQUAL, 6 * k, samples_per_class=k, documents=EQUAL_DOCUMENTS)
    spread_counts, plain_counts = Counter(), Counter()
    for e in range(3):
        for spread_batch, plain_batch in zip(epoch(spread, e), epoch(plain, e)):
            for counts, batch in ((spread_counts, spread_batch), (plain_counts, plain_batch)):
                for chunk in np.reshape(batch, (-1, k)):
                    assert len(set(EQUAL[chunk])) == 1
                    counts[len(set(EQUAL_DOCUMENTS[chunk]))] += 1
    assert set(spread_counts) == {distinct}
    assert min(plain_counts) < distinct  # shuffled alone, chunks often repeat a document


def test_documents_change_nothing_unless_asked_and_are_needed_when_asked():
    documents = np.arange(len(LABELS)) // 3
    assert epoch(PKSampler(LABELS, 16, documents=documents), 2) == epoch(PKSampler(LABELS, 16), 2)
    with pytest.raises(ValueError, match="across_documents needs each image's document, and the data names none"):
        PKSampler(LABELS, 16, across_documents=True)
    with pytest.raises(ValueError, match="documents holds 3 entries"):
        PKSampler(LABELS, 16, across_documents=True, documents=[0, 1, 2])


def test_conforms_to_the_sampler_contract_across_documents():
    index = np.arange(96)  # the kit's labels are index % 12: each writer's eight images in four documents
    check_sampler(PKSampler, {"across_documents": True}, documents=index // 24 * 12 + index % 12)
