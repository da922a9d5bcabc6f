"""Writer groups and documents in the stages: evaluate's ``negatives: same_group`` and documents for
``set_verification``, and metric_train's ``hierarchical`` batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvkit.errors import HvkitError
from hvkit.recipe.validate import STAND_INS
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.image_folder import image_folder
from hvkit_plugins.datasets.pairs import sslhv_pairs
from hvkit_plugins.samplers.hierarchical import HierarchicalSampler
from hvkit_plugins.samplers.pk import PKSampler
from hvkit_plugins.stages.evaluate import load_pairs_digest, pairs_digest

PATTERN = r"^(?P<group>g\d)/(?P<writer>w\d+)/\d+\.png$"
STAGE = """
  pixels:
    stage: evaluate
    features: pixels
    negatives: same_group
    label_fraction: 0.5
    verifiers: [cosine_pair]
    evaluators: [verification]
    plots: false
"""


def grouped_folder(root: Path) -> Path:
    """30 synthetic writers' words as PNGs (dark ink on white) under g<n % 3>/w<n>/<k>.png, writer n."""
    data = cedar_and(synthetic_writers=30, synthetic_samples_per_writer=4, image_size=32, seed=0)
    writers = [(split, label) for split in data.splits.values() for label in np.unique(split.labels)]
    for n, (split, label) in enumerate(writers):
        folder = root / f"g{n % 3}" / f"w{n:02d}"
        folder.mkdir(parents=True)
        for k, image in enumerate(split.images[torch.from_numpy(np.flatnonzero(split.labels == label))]):
            Image.fromarray(255 - image[0].numpy()).save(folder / f"{k}.png")
    return root


def grouped_recipe(stages: str, root: Path) -> str:
    return tiny_recipe(stages, name="groups").replace(
        "data: {name: cedar_and, synthetic_writers: 12, synthetic_samples_per_writer: 4, image_size: 32}",
        f"data: {{name: image_folder, root: {root}, pattern: '{PATTERN}', image_size: 32}}")


def test_partners_come_from_the_anchor_writers_group(tmp_path: Path):
    root = grouped_folder(tmp_path / "words")
    run_dir = run_recipe_text(grouped_recipe(STAGE, root), tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())["pixels"]
    test = image_folder(str(root), pattern=PATTERN, image_size=32).splits["test"]
    groups = test.image_groups()
    first, second, same = sslhv_pairs(np.asarray(test.labels), seed=0, groups=groups)
    assert len(set(test.groups)) > 1 and (groups[first] == groups[second]).all()
    assert load_pairs_digest(run_dir / "stages" / "pixels" / "test_pair_scores.npz") == pairs_digest(
        test, first, second)
    assert metrics["negatives"] == "same_group" and metrics["pairs"]["test"] == len(first)
    assert "Each different-writer partner is drawn from the anchor's writer's group." in (
        run_dir / "report.md").read_text()


def test_documents_reach_the_pairs_and_the_evaluators(tmp_path: Path):
    stage = STAGE.replace("negatives: same_group", "positives: other_document").replace(
        "evaluators: [verification]",
        "evaluators: [verification, {name: set_verification, sizes: [1, 2], trials: 2, bootstrap: 0}]")
    text = grouped_recipe(stage, grouped_folder(tmp_path / "words")).replace(
        PATTERN, r"^(?P<group>g\d)/(?P<writer>w\d+)/(?:(?P<document>0)|[1-3])\.png$")
    run_dir = run_recipe_text(text, tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())["pixels"]
    found = metrics["set_verification"]
    # each writer's image 0 is one document and images 1-3 another (the group unmatched: ""), so
    # two images a side cannot come from two documents, where the four images alone would allow it
    test = image_folder(str(tmp_path / "words"), pattern=PATTERN, image_size=32).splits["test"]
    assert found["cross_document"] is True and found["k1"]["writers"] == len(test.writers)
    assert found["k1"]["trials"] == 2 * 2 * len(test.writers) and found["k2"] == {"writers": 0, "trials": 0}
    # the same-writer pairs: image 0 with each of 1-3, not the three pairs among 1-3
    assert metrics["positives"] == "other_document" and metrics["pairs"]["test"] == 2 * 3 * len(test.writers)
    assert "Each same-writer pair joins images of two documents." in (run_dir / "report.md").read_text()
    assert "roc_auc_same_document" not in metrics["verification"]["cosine_pair"]  # no such pair is left


def test_pairs_within_one_document_are_scored_apart_through_evaluation_and_fusion(tmp_path: Path):
    stages = STAGE.replace("    negatives: same_group\n", "").replace(
        "verifiers: [cosine_pair]", "verifiers: [cosine_pair, sslhv_pair]") + """
  fused:
    stage: score_fusion
    fit: mean
    members: [pixels/cosine_pair, pixels/sslhv_pair]
"""
    text = grouped_recipe(stages, grouped_folder(tmp_path / "words")).replace(
        PATTERN, r"^(?P<group>g\d)/(?P<writer>w\d+)/(?:(?P<document>0)|[1-3])\.png$")
    run_dir = run_recipe_text(text, tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = image_folder(str(tmp_path / "words"), pattern=PATTERN, image_size=32).splits["test"]
    scores = np.load(run_dir / "stages" / "pixels" / "test_pair_scores.npz")
    for found in (metrics["pixels"]["verification"]["cosine_pair"], metrics["fused"]["verification"]["fused"]):
        assert found["same_document_pairs"] == 3 * len(test.writers)  # images 1-3 of each writer: one document
        assert 0.5 < found["roc_auc_same_document"] <= 1.0 and 0.5 < found["roc_auc_other_document"] <= 1.0
    assert scores["same_document"].sum() == 3 * len(test.writers) and not scores["same_document"][~scores["same"]].any()
    cosine, head = (metrics["pixels"]["verification"][v] for v in ("cosine_pair", "sslhv_pair"))
    assert (f"ROC AUC with the {3 * len(test.writers)} same-writer pairs of one document, and with the others, each "
            f"against every different-writer pair: cosine_pair {cosine['roc_auc_same_document']:.4f} / "
            f"{cosine['roc_auc_other_document']:.4f}, sslhv_pair {head['roc_auc_same_document']:.4f} / "
            f"{head['roc_auc_other_document']:.4f}.") in (run_dir / "report.md").read_text()


def test_data_without_documents_is_refused(tmp_path: Path):
    with pytest.raises(HvkitError, match=r"^stage 'pixels': positives: other_document needs each image's "
                                         r"document, and the data \(cedar_and\) names none"):
        run_recipe_text(tiny_recipe(STAGE.replace("negatives: same_group", "positives: other_document"),
                                    writers=24), tmp_path)


def test_data_without_groups_is_refused(tmp_path: Path):
    with pytest.raises(HvkitError, match=r"^stage 'pixels': negatives: same_group needs writer groups, and the "
                                         r"data \(cedar_and\) names none"):
        run_recipe_text(tiny_recipe(STAGE, writers=24), tmp_path)


TRAIN = """
  train:
    stage: metric_train
    label_fraction: 1.0
    sampler: {name: hierarchical, samples_per_class: 2, groups_per_batch: 2}
    batch_size: 8
    train: {max_steps: 3, log_every: 1}
"""


def spy_on(monkeypatch, sampler: type, context: str) -> list[tuple[np.ndarray, object]]:
    """Each build of ``sampler`` as ``(labels, its context argument named context)``; the other of groups and
    documents, which it does not take, is dropped."""
    seen = []
    original = sampler.__init__

    def spy(self, labels, *args, groups=None, documents=None, **kwargs):
        given = {"groups": groups, "documents": documents}[context]
        seen.append((np.asarray(labels), given))
        original(self, labels, *args, **{context: given}, **kwargs)

    monkeypatch.setattr(sampler, "__init__", spy)
    return seen


def test_metric_train_gives_the_sampler_each_images_group(tmp_path: Path, monkeypatch):
    root = grouped_folder(tmp_path / "words")
    seen = spy_on(monkeypatch, HierarchicalSampler, "groups")
    run_recipe_text(grouped_recipe(TRAIN, root), tmp_path)
    train = image_folder(str(root), pattern=PATTERN, image_size=32).splits["train"]
    (stand_in, _), (labels, groups) = seen  # validation builds it once over the stand-in writers
    assert len(stand_in) == len(STAND_INS["labels"][0])
    np.testing.assert_array_equal(groups, train.image_groups())
    assert len(labels) == len(train)
    with pytest.raises(HvkitError, match=r"^stage 'train': hierarchical needs writer groups, and the data names none"):
        run_recipe_text(tiny_recipe(TRAIN, writers=24), tmp_path, "plain")


def test_metric_train_gives_the_sampler_each_images_document(tmp_path: Path, monkeypatch):
    root = grouped_folder(tmp_path / "words")
    seen = spy_on(monkeypatch, PKSampler, "documents")
    stage = TRAIN.replace("{name: hierarchical, samples_per_class: 2, groups_per_batch: 2}",
                          "{name: pk, samples_per_class: 2, across_documents: true}")
    pattern = r"^(?P<group>g\d)/(?P<writer>w\d+)/(?:(?P<document>[01])|[23])\.png$"
    run_recipe_text(grouped_recipe(stage, root).replace(PATTERN, pattern), tmp_path)
    train = image_folder(str(root), pattern=pattern, image_size=32).splits["train"]
    (stand_in, _), (labels, documents) = seen  # validation builds it once over the stand-in writers
    assert len(stand_in) == len(STAND_INS["labels"][0])
    np.testing.assert_array_equal(documents, train.image_documents())
    assert len(labels) == len(train) and len(np.unique(documents)) > len(train.writers)
    with pytest.raises(HvkitError, match=r"^stage 'train': across_documents needs each image's document, and the "
                                         r"data names none"):
        run_recipe_text(tiny_recipe(stage, writers=24), tmp_path, "plain")


def test_synthetic_documents_serve_the_document_protocols_and_the_sampler(tmp_path: Path):
    stages = STAGE.replace("negatives: same_group", "positives: other_document").replace(
        "evaluators: [verification]",
        "evaluators: [verification, {name: set_verification, sizes: [2], trials: 1, bootstrap: 0}]") + TRAIN.replace(
        "{name: hierarchical, samples_per_class: 2, groups_per_batch: 2}",
        "{name: pk, samples_per_class: 2, across_documents: true}")
    text = tiny_recipe(stages, writers=20, samples_per_writer=6).replace(
        "synthetic_samples_per_writer: 6", "synthetic_samples_per_writer: 6, synthetic_documents: 2")
    run_dir = run_recipe_text(text, tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = cedar_and(synthetic_writers=20, synthetic_samples_per_writer=6, synthetic_documents=2,
                     image_size=32).splits["test"]
    found = metrics["pixels"]
    assert found["set_verification"]["cross_document"] is True
    assert found["set_verification"]["k2"]["trials"] == 2 * len(test.writers)  # three words a letter: two a side
    assert found["pairs"]["test"] == 2 * 9 * len(test.writers)  # each writer's 3 × 3 cross-letter pairs, balanced
    assert metrics["train"]["steps"] == 3
