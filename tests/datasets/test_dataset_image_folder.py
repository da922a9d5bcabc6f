"""image_folder: writer from the sub-folder or a regex, inversion, resizing, skipped files, errors."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hvkit_plugins.datasets.image_folder import image_folder


@pytest.fixture
def omniglot_like(tmp_path: Path, images: SimpleNamespace) -> Path:
    """<Alphabet>/character<CC>/<CCCC>_<DD>.png with drawer DD, white ink on black ("1 - x" already)."""
    root = tmp_path / "omni"
    for alphabet in ("Greek", "Latin"):
        for c in (1, 2):
            for drawer in range(1, 6):
                images.save(root / alphabet / f"character{c:02d}" / f"{c:04d}_{drawer:02d}.png",
                            images.word_image(1000 * c + 10 * drawer + len(alphabet), size=40, mode="L"))
    (root / "README.txt").write_text("ignored")
    return root


def test_writer_from_the_first_sub_folder(omniglot_like: Path) -> None:
    data = image_folder(str(omniglot_like), val_fraction=0.0, test_fraction=0.5)
    writers = data.splits["train"].writers + data.splits["test"].writers
    assert sorted(writers) == ["Greek", "Latin"] and data.info["skipped_unlabelled"] == 0
    assert sum(len(s) for s in data.splits.values()) == 20


def test_writer_from_regex_groups_joined(omniglot_like: Path) -> None:
    pattern = r"^(?P<a>[^/]+)/character\d+/\d+_(?P<d>\d+)\.png$"
    data = image_folder(str(omniglot_like), pattern=pattern, val_fraction=0.1, test_fraction=0.2, seed=4)
    writers = sorted(w for s in data.splits.values() for w in s.writers)
    assert writers == sorted(f"{a}_{d:02d}" for a in ("Greek", "Latin") for d in range(1, 6))
    for split in data.splits.values():
        assert len(split) == 2 * len(split.writers)  # two characters per drawer
        assert split.images.shape[1:] == (1, 64, 64)


def test_writer_groups_from_the_named_group(omniglot_like: Path) -> None:
    pattern = r"^(?P<group>[^/]+)/character\d+/\d+_(?P<d>\d+)\.png$"
    data = image_folder(str(omniglot_like), pattern=pattern, val_fraction=0.1, test_fraction=0.2, seed=4)
    for split in data.splits.values():
        assert split.writers and split.groups == [w.split("_")[0] for w in split.writers]  # drawer Greek_03: Greek
        names = sorted(set(split.groups))
        assert [names[g] for g in split.image_groups()] == [split.writers[k].split("_")[0] for k in split.labels]
    plain = image_folder(str(omniglot_like), pattern=r"^(?P<a>[^/]+)/character\d+/\d+_(?P<d>\d+)\.png$",
                         val_fraction=0.1, test_fraction=0.2, seed=4)
    assert [s.writers for s in plain.splits.values()] == [s.writers for s in data.splits.values()]
    assert all(not s.groups for s in plain.splits.values())
    with pytest.raises(ValueError, match=r"image_folder: writer '01' falls in two groups, 'character01' and "
                                         r"'character02' \(at Greek/character02/0002_01.png\)"):
        image_folder(str(omniglot_like), pattern=r"^Greek/(?P<group>character\d+)/\d+_(?P<writer>\d+)\.png$")


def test_named_writer_group_and_unmatched_files(omniglot_like: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hvkit.datasets"):
        data = image_folder(str(omniglot_like), pattern=r"^Greek/.*_(?P<writer>\d+)\.png$",
                            val_fraction=0.0, test_fraction=0.2)
    assert sorted(w for s in data.splits.values() for w in s.writers) == [f"{d:02d}" for d in range(1, 6)]
    assert data.info["skipped_unlabelled"] == 10 and "skipped 10" in caplog.text


def test_invert_and_resize(tmp_path: Path, images: SimpleNamespace) -> None:
    for w in ("ann", "bob", "cyd"):
        for k in range(2):
            images.save(tmp_path / w / f"{k}.png", images.word_image(hash((w, k)) % 1000, size=40, mode="L"))
    raw = image_folder(str(tmp_path), invert=False, image_size=40, val_fraction=0.0, test_fraction=0.34)
    inv = image_folder(str(tmp_path), invert=True, image_size=40, val_fraction=0.0, test_fraction=0.34)
    np.testing.assert_array_equal(inv.splits["train"].images.numpy(), 255 - raw.splits["train"].images.numpy())
    small = image_folder(str(tmp_path), image_size=20, channels=3, val_fraction=0.0, test_fraction=0.34)
    assert small.splits["test"].images.shape[1:] == (3, 20, 20)


def test_byte_duplicates_across_writers_are_reported(tmp_path: Path, images: SimpleNamespace) -> None:
    for w in ("a", "b", "c"):
        images.save(tmp_path / w / "x.png", images.word_image(ord(w)))
    images.save(tmp_path / "d" / "copy.png", images.word_image(ord("a")))
    data = image_folder(str(tmp_path), val_fraction=0.0, test_fraction=0.25)
    assert data.info["cross_writer_duplicates"] == [["a/x.png", "d/copy.png"]]


def test_documents_from_the_named_group_are_not_part_of_the_writer(omniglot_like: Path) -> None:
    pattern = r"^(?P<a>[^/]+)/(?P<document>character\d+)/\d+_(?P<d>\d+)\.png$"
    data = image_folder(str(omniglot_like), pattern=pattern, val_fraction=0.1, test_fraction=0.2, seed=4)
    plain = image_folder(str(omniglot_like), pattern=r"^(?P<a>[^/]+)/character\d+/\d+_(?P<d>\d+)\.png$",
                         val_fraction=0.1, test_fraction=0.2, seed=4)
    assert [s.writers for s in data.splits.values()] == [s.writers for s in plain.splits.values()]
    for split in data.splits.values():
        assert split.documents == [f"{split.writers[k]}/{p.split('/')[1]}" for k, p in zip(split.labels, split.paths)]
        codes = split.image_documents()
        assert len(set(codes)) == len(split) and split.subset(np.array([1, 0])).documents == split.documents[1::-1]
    assert all(not s.documents and s.image_documents() is None for s in plain.splits.values())


@pytest.mark.parametrize("pattern, message", [("([a-z", "not a valid regular expression"),
                                              ("[a-z]+", "has no group"), (r"(?P<document>\d+)", "has no group"),
                                              (r"^nomatch/(\d+)", "no images")])
def test_pattern_errors(omniglot_like: Path, pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        image_folder(str(omniglot_like), pattern=pattern)


def test_missing_or_flat_root(tmp_path: Path, images: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        image_folder(str(tmp_path / "nowhere"))
    images.save(tmp_path / "flat.png", images.word_image(1))
    with pytest.raises(ValueError, match="no images"):
        image_folder(str(tmp_path))  # files directly in root carry no writer folder
