"""hierarchical: batches from a few writer groups, several writers of each (PML's HierarchicalSampler)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from pytorch_metric_learning.samplers import HierarchicalSampler as PMLHierarchicalSampler

from hvkit.testing import check_sampler
from hvkit_plugins.samplers.hierarchical import HierarchicalSampler

LABELS = np.repeat(np.arange(24), 5)  # 24 writers of 5 images
GROUPS = LABELS % 4  # 4 groups of 6 writers


def test_conforms():
    check_sampler(HierarchicalSampler, {"samples_per_class": 2}, labels=LABELS, groups=GROUPS, batch_size=16)


def test_each_batch_holds_whole_writers_of_the_chosen_groups():
    sampler = HierarchicalSampler(LABELS, batch_size=24, groups=GROUPS, samples_per_class=3, groups_per_batch=2,
                                  batches_per_combination=3)
    batches = [np.asarray(b) for b in sampler]
    assert len(batches) == len(sampler) == 6 * 3  # C(4, 2) combinations, 3 batches each
    seen = Counter()
    for batch in batches:
        assert len(batch) == 24
        chunks = batch.reshape(8, 3)  # K = 3 images of one writer at a time
        assert all(len(set(LABELS[c])) == 1 for c in chunks)
        writers = LABELS[chunks[:, 0]]
        assert len(set(writers)) == 8  # P = 24 / 2 / 3 = 4 distinct writers per group
        groups = Counter(GROUPS[chunks[:, 0]])
        assert len(groups) == 2 and set(groups.values()) == {4}
        seen[tuple(sorted(groups))] += 1
    assert seen == {pair: 3 for pair in itertools.combinations(range(4), 2)}


def test_epoch_length_equals_pmls():
    for batch_size, k, g, per in ((24, 3, 2, 3), (32, 4, 2, 4), (36, 3, 3, 2)):
        ours = HierarchicalSampler(LABELS, batch_size=batch_size, groups=GROUPS, samples_per_class=k,
                                   groups_per_batch=g, batches_per_combination=per)
        theirs = PMLHierarchicalSampler(np.stack([LABELS, GROUPS], 1), batch_size=batch_size, samples_per_class=k,
                                        batches_per_super_tuple=per, super_classes_per_batch=g)
        assert len(ours) == len(theirs)


def test_small_writers_repeat_images_and_small_groups_are_left_out():
    labels = np.concatenate([np.repeat(np.arange(8), 4), [8, 9]])  # writers 8 and 9: one image each
    groups = np.concatenate([np.repeat(np.arange(8) % 2, 4), [2, 2]])
    sampler = HierarchicalSampler(labels, batch_size=16, groups=groups, samples_per_class=2, groups_per_batch=2,
                                  batches_per_epoch=5)
    batches = [np.asarray(b) for b in sampler]
    assert len(batches) == 5 and all(set(groups[b]) == {0, 1} for b in batches)  # group 2's two writers < P = 4
    tiny = HierarchicalSampler(labels, batch_size=8, groups=groups, samples_per_class=2, groups_per_batch=2,
                               batches_per_epoch=40)
    drawn = np.concatenate([np.asarray(b) for b in tiny])
    assert {32, 33} <= set(drawn.tolist())  # group 2 joins at P = 2, its one-image writers drawn twice
    chunks = np.concatenate([np.asarray(b).reshape(-1, 2) for b in tiny])
    assert any((c == 32).all() for c in chunks)


@pytest.mark.parametrize("kwargs,match", [
    ({"groups": None}, "hierarchical needs writer groups, and the data names none"),
    ({"groups": GROUPS[:10]}, r"groups must give one group per label, got \(10,\) for \(120,\)"),
    ({"batch_size": 20}, r"batch_size 20 must be a multiple of groups_per_batch x samples_per_class x world_size = 8"),
    ({"groups_per_batch": 5, "batch_size": 40}, r"a batch takes 5 groups of 2 writers each, but 4 groups hold"),
    ({"groups": np.arange(120) % 4}, "a writer has images in two groups"),
])
def test_errors(kwargs, match):
    settings = {"batch_size": 16, "groups": GROUPS, "samples_per_class": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        HierarchicalSampler(LABELS, **settings)
