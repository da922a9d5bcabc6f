"""The SSL-HV protocol: the sorted first-10 % labelled writers and the balanced same/different pairs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hvkit.api import Split
from hvkit_plugins.datasets.pairs import labelled_writers, sslhv_pairs


def make_split(counts: dict[str, int]) -> Split:
    writers = list(counts)  # deliberately not sorted: labels index this order
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(counts.values())]).astype(np.int64)
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1)
    return Split(images, labels, writers, [f"{writers[l]}/{k}" for k, l in enumerate(labels)])


def test_labelled_writers_are_the_first_fraction_in_sorted_name_order() -> None:
    names = [f"{w:04d}" for w in (17, 3, 250, 41, 8, 99, 12, 5, 60, 31, 77, 2, 140, 9, 23, 88, 54, 6, 300, 1)]
    split = make_split({n: 1 + i % 3 for i, n in enumerate(names)})
    picked = labelled_writers(split, fraction=0.1)  # int(0.1 * 20) = 2 writers
    assert sorted({picked.writers[l] for l in picked.labels}) == ["0001", "0002"]
    assert picked.writers == split.writers
    assert len(picked) == sum(1 + names.index(n) % 3 for n in ("0001", "0002"))
    quarter = labelled_writers(split, fraction=0.25)  # int(0.25 * 20) = 5
    assert sorted({quarter.writers[l] for l in quarter.labels}) == ["0001", "0002", "0003", "0005", "0006"]


def test_labelled_writers_counts_only_writers_present() -> None:
    split = make_split({f"w{i:02d}": 2 for i in range(40)}).subset(np.arange(20))  # 10 writers left
    assert sorted({split.writers[l] for l in labelled_writers(split, 0.2).labels}) == ["w00", "w01"]


@pytest.mark.parametrize("fraction", [0.0, 1.5, 0.01])
def test_labelled_writers_rejects_empty_selections(fraction: float) -> None:
    with pytest.raises(ValueError, match="labelled_writers"):
        labelled_writers(make_split({f"w{i}": 2 for i in range(10)}), fraction)


def test_pairs_are_all_combinations_balanced_with_different_writer_partners() -> None:
    labels = np.array([2, 0, 2, 1, 0, 2, 1, 2, 3])  # writer 3 has one image: no same pairs, still a partner
    i, j, same = sslhv_pairs(labels, seed=0)
    n_same = sum(c * (c - 1) // 2 for c in np.bincount(labels))
    assert len(i) == len(j) == len(same) == 2 * n_same
    assert same.sum() == n_same and same.dtype == np.int64
    pos = set(zip(i[same == 1].tolist(), j[same == 1].tolist()))
    expected = {(a, b) for a, b in itertools.combinations(range(len(labels)), 2) if labels[a] == labels[b]}
    assert pos == expected
    np.testing.assert_array_equal(i[same == 0], i[same == 1])  # each negative shares its anchor
    assert (labels[i[same == 0]] != labels[j[same == 0]]).all()
    assert (labels[i[same == 1]] == labels[j[same == 1]]).all()


def test_different_writer_partner_is_uniform_over_other_writers_images() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    partners = []
    for seed in range(3000):
        i, j, same = sslhv_pairs(labels, seed=seed)
        partners.append(j[(same == 0) & (i == 0)])  # the different-writer partner of anchor 0
    partners = np.concatenate(partners)
    freq = np.bincount(partners, minlength=6) / len(partners)
    np.testing.assert_allclose(freq, [0, 0, 0.25, 0.25, 0.25, 0.25], atol=0.03)


def test_pairs_are_deterministic_by_seed() -> None:
    labels = np.repeat(np.arange(12), 5)
    a, b = sslhv_pairs(labels, seed=7), sslhv_pairs(labels, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], sslhv_pairs(labels, seed=8)[1])


def test_cap_per_writer() -> None:
    labels = np.repeat(np.arange(6), [10, 3, 10, 2, 10, 1])
    i, j, same = sslhv_pairs(labels, seed=1, max_pairs_per_writer=5)
    per_writer = np.bincount(labels[i[same == 1]], minlength=6)
    np.testing.assert_array_equal(per_writer, [5, 3, 5, 1, 5, 0])
    assert len(set(zip(i[same == 1].tolist(), j[same == 1].tolist()))) == same.sum()


@pytest.mark.parametrize("labels, kwargs, message", [
    (np.zeros(5, int), {}, "at least 2 writers"),
    (np.arange(5), {}, "no writer has two images"),
    (np.repeat(np.arange(3), 2), {"max_pairs_per_writer": 0}, "max_pairs_per_writer"),
])
def test_pair_errors(labels: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sslhv_pairs(labels, seed=0, **kwargs)


def test_partners_within_the_group_are_uniform_over_its_other_writers_images() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2, 3, 3, 4, 4, 4])
    groups = np.array([7, 7, 7, 7, 7, 7, 9, 9, 5, 5, 5])  # writers 0-2 in group 7, 3 in 9, 4 in 5 (each alone)
    partners = []
    for seed in range(3000):
        i, j, same = sslhv_pairs(labels, seed=seed, groups=groups)
        assert set(labels[i[same == 1]]) == {0, 2}  # writers 3 and 4 are alone in their groups: no pairs
        assert (groups[i] == groups[j]).all() and (labels[i[same == 0]] != labels[j[same == 0]]).all()
        assert same.sum() == len(same) - same.sum() == 1 + 3
        partners.append(j[(same == 0) & (i == 0)])  # the partner of anchor 0 (writer 0, group 7)
    partners = np.concatenate(partners)
    freq = np.bincount(partners, minlength=11) / len(partners)
    np.testing.assert_allclose(freq, [0, 0, 0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0, 0], atol=0.03)


def test_partners_within_groups_equal_the_plain_draw_with_one_group() -> None:
    labels = np.repeat(np.arange(6), [4, 3, 5, 2, 3, 4])
    plain = sslhv_pairs(labels, seed=3)
    grouped = sslhv_pairs(labels, seed=3, groups=np.zeros(len(labels), np.int64))
    assert all(np.array_equal(a, b) for a, b in zip(plain, grouped))


def test_group_errors() -> None:
    with pytest.raises(ValueError, match=r"groups must give one group per image, got \(3,\) for \(4,\) labels"):
        sslhv_pairs(np.array([0, 0, 1, 1]), seed=0, groups=np.zeros(3))
    with pytest.raises(ValueError, match="no writer with two images shares a group with another writer"):
        sslhv_pairs(np.array([0, 0, 1, 1]), seed=0, groups=np.array([0, 0, 1, 1]))


def test_positives_of_other_documents_are_every_such_combination_and_stay_balanced() -> None:
    labels = np.array([0, 1, 0, 0, 1, 1, 0, 2, 2, 3, 3])
    documents = np.array([0, 2, 0, 1, 2, 3, 1, 4, 4, 5, 6])  # writer 2's two images share document 4
    i, j, same = sslhv_pairs(labels, seed=5, documents=documents)
    expected = {(a, b) for a, b in itertools.combinations(range(len(labels)), 2)
                if labels[a] == labels[b] and documents[a] != documents[b]}
    assert set(zip(i[same == 1].tolist(), j[same == 1].tolist())) == expected and len(expected) == 4 + 2 + 1
    assert same.sum() == len(same) - same.sum() and (labels[i[same == 0]] != labels[j[same == 0]]).all()
    assert np.array_equal(i[same == 0], i[same == 1])
    capped = sslhv_pairs(labels, seed=5, max_pairs_per_writer=1, documents=documents)[0]
    assert len(capped) == 2 * 3  # writers 0, 1 and 3 give one cross-document pair each
    plain = sslhv_pairs(labels, seed=5)
    assert len(plain[0]) == 2 * (6 + 3 + 1 + 1)
    with pytest.raises(ValueError, match="no writer has two images of two documents"):
        sslhv_pairs(labels, seed=0, documents=labels)
    with pytest.raises(ValueError, match=r"documents must give one document per image, got \(3,\) for \(11,\)"):
        sslhv_pairs(labels, seed=0, documents=np.zeros(3))


def test_split_image_groups_follow_labels_and_subsets() -> None:
    split = make_split({"b": 2, "a": 1, "c": 2})
    split.groups = ["latin", "greek", "latin"]
    np.testing.assert_array_equal(split.image_groups(), [1, 1, 0, 1, 1])  # greek 0, latin 1
    np.testing.assert_array_equal(split.subset(np.array([2, 3])).image_groups(), [0, 1])
    with pytest.raises(ValueError, match="the data names no writer groups"):
        make_split({"a": 2}).image_groups()
