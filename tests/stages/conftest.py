"""Stage tests run whole recipes: first-party plugins only, synthetic data cached per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvkit.registry import set_registry
from hvkit.testing import run_recipe_text, tiny_recipe

TRAINED = """
train:
  stage: metric_train
  loss: supcon
  head: null
  transform: null
  batch_size: 16
  label_fraction: 0.5
  train: {epochs: 1, max_steps: 2, amp: false, optimizer: {name: SGD, lr: 0.01}}
"""
"""A two-step metric-learning stage ``train``: a network that the stages after it evaluate."""

FITTED_STAGES = TRAINED + """
evaluate:
  stage: evaluate
  model_from: train
  label_fraction: 0.5
  plots: false
  tta: {shifts: 1}
  verifiers: [sslhv_pair, cosine_pair, wccn_pair]
  evaluators: [verification]
hog:
  stage: evaluate
  features: hog
  label_fraction: 0.5
  plots: false
  verifiers: [cosine_pair]
  evaluators: [verification]
fused:
  stage: score_fusion
  members: [evaluate/cosine_pair, hog/cosine_pair]
  plots: false
fused_net:
  stage: score_fusion
  members: [evaluate/sslhv_pair, evaluate/wccn_pair]
  plots: false
"""
"""A trained model's evaluation (with test-time views), a hand-crafted one, their score fusion and a fusion of two of
the model's verifiers, on 16
synthetic writers of 4 words at 32 px: what the commands that read a finished run are tested on."""


@pytest.fixture(autouse=True)
def first_party_registry(monkeypatch, tmp_path):
    monkeypatch.delenv("HVKIT_PLUGINS", raising=False)
    monkeypatch.setenv("HVKIT_CACHE", str(tmp_path / "cache"))
    set_registry(None)
    yield
    set_registry(None)


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory) -> Path:
    """A finished run of :data:`FITTED_STAGES` (seconds), shared by a module's tests."""
    recipe = tiny_recipe(FITTED_STAGES, writers=16, samples_per_writer=4,
                         backbone="{name: small_cnn, width: 8, depth: 2}")
    return run_recipe_text(recipe, tmp_path_factory.mktemp("fitted"))
