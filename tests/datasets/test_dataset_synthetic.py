"""synthetic_handwriting: determinism, writer consistency, difficulty, the on-disk cache, the dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hvkit_plugins.datasets import synthetic
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.synthetic import (cached_handwriting, document_index, generate_handwriting,
                                              synthetic_handwriting)

SMALL = dict(num_writers=40, samples_per_writer=6, samples_spread=0, image_size=64, style_spread=1.0,
             sample_jitter=1.0, clutter=0.3, seed=0)


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    return generate_handwriting(**SMALL)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HVKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_images_are_words_with_bright_ink(small: tuple[np.ndarray, np.ndarray]) -> None:
    images, writer = small
    assert images.dtype == np.uint8 and images.shape == (240, 64, 64)
    np.testing.assert_array_equal(writer, np.repeat(np.arange(40), 6))
    ink = images.astype(np.float64) / 255
    assert 0.03 < ink.mean() < 0.25  # mostly dark background, some bright strokes
    assert (images.reshape(240, -1).max(1) >= 100).all()  # every image has ink
    cols = (ink > 0.5).any(1).mean(0)
    assert cols[4:60].min() > 0.8  # the word spans the width, as CEDAR AND crops do


def test_same_seed_same_bytes_other_seed_other_images(small: tuple[np.ndarray, np.ndarray]) -> None:
    again, _ = generate_handwriting(**SMALL)
    assert again.tobytes() == small[0].tobytes()
    other, _ = generate_handwriting(**{**SMALL, "seed": 1})
    assert (other != small[0]).mean() > 0.05


def ssl_pair_scores(features: np.ndarray, writer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity and same-writer flag of every pair of images."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    i, j = np.triu_indices(len(writer), 1)
    return (unit @ unit.T)[i, j], (writer[i] == writer[j]).astype(int)


def profiles(images: np.ndarray) -> np.ndarray:
    """A simple handcrafted feature: row and column ink profiles and a 16 x 16 ink map."""
    x = images.astype(np.float64) / 255
    small_map = x.reshape(len(x), 16, 4, 16, 4).mean((2, 4)).reshape(len(x), -1)
    return np.concatenate([x.mean(2), x.mean(1), small_map], 1)


def test_same_writer_samples_are_closer_on_average(small: tuple[np.ndarray, np.ndarray]) -> None:
    images, writer = small
    f = profiles(images)
    d = np.linalg.norm(f[:, None] - f[None], axis=-1)
    same = writer[:, None] == writer[None]
    off = ~np.eye(len(writer), dtype=bool)
    assert d[same & off].mean() < 0.93 * d[~same].mean()


def test_raw_pixels_verify_above_chance_but_far_from_perfectly(small: tuple[np.ndarray, np.ndarray]) -> None:
    images, writer = small
    score, same = ssl_pair_scores(images.reshape(len(images), -1).astype(np.float64), writer)
    auc = roc_auc_score(same, score)
    assert 0.58 < auc < 0.8, auc


def test_style_and_jitter_knobs_move_the_difficulty() -> None:
    def auc(**kw: float) -> float:
        images, writer = generate_handwriting(**{**SMALL, "num_writers": 30, **kw})
        return roc_auc_score(*reversed(ssl_pair_scores(profiles(images), writer)))

    base = auc()
    assert auc(sample_jitter=0.2) > base + 0.05
    assert auc(style_spread=0.0) < 0.6  # no writer style left: near chance


def test_samples_spread_varies_the_count_per_writer() -> None:
    _, writer = generate_handwriting(**{**SMALL, "num_writers": 50, "samples_per_writer": 5, "samples_spread": 3})
    counts = np.bincount(writer)
    assert counts.min() >= 2 and counts.max() <= 8 and len(set(counts)) > 2


def test_image_size_scales_the_rendering() -> None:
    images, _ = generate_handwriting(**{**SMALL, "num_writers": 4, "image_size": 32})
    assert images.shape == (24, 32, 32) and images.max() > 150


def test_documents_are_runs_of_a_writer_s_samples() -> None:
    writer = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    assert document_index(writer, 3).tolist() == [0, 0, 1, 1, 2, 0, 1, 0]  # 5 samples: runs of 2, 2, 1
    assert document_index(writer, 0).tolist() == [0] * 8


def test_without_document_jitter_documents_leave_the_images_as_they_were(small) -> None:
    still, _ = generate_handwriting(**SMALL, documents_per_writer=3, document_jitter=0.0)
    assert still.tobytes() == small[0].tobytes()
    shifted, _ = generate_handwriting(**SMALL, documents_per_writer=3)
    assert (shifted != small[0]).mean() > 0.01


def document_gap(params: dict) -> tuple[float, float]:
    """The mean centred profile cosine of a writer's same-document pairs less that of its cross-document pairs,
    and the ROC AUC of the cross-document pairs against every different-writer pair."""
    images, writer = generate_handwriting(**params)
    document = document_index(writer, params["documents_per_writer"])
    unit = profiles(images)
    unit = unit - unit.mean(0)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    i, j = np.triu_indices(len(writer), 1)
    cosine, same_writer = (unit @ unit.T)[i, j], writer[i] == writer[j]
    same_document = same_writer & (document[i] == document[j])
    across = same_writer & ~same_document
    keep = across | ~same_writer
    return (float(cosine[same_document].mean() - cosine[across].mean()),
            float(roc_auc_score(same_writer[keep], cosine[keep])))


def test_a_writer_s_words_of_one_document_resemble_each_other_more_than_across_documents() -> None:
    params = {**SMALL, "num_writers": 100, "samples_per_writer": 8, "documents_per_writer": 2}
    strong, auc = document_gap({**params, "document_jitter": 4.0})
    none, _ = document_gap({**params, "document_jitter": 0.0})  # the same runs of samples, no sitting's shift
    assert strong > 0.08 and abs(none) < 0.02
    assert auc > 0.6  # the writer still shows across documents


def test_the_dataset_names_each_image_s_document_and_cedar_and_passes_them_on() -> None:
    data = synthetic_handwriting(num_writers=20, samples_per_writer=6, documents_per_writer=3, image_size=32)
    test = data.splits["test"]
    assert test.documents == [f"{test.writers[w]}-d{k // 2}" for w in np.unique(test.labels) for k in range(6)]
    assert data.info["generator"]["documents_per_writer"] == 3
    from_cedar = cedar_and(synthetic_writers=20, synthetic_samples_per_writer=6, synthetic_documents=3,
                           image_size=32).splits["test"]
    assert from_cedar.documents == test.documents and torch.equal(from_cedar.images, test.images)
    assert synthetic_handwriting(num_writers=20, samples_per_writer=6, image_size=32).splits["test"].documents == []


def test_cache_hit_returns_the_same_arrays(cache_in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {**SMALL, "num_writers": 6}
    first = cached_handwriting(**params)
    files = list((cache_in_tmp / "synthetic_handwriting").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # written atomically: no temporary left behind

    def fail(**_: object) -> None:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(synthetic, "generate_handwriting", fail)
    second = cached_handwriting(**params)
    assert second[0].tobytes() == first[0].tobytes() and np.array_equal(second[1], first[1])
    with pytest.raises(AssertionError, match="cache was not used"):
        cached_handwriting(**{**params, "clutter": 0.0})  # another key misses


def test_unreadable_cache_file_is_regenerated(cache_in_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = {**SMALL, "num_writers": 4}
    good = cached_handwriting(**params)
    (path,) = (cache_in_tmp / "synthetic_handwriting").iterdir()
    path.write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="hvkit.datasets"):
        again = cached_handwriting(**params)
    assert "unreadable cache" in caplog.text and again[0].tobytes() == good[0].tobytes()
    assert np.load(path)["images"].tobytes() == good[0].tobytes()


def test_dataset_splits_are_writer_disjoint_and_flagged_synthetic() -> None:
    data = synthetic_handwriting(num_writers=20, samples_per_writer=4, channels=3, seed=2)
    assert data.synthetic and data.info["synthetic"] and data.info["generator"]["version"] == synthetic.GENERATOR_VERSION
    assert [len(data.splits[k].writers) for k in ("train", "val", "test")] == [14, 2, 4]
    assert not set(data.splits["train"].writers) & set(data.splits["test"].writers)
    for split in data.splits.values():
        assert split.images.shape[1:] == (3, 64, 64) and split.images.dtype == torch.uint8
        assert torch.equal(split.images[:, 0], split.images[:, 1])
        assert len(split) == 4 * len(split.writers)
        assert all(p.split("/")[1] == split.writers[label] for p, label in zip(split.paths, split.labels))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_writers": 1}, "num_writers"),
    ({"samples_per_writer": 3, "samples_spread": 3}, "samples_spread"),
    ({"clutter": 1.5}, "clutter"),
    ({"sample_jitter": -1.0}, "sample_jitter"),
    ({"test_fraction": 0.95, "val_fraction": 0.1}, "no training writers"),
])
def test_invalid_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthetic_handwriting(**kwargs)
