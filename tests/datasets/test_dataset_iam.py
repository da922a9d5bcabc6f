"""iam: writers from forms.txt, segmentation filter, broken images, aspect-kept sizes, splits, errors, a run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvkit.api import WriterDataset
from hvkit.errors import HvkitError
from hvkit.recipe.load import apply_overrides, load_recipe
from hvkit.recipe.validate import validate
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text
from hvkit_plugins.commands.sources import embed_files, encoder_path
from hvkit_plugins.datasets.iam import iam
from hvkit_plugins.datasets.reading import decode_image, fit_and_pad
from hvkit_plugins.stages.encoder import embed, load_encoder

FORMS = {"a01-000u": "000", "a01-003u": "000", "a01-000x": "001", "b02-010": "002", "c03-020a": "003",
         "d04-030": "004", "e05-040": "005", "f06-050": "006", "g07-060": "007"}
"""Form -> writer. a01-000u and a01-003u share writer 000 while a01-000x is 001 (no prefix rule works)."""
ERR_WORDS = {"a01-000x-01-01", "b02-010-00-02"}
BROKEN = {"a01-000u-01-02": b"", "c03-020a-00-01": b"not a png at all"}
SINGLE = "e05-040-00-00"
"""Writer 005's only word."""


def crop(seed: int, height: int, width: int, mode: str = "L") -> Image.Image:
    """Dark ink strokes (0) on white paper (255), height x width, distinct per seed."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width), 255, np.uint8)
    row = int(rng.integers(2, height - 4))
    pixels[row:row + 3, int(rng.integers(0, width // 2)):width - 2] = 0
    pixels[rng.integers(0, height, 5), rng.integers(0, width, 5)] = 0
    image = Image.fromarray(pixels, "L")
    if mode == "RGBA":
        data = np.asarray(image.convert("RGBA")).copy()
        data[:, : width // 2, :3] = 0
        data[:, : width // 2, 3] = 0  # transparent black on the left: paper, not ink
        return Image.fromarray(data, "RGBA")
    return image


def save(path: Path, image: Image.Image | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        image.save(path)


def ascii_file(name: str, rows: list[str]) -> str:
    return "\n".join([f"#--- {name} ---#", "#", "# iam database information", "#"] + rows) + "\n"


@pytest.fixture
def iam_root(tmp_path: Path) -> Path:
    """A tiny IAM release: 9 forms of 8 writers, 2 lines x 3 words each (writer 005: one word).

    Quirks: two ``err`` words, a zero-byte and a garbage word image, an RGBA word, a word of a
    form missing from forms.txt, a word missing from words.txt, crops of varied non-square sizes,
    lines, forms and the writer-independent split files.
    """
    root = tmp_path / "iam"
    forms_rows, word_rows, line_rows = [], [], []
    for f, (form, writer) in enumerate(FORMS.items()):
        group = form.split("-")[0]
        forms_rows.append(f"{form} {writer} 2 prt 2 2 6 6")
        save(root / ("formsA-D" if group < "e" else "formsE-H") / f"{form}.png", crop(900 + f, 90, 64))
        for line in range(2):
            line_id = f"{form}-{line:02d}"
            line_rows.append(f"{line_id} {'err' if line_id == 'a01-000x-01' else 'ok'} 154 19 408 746 1663 91 A|MOVE")
            save(root / "lines" / group / form / f"{line_id}.png", crop(500 + 10 * f + line, 24, 160))
            for word in range(3):
                word_id = f"{line_id}-{word:02d}"
                if form == "e05-040" and word_id != SINGLE:
                    continue
                status = "err" if word_id in ERR_WORDS else "ok"
                word_rows.append(f"{word_id} {status} 154 1 408 768 27 51 AT A")
                path = root / "words" / group / form / f"{word_id}.png"
                mode = "RGBA" if word_id == "a01-000x-00-00" else "L"
                save(path, BROKEN[word_id] if word_id in BROKEN
                     else crop(100 * f + 10 * line + word, 20 + 5 * word, 30 + 20 * word, mode))
    save(root / "words" / "z09" / "z09-999" / "z09-999-00-00.png", crop(1, 20, 40))  # form not in forms.txt
    save(root / "words" / "g07" / "g07-060" / "g07-060-01-03.png", crop(2, 20, 40))  # not in words.txt
    (root / "ascii").mkdir()
    (root / "ascii" / "forms.txt").write_text(ascii_file("forms.txt", forms_rows))
    (root / "ascii" / "words.txt").write_text(ascii_file("words.txt", word_rows))
    (root / "ascii" / "lines.txt").write_text(ascii_file("lines.txt", line_rows))
    task = root / "largeWriterIndependentTextLineRecognitionTask"
    task.mkdir()
    sets = {"trainset.txt": ["a01-000u-00", "a01-003u-01", "b02-010-00", "c03-020a-01", "d04-030-00"],
            "validationset1.txt": ["f06-050-00"], "validationset2.txt": ["e05-040-01"],
            "testset.txt": ["g07-060-00", "a01-000x-01"]}
    for name, ids in sets.items():
        (task / name).write_text("\n".join(ids) + "\n")
    return root


def every(data) -> dict[str, tuple[str, np.ndarray]]:
    """Image id -> (writer, pixels) over all splits."""
    return {Path(p).stem: (s.writers[label], s.images[i].numpy())
            for s in data.splits.values() for i, (label, p) in enumerate(zip(s.labels, s.paths))}


def test_writers_come_from_forms_txt(iam_root: Path) -> None:
    data = iam(str(iam_root), min_samples=1)
    assert isinstance(data, WriterDataset) and data.name == "iam" and not data.synthetic
    found = every(data)
    for name, (writer, _) in found.items():
        assert writer == FORMS["-".join(name.split("-")[:2])]
    assert found["a01-000u-00-00"][0] == found["a01-003u-00-00"][0] == "000"
    assert found["a01-000x-00-01"][0] == "001"
    for split in data.splits.values():
        assert split.documents == ["-".join(Path(p).stem.split("-")[:2]) for p in split.paths]  # the form
    # 8 forms x 6 words + writer 005's one, less 2 err, 2 broken; z09 (no writer) and g07-060-01-03 (unlisted) out
    assert len(found) == 8 * 6 + 1 - 2 - 2 and "z09-999-00-00" not in found and "g07-060-01-03" not in found
    assert data.info["no_writer"] == 1 and data.info["unlisted_in_segmentation"] == 1


def test_segmentation_ok_drops_err_crops_and_all_keeps_them(iam_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hvkit.datasets"):
        ok = every(iam(str(iam_root), min_samples=1))
    assert not ERR_WORDS & set(ok)
    assert "skipped 1 images whose form is not in forms.txt" in caplog.text
    assert "skipped 1 words images not listed in words.txt" in caplog.text
    (iam_root / "ascii" / "words.txt").unlink()  # segmentation: all does not need words.txt
    everything = iam(str(iam_root), segmentation="all", min_samples=1)
    assert ERR_WORDS <= set(every(everything)) and "g07-060-01-03" in every(everything)
    assert everything.info["segmentation_err_dropped"] == 0
    lines = every(iam(str(iam_root), level="lines", segmentation="ok", min_samples=1))
    assert "a01-000x-01" not in lines and len(lines) == 2 * 9 - 1


def test_broken_images_are_skipped_with_a_warning(iam_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hvkit.datasets"):
        data = iam(str(iam_root), min_samples=1)
    assert sorted(data.info["unreadable"]) == sorted(BROKEN)
    assert "skipped 2 empty or unreadable images" in caplog.text
    assert all(name in caplog.text for name in BROKEN)
    assert not set(BROKEN) & set(every(data))


def test_fit_and_pad_hand_computed() -> None:
    wide = Image.new("L", (50, 10), 0)  # w x h: 50 x 10 of ink
    # into 64 x 256: scale min(64/10, 256/50) = 5.12 -> 51 x 256, top (64 - 51) // 2 = 6
    out = decode_image(_png(wide), "wide", [64, 256], 1, invert=True, keep_aspect=True)[0]
    expected = np.zeros((64, 256), np.uint8)
    expected[6:57] = 255
    np.testing.assert_array_equal(out, expected)
    tall = Image.new("L", (10, 50), 0)
    # scale min(64/50, 256/10) = 1.28 -> 64 x 12.8 -> 64 x 13, left (256 - 13) // 2 = 121
    out = decode_image(_png(tall), "tall", (64, 256), 1, invert=True, keep_aspect=True)[0]
    expected = np.zeros((64, 256), np.uint8)
    expected[:, 121:134] = 255
    np.testing.assert_array_equal(out, expected)
    paper = np.asarray(fit_and_pad(Image.new("L", (4, 4), 7), 8, 16))
    assert (paper[:, 4:12] == 7).all() and (paper[:, :4] == 255).all() and (paper[:, 12:] == 255).all()
    stretched = decode_image(_png(wide), "wide", 32, 3, invert=False)
    assert stretched.shape == (3, 32, 32) and (stretched == 0).all()  # without keep_aspect: stretched


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_sizes_inversion_and_rgba(iam_root: Path) -> None:
    data = iam(str(iam_root), min_samples=1)
    assert all(tuple(s.images.shape[1:]) == (1, 64, 256) and s.images.dtype == torch.uint8
               for s in data.splits.values())
    assert data.info["image_size"] == [64, 256]
    raw = every(iam(str(iam_root), invert=False, min_samples=1))
    for name, (_, pixels) in every(data).items():
        np.testing.assert_array_equal(pixels, 255 - raw[name][1])
    word = every(data)["a01-000u-00-01"][1][0]  # 25 x 50 -> 64 x 128 at columns 64..191
    assert (word[:, :64] == 0).all() and (word[:, 192:] == 0).all() and word[:, 64:192].max() == 255
    opaque = np.asarray(crop(200, 20, 30)).copy()  # a01-000x-00-00 with its transparent left half as paper
    opaque[:, :15] = 255
    expected = decode_image(_png(Image.fromarray(opaque, "L")), "a01-000x-00-00", (64, 256), 1, True, True)
    np.testing.assert_array_equal(every(data)["a01-000x-00-00"][1], expected)
    assert expected[0, :, :124].max() == 0 and expected[0, :, 128:176].max() == 255  # paper left of the ink
    assert iam(str(iam_root), image_size=32, channels=3).splits["train"].images.shape[1:] == (3, 32, 32)
    assert iam(str(iam_root), level="lines").splits["train"].images.shape[1:] == (1, 64, 1024)
    forms = iam(str(iam_root), level="forms", min_samples=1, image_size=[48, 40])
    assert forms.splits["train"].images.shape[1:] == (1, 48, 40)
    assert sorted(every(forms)) == sorted(FORMS)


def test_min_samples_and_max_per_writer(iam_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hvkit.datasets"):
        data = iam(str(iam_root))
    writers = {w for w, _ in every(data).values()}
    assert "005" not in writers and len(writers) == 7 and data.info["writers_below_min_samples"] == 1
    assert "dropped 1 writers with fewer than min_samples=2" in caplog.text
    assert "005" in {w for w, _ in every(iam(str(iam_root), min_samples=1)).values()}
    capped = iam(str(iam_root), max_per_writer=3, seed=5)
    counts = {}
    for writer, _ in every(capped).values():
        counts[writer] = counts.get(writer, 0) + 1
    assert max(counts.values()) <= 3 and counts["000"] == 3  # writer 000 has 12 words in two forms
    assert sorted(every(capped)) == sorted(every(iam(str(iam_root), max_per_writer=3, seed=5)))
    draws = {tuple(sorted(n for n, (w, _) in every(iam(str(iam_root), max_per_writer=3, seed=s)).items()
                          if w == "000")) for s in range(4)}
    assert len(draws) > 1


def test_random_split_is_seeded_and_writer_disjoint(iam_root: Path) -> None:
    a = iam(str(iam_root), val_fraction=0.15, test_fraction=0.3, seed=2)
    b = iam(str(iam_root), val_fraction=0.15, test_fraction=0.3, seed=2)
    assert [len(a.splits[k].writers) for k in ("train", "val", "test")] == [4, 1, 2]
    seen: set[str] = set()
    for name, split in a.splits.items():
        assert split.writers == b.splits[name].writers and split.paths == b.splits[name].paths
        assert torch.equal(split.images, b.splits[name].images)
        assert split.labels.dtype == np.int64 and not seen & set(split.writers)
        seen |= set(split.writers)
    tests = {tuple(iam(str(iam_root), seed=s).splits["test"].writers) for s in range(6)}
    assert len(tests) > 1


def test_standard_split_files(iam_root: Path) -> None:
    data = iam(str(iam_root), split="standard", min_samples=1)
    assert {k: s.writers for k, s in data.splits.items()} == {
        "train": ["000", "002", "003", "004"], "val": ["005", "006"], "test": ["001", "007"]}
    assert every(data)["a01-000u-01-01"][0] == "000"  # every image of a listed writer, not only the listed lines
    (iam_root / "largeWriterIndependentTextLineRecognitionTask" / "validationset2.txt").unlink()
    with pytest.raises(ValueError, match=r"^iam: split: standard needs validationset2.txt under .*use split: random"):
        iam(str(iam_root), split="standard")


def test_standard_split_refuses_a_writer_in_two_sets(iam_root: Path) -> None:
    task = iam_root / "largeWriterIndependentTextLineRecognitionTask"
    (task / "testset.txt").write_text("g07-060-00\na01-003u-00\n")
    with pytest.raises(ValueError, match="put writers 000 in several sets"):
        iam(str(iam_root), split="standard")


def test_forms_txt_errors(iam_root: Path) -> None:
    forms = iam_root / "ascii" / "forms.txt"
    text = forms.read_text()
    forms.write_text(text + "a01-011 Ann 2 prt 7 5 52 36\n")
    line = len(text.splitlines()) + 1
    with pytest.raises(ValueError, match=rf"^iam: .*forms.txt:{line}: malformed line 'a01-011 Ann 2 prt 7 5 52 36'"):
        iam(str(iam_root))
    forms.unlink()
    with pytest.raises(ValueError, match=r"^iam: '.*ascii/forms.txt' not found; IAM's writers come only from"):
        iam(str(iam_root))


def test_words_txt_errors(iam_root: Path) -> None:
    words = iam_root / "ascii" / "words.txt"
    words.write_text(words.read_text() + "a01-000u-00-09 maybe 154 1 408 768 27 51 AT A\n")
    with pytest.raises(ValueError, match=r"^iam: .*words.txt:\d+: malformed line 'a01-000u-00-09 maybe"):
        iam(str(iam_root))
    words.unlink()
    with pytest.raises(ValueError, match=r"words.txt' not found; segmentation: ok needs it"):
        iam(str(iam_root))


@pytest.mark.parametrize("kwargs, message", [
    ({"level": "pages"}, "level='pages' must be one of words, lines, forms"),
    ({"segmentation": "good"}, "segmentation='good' must be ok"),
    ({"split": "official"}, "split='official' must be random"),
    ({"image_size": [64]}, r"image_size=\[64\] must be S or \[H, W\]"),
    ({"image_size": 4}, "image_size=4 must be S or"),
    ({"channels": 2}, "channels=2 must be 1"),
    ({"min_samples": 0}, "min_samples=0 must be >= 1"),
    ({"max_per_writer": 1}, "max_per_writer=1 must be >= min_samples=2"),
    ({"test_fraction": 1.0}, "test_fraction=1.0 must be in"),
])
def test_invalid_settings(iam_root: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^iam: " + message):
        iam(str(iam_root), **kwargs)


def test_missing_root_and_missing_images(tmp_path: Path, iam_root: Path) -> None:
    with pytest.raises(ValueError, match=r"^iam: root '.*nowhere' is not a folder; point data.root at"):
        iam(str(tmp_path / "nowhere"))
    for folder in (iam_root / "lines").iterdir():
        for path in sorted(folder.rglob("*.png")):
            path.unlink()
    with pytest.raises(ValueError, match=r"^iam: no lines images under .*lines/a01/a01-000u/a01-000u-00.png"):
        iam(str(iam_root), level="lines")


RECIPE = """
name: iam_tiny
seed: 0
data: {{name: iam, root: {root}, image_size: [32, 96], val_fraction: 0.3, test_fraction: 0.3}}
model: {{backbone: {{name: small_cnn, embedding_dim: 16}}}}
stages:
  train:
    stage: metric_train
    loss: contrastive
    label_fraction: 1.0
    batch_size: 12
    train: {{epochs: 1, max_steps: 2}}
  test:
    stage: evaluate
    model_from: train
    label_fraction: 1.0
    verifiers: [cosine_pair]
"""


def test_pipeline_runs_on_non_square_iam_words(iam_root: Path, tmp_path: Path) -> None:
    run_dir = run_recipe_text(RECIPE.format(root=iam_root), tmp_path)
    text = json.dumps(json.loads((run_dir / "metrics.json").read_text()))
    assert '"level": "words"' in text and '"image_size": [32, 96]' in text and "cosine_pair" in text
    # the commands (verify, embed, index) read files as the encoder's training data was read
    encoder, state = load_encoder(encoder_path(run_dir, "train"), get_registry(), torch.device("cpu"))
    assert state["image_size"] == [32, 96] and state["keep_aspect"] is True
    test = iam(str(iam_root), image_size=[32, 96], val_fraction=0.3, test_fraction=0.3).splits["test"]
    files = [iam_root / p for p in test.paths[:3]]
    torch.testing.assert_close(embed_files(encoder, state, files, torch.device("cpu"), "backbone", True),
                               embed(encoder, test.images[:3], torch.device("cpu")))


def test_vae_pretraining_refuses_non_square_images_clearly(iam_root: Path, tmp_path: Path) -> None:
    recipe = (RECIPE.split("stages:")[0].format(root=iam_root) + "stages:\n  vae:\n    stage: vae_pretrain\n"
              "    backbone: {name: resnet_vae, latent_dim: 8, image_size: 32}\n    train: {epochs: 1, max_steps: 1}\n")
    with pytest.raises(HvkitError, match=r"reconstructs 32 x 32 images, the data's are 32 x 96; make them square"):
        run_recipe_text(recipe, tmp_path)


@pytest.mark.parametrize("recipe, data", [
    ("vicreg_cedar.yaml", "{{name: iam, root: {root}, level: words}}"),
    ("supervised_cedar.yaml", "{{name: iam, root: {root}, level: lines, split: standard}}"),
])
def test_documented_overrides_validate(iam_root: Path, recipe: str, data: str) -> None:
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    resolved = validate(apply_overrides(load_recipe(recipes / recipe), [f"data={data.format(root=iam_root)}"]),
                        get_registry())
    assert resolved["data"]["name"] == "iam" and resolved["data"]["image_size"] is None
    typo = apply_overrides(load_recipe(recipes / recipe), [f"data={{name: iam, root: {iam_root}, level: pages}}"])
    with pytest.raises(HvkitError, match=r"data.level: expected one of 'words', 'lines', 'forms', got 'pages'"):
        validate(typo, get_registry())
