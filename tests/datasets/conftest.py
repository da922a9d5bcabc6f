"""Fixtures: tiny CEDAR-AND-like image trees in tmp_path (the tests never read the real data)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image


def word_image(seed: int, size: int = 64, mode: str = "RGB") -> Image.Image:
    """Dark ink (a random thick line, 0) on white (255), as the CEDAR crops; distinct per seed."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size), 255, np.uint8)
    row = int(rng.integers(8, size - 8))
    start, stop = sorted(rng.integers(0, size, 2))
    pixels[row:row + 3, start:stop + 4] = 0
    pixels[rng.integers(0, size), rng.integers(0, size)] = 0
    grey = Image.fromarray(pixels, "L")
    if mode == "L":
        return grey
    if mode == "RGBA":
        rgba = grey.convert("RGBA")
        alpha = np.full((size, size), 255, np.uint8)
        alpha[:, : size // 2] = 0  # left half transparent (black underneath): must read as white paper
        data = np.asarray(rgba).copy()
        data[:, : size // 2, :3] = 0
        data[..., 3] = alpha
        return Image.fromarray(data, "RGBA")
    return grey.convert(mode)


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def images() -> SimpleNamespace:
    """``images.word_image(seed, size, mode)`` and ``images.save(path, image)`` for tests that build their own files."""
    return SimpleNamespace(word_image=word_image, save=save)


@pytest.fixture
def release_tree(tmp_path: Path) -> Path:
    """The HDL_Forensics release layout: 10 writers x 3 images, plus every quirk the reader handles.

    - 0003a_num2 sits in TrainingSet and ValidationSet with the same bytes (read once);
    - 0004a_num1 (junk) is in the pool and in BMVC_XAI/.../Junk (excluded everywhere);
    - 0009a_num3 is byte-identical to 0010a_num3 (another writer: a cross-writer duplicate);
    - 0005a_num1 is RGBA with a transparent left half, 0006a_num1 is 8-bit grey;
    - notes.txt and a stray.png that is not a CEDAR name are ignored.
    """
    root = tmp_path / "cedar"
    pool = root / "ICFHR_HDL" / "X-2-All-Data"
    for w in range(1, 11):
        for k in range(1, 4):
            name = f"{w:04d}a_num{k}.png"
            folder = "ValidationSet" if k == 3 else "TrainingSet"
            mode = {(5, 1): "RGBA", (6, 1): "L"}.get((w, k), "RGB")
            save(pool / folder / name, word_image(100 * w + k, mode=mode))
    save(pool / "ValidationSet" / "0003a_num2.png", word_image(302))
    save(root / "BMVC_XAI" / "dataset" / "unseen-dataset" / "Junk" / "0004a_num1.png", word_image(401))
    (pool / "ValidationSet" / "0009a_num3.png").write_bytes((pool / "ValidationSet" / "0010a_num3.png").read_bytes())
    save(pool / "TrainingSet" / "stray.png", word_image(7))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def sslhv_tree(tmp_path: Path) -> Path:
    """The SSL-HV layout: 8 train and 3 test writers (3 images each) and an unsupervised pool."""
    root = tmp_path / "AND"
    for part, writers in (("train", range(1, 9)), ("test", range(20, 23))):
        for w in writers:
            for k in range(1, 4):
                name = f"{w:04d}b_num{k}.png"
                image = word_image(1000 + 10 * w + k)
                save(root / "supervised" / part / f"{w:04d}" / name, image)
                save(root / "unsupervised" / name, image)
    return root
