"""First-party components whose factories refuse a value: ``hvkit validate`` reports it before any stage runs.

The good recipes hold values that only the run-time context bounds (a ``w_size`` above the smaller
stand-in ``embedding_dim`` only, ``num_proxies`` above the smaller stand-in ``num_classes``, samplers that
need 64 images of a writer, writer groups or 4,000 writers, which the tiny data lacks): validation lets
them pass. Stages are built too, and a stage's sampler with the stage's own ``batch_size``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hvkit.cli import main
from hvkit.testing import tiny_recipe


@pytest.mark.parametrize("good, bad, message", [
    ("{stage: metric_train, loss: triplet}", "{stage: metric_train, loss: {name: triplet, margin: -1}}",
     "stages.train.loss: margin must be non-negative (default 0.2), got -1"),
    ("{stage: metric_train, transform: {name: handwriting_views, crop_scale: [0.5, 0.9]}}",
     "{stage: metric_train, transform: {name: handwriting_views, crop_scale: [0.9, 0.5]}}",
     "stages.train.transform: random_resized_crop: scale=[0.9, 0.5] must be [min, max] with 0.001 <= min <= max "
     "<= 1.0"),
    ("{stage: evaluate, features: hog, evaluators: [verification, {name: retrieval, recall_at: [1]}]}",
     "{stage: evaluate, features: hog, evaluators: [verification, {name: retrieval, recall_at: [0]}]}",
     "stages.train.evaluators.1: recall_at=[0] must be a non-empty list of positive ranks"),
    ("{stage: metric_train, loss: {name: arcface, margin: 0.5}}",
     "{stage: metric_train, loss: {name: arcface, margin: 28.6}}",
     "stages.train.loss: margin is an angle in radians in [0, pi/2), got 28.6: ArcFace uses 0.5 rad (28.65 degrees); "
     "give radians, not degrees"),
    ("{stage: metric_train, loss: {name: manifold, num_proxies: 5000}}",
     "{stage: metric_train, loss: {name: manifold, num_proxies: 1}}",
     "stages.train.loss: manifold: num_proxies must be at least 2 (each proxy a group of classes; default one per "
     "class), got 1"),
    ("{stage: ssl_pretrain, loss: {name: w_mse, w_size: 100}}",
     "{stage: ssl_pretrain, loss: {name: w_mse, w_size: 1}}",
     "stages.train.loss: w_mse: w_size must be at least 2, got 1; the paper uses 128"),
    ("{stage: ssl_pretrain, head: {name: mlp, dims: [64, 32]}}",
     "{stage: ssl_pretrain, head: {name: mlp, dims: [64, 0]}}",
     "stages.train.head: mlp: dims=[64, 0] must be a non-empty list of sizes >= 1"),
    ("{stage: evaluate, features: hog, verifiers: [{name: sslhv_pair, hidden: [8]}]}",
     "{stage: evaluate, features: hog, verifiers: [{name: sslhv_pair, hidden: []}]}",
     "stages.train.verifiers.0: sslhv_pair: hidden=[] must be a non-empty list of sizes >= 1"),
    ("{stage: metric_train, backbone: {name: vit, image_size: 32, hidden_dim: 96, heads: 4}}",
     "{stage: metric_train, backbone: {name: vit, image_size: 32, hidden_dim: 96, heads: 5}}",
     "stages.train.backbone: vit: hidden_dim=96 must be divisible by heads=5"),
    ("{stage: metric_train, label_fraction: 1.0}", "{stage: metric_train, label_fraction: 1.5}",
     "stages.train: label_fraction must be in (0, 1], got 1.5"),
    ("{stage: ssl_pretrain, local_views: 2}", "{stage: ssl_pretrain, local_views: -1}",
     "stages.train: local_views=-1 must be >= 0 and local_size=32 >= 8 pixels"),
    ("{stage: metric_train, batch_size: 12, sampler: {name: pk, samples_per_class: 3}}",
     "{stage: metric_train, batch_size: 16, sampler: {name: pk, samples_per_class: 3}}",
     "stages.train.sampler: batch_size 16 must be a multiple of samples_per_class 3"),
    ("{stage: metric_train, batch_size: 256, sampler: {name: pk, samples_per_class: 64, small_classes: skip}}",
     "{stage: metric_train, batch_size: 256, sampler: {name: pk, samples_per_class: 0}}",
     "stages.train.sampler: samples_per_class must be at least 1, got 0"),
    ("{stage: metric_train, batch_size: 32, sampler: {name: hierarchical, groups_per_batch: 2}}",
     "{stage: metric_train, batch_size: 36, sampler: {name: hierarchical, groups_per_batch: 2}}",
     "stages.train.sampler: batch_size 36 must be a multiple of groups_per_batch x samples_per_class x world_size = 8"),
    ("{stage: metric_train, batch_size: 60, sampler: {name: hard_class, group_size: 3, neighbours: 4000}}",
     "{stage: metric_train, batch_size: 60, sampler: {name: hard_class, group_size: 1}}",
     "stages.train.sampler: group_size must be between 2 and the batch's 15 writers, got 1"),
    ("{stage: ssl_pretrain, batch_size: 30, sampler: fixed_triplets}",
     "{stage: ssl_pretrain, batch_size: 32, sampler: fixed_triplets}",
     "stages.train.sampler: batch_size 32 must be a multiple of 3 × world_size = 3: every rank's share is whole "
     "(anchor, positive, negative) triplets"),
    ("{stage: metric_train, sampler: {name: tuples_to_weights, miner: {name: batch_hard}, subset_size: 20000}}",
     "{stage: metric_train, sampler: {name: tuples_to_weights, refresh_every: 0}}",
     "stages.train.sampler: refresh_every must be at least 1 (epochs), got 0"),
])
def test_a_refused_value_is_a_one_line_error_at_validation(tmp_path: Path, good: str, bad: str, message: str) -> None:
    for name, stage in (("good", good), ("bad", bad)):
        (tmp_path / f"{name}.yaml").write_text(tiny_recipe(f"  train: {stage}\n", name=name))
    assert CliRunner().invoke(main, ["validate", str(tmp_path / "good.yaml")]).exit_code == 0
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path / 'bad.yaml'}:{message}\n"


@pytest.mark.parametrize("data, message", [
    ("{name: cedar_and, val_fraction: 1.5}", "cedar_and: val_fraction=1.5 must be in [0, 1)"),
    ("{name: cedar_and, image_size: 4}",
     "cedar_and: image_size=4 is too small; use 8 or more (64 is the CEDAR AND size)"),
    ("{name: cedar_and, synthetic_writers: 1}", "cedar_and: synthetic_writers=1 must be at least 2 and "
     "synthetic_samples_per_writer=None at least 1 (null for the defaults, 300 and 12)"),
    ("{name: cedar_and, synthetic_documents: -1}", "cedar_and: synthetic_documents=-1 must be at least 0 (null or 0: "
     "no documents)"),
    ("{name: cedar_and, root: ROOT, synthetic_writers: 10}", "cedar_and: synthetic_writers/synthetic_samples_per_writer"
     "/synthetic_documents apply only without root; remove them or set root: null"),
    ("{name: cedar_and, root: ROOT, synthetic_documents: 3}", "cedar_and: synthetic_writers/"
     "synthetic_samples_per_writer/synthetic_documents apply only without root; remove them or set root: null"),
    ("{name: synthetic_handwriting, documents_per_writer: -2}", "synthetic_handwriting: documents_per_writer (0: none) "
     "and document_jitter must be >= 0 (got -2, 1.0)"),
    ("{name: image_folder, root: ROOT, pattern: '([a-z]+'}", "image_folder: pattern '([a-z]+' is not a valid regular "
     "expression: missing ), unterminated subpattern at position 0"),
    ("{name: image_folder, root: ROOT, pattern: '[a-z]+'}", "image_folder: pattern '[a-z]+' has no group; put the "
     "writer in (...) or (?P<writer>...)"),
    ("{name: iam, root: ROOT, image_size: [64, 4]}", "iam: image_size=[64, 4] must be S or [H, W] with sides of 8 or "
     "more (the words default is [64, 256])"),
    ("{name: iam, root: ROOT, min_samples: 3, max_per_writer: 2}",
     "iam: max_per_writer=2 must be >= min_samples=3 (or null)"),
    ("{name: synthetic_handwriting, num_writers: 1}", "synthetic_handwriting: need num_writers >= 2 and 0 <= "
     "samples_spread < samples_per_writer (got 1, 12, 0)"),
])
def test_a_dataset_value_no_data_could_serve_fails_validation_without_reading_data(tmp_path: Path, data: str,
                                                                                   message: str) -> None:
    stage = "{stage: evaluate, features: hog, evaluators: [verification]}"
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"data: {data.replace('ROOT', str(tmp_path))}\nstages:\n  train: {stage}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2 and result.stderr == f"error: {recipe}:data: {message}\n"
    recipe.write_text(f"data: {{name: cedar_and, root: {tmp_path}}}\nstages:\n  train: {stage}\n"
                      f"  other: {{stage: evaluate, features: hog, data: {data.replace('ROOT', str(tmp_path))}}}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])  # the empty root is the run's error, not this
    assert result.exit_code == 2 and result.stderr == f"error: {recipe}:stages.other.data: {message}\n"
