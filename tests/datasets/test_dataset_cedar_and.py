"""cedar_and: the release, SSL-HV and folder layouts, quirks, errors and the synthetic default."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hvkit.api import WriterDataset
from hvkit_plugins.datasets.cedar_and import cedar_and


def all_paths(data) -> list[str]:
    return [p for s in data.splits.values() for p in s.paths]


def expected_pixels(image: Image.Image) -> np.ndarray:
    return 255 - np.asarray(image.convert("L"))


def test_release_layout_reads_every_image_once_and_drops_junk(release_tree: Path) -> None:
    data = cedar_and(root=str(release_tree))
    assert isinstance(data, WriterDataset) and data.name == "cedar_and" and not data.synthetic
    names = sorted(Path(p).stem for p in all_paths(data))
    assert len(names) == len(set(names)) == 29  # 30 names, less one junk; the twin 0003a_num2 once
    assert "0004a_num1" not in names and "stray" not in names
    assert data.info["junk_names_excluded"] == 1
    assert data.info["layout"] == "folder" and data.info["synthetic"] is False
    assert sum(v["images"] for v in data.info["splits"].values()) == 29


def test_split_shapes_labels_and_writer_disjointness(release_tree: Path) -> None:
    data = cedar_and(root=str(release_tree), seed=3)
    assert set(data.splits) == {"train", "val", "test"}
    assert [len(data.splits[k].writers) for k in ("train", "val", "test")] == [7, 1, 2]
    seen: set[str] = set()
    for split in data.splits.values():
        assert split.images.dtype == torch.uint8 and tuple(split.images.shape[1:]) == (1, 64, 64)
        assert split.labels.dtype == np.int64 and len(split.labels) == len(split) == len(split.paths)
        assert split.writers == sorted(split.writers)
        for label, path, document in zip(split.labels, split.paths, split.documents, strict=True):
            assert split.writers[label] == Path(path).stem[:4] and document == Path(path).stem.split("_")[0]
        assert not seen & set(split.writers)
        seen |= set(split.writers)
    assert len(seen) == 10


def test_split_is_seeded(release_tree: Path) -> None:
    a = cedar_and(root=str(release_tree), seed=1)
    b = cedar_and(root=str(release_tree), seed=1)
    assert a.splits["test"].writers == b.splits["test"].writers
    assert torch.equal(a.splits["train"].images, b.splits["train"].images)
    others = {tuple(cedar_and(root=str(release_tree), seed=s).splits["test"].writers) for s in range(2, 8)}
    assert len(others | {tuple(a.splits["test"].writers)}) > 1


def test_pixels_are_grey_inverted_for_rgb_rgba_and_grey(release_tree: Path, images: SimpleNamespace) -> None:
    data = cedar_and(root=str(release_tree), val_fraction=0.0, test_fraction=0.1)
    found = {Path(p).stem: s.images[i, 0].numpy() for s in data.splits.values() for i, p in enumerate(s.paths)}
    np.testing.assert_array_equal(found["0001a_num1"], expected_pixels(images.word_image(101)))
    np.testing.assert_array_equal(found["0006a_num1"], expected_pixels(images.word_image(601, mode="L")))
    rgba = found["0005a_num1"]
    assert (rgba[:, :32] == 0).all()  # transparent pixels are paper, not ink
    np.testing.assert_array_equal(rgba[:, 32:], expected_pixels(images.word_image(501))[:, 32:])
    assert rgba.max() == 255  # the ink is bright


def test_byte_duplicates_are_reported_and_logged(release_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hvkit.datasets"):
        data = cedar_and(root=str(release_tree))
    assert data.info["byte_duplicates"] == [["0009a_num3", "0010a_num3"]]
    assert data.info["cross_writer_duplicates"] == [["0009a_num3", "0010a_num3"]]
    assert "0009a_num3 = 0010a_num3" in caplog.text
    assert "stray.png" in caplog.text  # the non-CEDAR file name is skipped, not silently


def test_same_name_with_other_content_is_a_warning(release_tree: Path, caplog: pytest.LogCaptureFixture,
                                                   images: SimpleNamespace) -> None:
    images.save(release_tree / "extra" / "0001a_num1.png", images.word_image(999))
    with caplog.at_level(logging.WARNING, logger="hvkit.datasets"):
        data = cedar_and(root=str(release_tree))
    assert len(data.info["name_conflicts"]) == 1 and "0001a_num1" in caplog.text


def test_exclude_and_image_size(release_tree: Path) -> None:
    data = cedar_and(root=str(release_tree), exclude=["0001a_num1.png", "0002a_num2"], image_size=32, channels=3)
    names = {Path(p).stem for p in all_paths(data)}
    assert not names & {"0001a_num1", "0002a_num2"} and len(names) == 27
    images = data.splits["train"].images
    assert tuple(images.shape[1:]) == (3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 2])
    assert data.info["user_excluded"] == ["0001a_num1", "0002a_num2"]


def test_sslhv_layout_keeps_its_writer_split(sslhv_tree: Path) -> None:
    data = cedar_and(root=str(sslhv_tree), val_fraction=0.25, seed=0)
    assert data.info["layout"] == "sslhv"
    assert data.splits["test"].writers == ["0020", "0021", "0022"]
    train, val = set(data.splits["train"].writers), set(data.splits["val"].writers)
    assert len(val) == 2 and len(train) == 6 and train | val == {f"{w:04d}" for w in range(1, 9)}
    assert len(data.splits["pretrain"]) == 33 and data.info["pretrain_writers_in_test"] == 3
    assert all(p.startswith("unsupervised/") for p in data.splits["pretrain"].paths)
    test = data.splits["test"]
    assert test.documents == [Path(p).stem[:5] for p in test.paths] and set(test.documents) == {"0020b", "0021b",
                                                                                                "0022b"}
    assert len(set(test.image_documents())) == 3
    whole = cedar_and(root=str(sslhv_tree), val_fraction=0.0)
    assert "val" not in whole.splits and len(whole.splits["train"].writers) == 8


def test_corrupt_image_is_a_one_line_error_naming_the_file(release_tree: Path) -> None:
    bad = release_tree / "ICFHR_HDL" / "X-2-All-Data" / "TrainingSet" / "0007a_num1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match="0007a_num1.png") as err:
        cedar_and(root=str(release_tree))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("make", ["missing", "empty", "only_other_files"])
def test_bad_root_is_an_error_not_a_fallback(tmp_path: Path, make: str, images: SimpleNamespace) -> None:
    root = tmp_path / "data"
    if make != "missing":
        root.mkdir()
    if make == "only_other_files":
        images.save(root / "scan_001.png", images.word_image(1))
    with pytest.raises(ValueError, match="cedar_and") as err:
        cedar_and(root=str(root))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "no training writers"),
    ({"test_fraction": 1.2}, "test_fraction"),
    ({"channels": 2}, "channels"),
    ({"image_size": 4}, "image_size"),
    ({"synthetic_writers": 10}, "only without root"),
])
def test_invalid_settings(release_tree: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cedar_and(root=str(release_tree), **kwargs)


def test_too_few_writers_for_the_split(tmp_path: Path, images: SimpleNamespace) -> None:
    for w in (1, 2):
        images.save(tmp_path / f"{w:04d}a_num1.png", images.word_image(w))
    with pytest.raises(ValueError, match="cannot be split"):
        cedar_and(root=str(tmp_path))


def test_no_root_uses_the_synthetic_default_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HVKIT_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="hvkit.datasets"):
        data = cedar_and(synthetic_writers=10, synthetic_samples_per_writer=3, seed=5)
    assert data.synthetic is True and data.name == "cedar_and"
    assert data.info["synthetic"] is True and "NOT CEDAR" in data.info["note"]
    assert "SYNTHETIC" in caplog.text and "NOT CEDAR" in caplog.text
    assert sum(len(s) for s in data.splits.values()) == 30
