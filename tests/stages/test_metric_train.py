"""metric_train's options: the semi-supervised term, a pre-trained backbone loaded into a variant, and a
sampler that learns from the encoder (hard_class)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvkit.engine import Trainer, load_checkpoint
from hvkit.engine.trainer import read_log
from hvkit.errors import HvkitError
from hvkit.pipeline import run
from hvkit.registry import get_registry
from hvkit.testing import failing_after_step, run_recipe_text, tiny_recipe
from hvkit_plugins.losses.adaface import AdaFaceLoss
from hvkit_plugins.losses.cosface import CosFaceLoss
from hvkit_plugins.datasets.pairs import labelled_writers
from hvkit_plugins.samplers.hard_class import HardClassSampler
from hvkit_plugins.stages import metric_train
from hvkit_plugins.stages.encoder import Encoder, load_encoder
from hvkit_plugins.stages.metric_train import MetricTrain, _WithExpander

RECIPE = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    head: {name: mlp, dims: [32, 32]}
    batch_size: 16
    train: {epochs: 1, max_steps: 2}
  semi:
    stage: metric_train
    init_from: pretrain
    label_fraction: 0.5
    batch_size: 16
    unlabelled_loss: vicreg
    unlabelled_weight: 0.5
    unlabelled_batch_size: 12
    train: {epochs: 3, max_steps: 3, log_every: 1}
""", name="semi", seed=3, writers=30, samples_per_writer=6, image_size=None)


def _run(tmp_path: Path, text: str) -> Path:
    """Run the recipe ``text`` quietly on the CPU; returns the run directory."""
    return run_recipe_text(text, tmp_path)


def test_step_loss_is_the_metric_loss_plus_the_weighted_view_loss(tmp_path: Path):
    run_dir = _run(tmp_path, RECIPE)
    rows = [json.loads(line) for line in (run_dir / "stages" / "semi" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["unlabelled"] > 0 and row["metric"] >= 0
        assert row["loss"] == pytest.approx(row["metric"] + 0.5 * row["unlabelled"], rel=1e-5)


def test_a_loss_with_parts_has_them_logged_each_step(tmp_path: Path):
    recipe = tiny_recipe("""
  train:
    stage: metric_train
    loss: {name: contra_x, contrastive_weight: 0.5}
    label_fraction: 1.0
    batch_size: 16
    train: {epochs: 1, max_steps: 2, log_every: 1}
""", name="parts", writers=20, samples_per_writer=6)
    rows = read_log(_run(tmp_path, recipe) / "stages" / "train" / "log.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert row["cross_entropy"] > 0 and row["contrastive"] > 0
        assert row["loss"] == pytest.approx(row["cross_entropy"] + 0.5 * row["contrastive"], rel=1e-5)


def test_one_backbone_pass_feeds_the_head_and_the_expander():
    torch.manual_seed(0)
    encoder = Encoder(nn.Linear(6, 5), nn.Linear(5, 3))
    expander = nn.Linear(5, 4)
    labelled, unlabelled = torch.randn(7, 6), torch.randn(4, 6)
    emb, z = _WithExpander(encoder, expander)(labelled, unlabelled)
    torch.testing.assert_close(emb, encoder(labelled))
    torch.testing.assert_close(z, expander(encoder.backbone(unlabelled)))


def test_unlabelled_loss_needs_a_pretrained_expander():
    with pytest.raises(ValueError, match="init_from"):
        MetricTrain(unlabelled_loss="vicreg")
    with pytest.raises(ValueError, match="unlabelled_batch_size"):
        MetricTrain(unlabelled_loss="vicreg", init_from="pretrain", unlabelled_batch_size=1)


TRANSPLANT = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    head: {name: mlp, dims: [16, 16]}
    batch_size: 16
    train: {epochs: 1, max_steps: 1}
  unpooled:
    stage: metric_train
    init_from: pretrain
    backbone: {name: resnet18, max_pool: false}
    label_fraction: 1.0
    batch_size: 16
    train: {epochs: 1, max_steps: 1, optimizer: {name: AdamW, lr: 0.0}}
""", name="transplant", seed=1, backbone="resnet18", writers=16, image_size=None)


def test_backbone_variant_starts_from_the_pretrained_weights(tmp_path: Path):
    run_dir = _run(tmp_path, TRANSPLANT)
    cpu = torch.device("cpu")
    pretrained, _ = load_encoder(run_dir / "stages" / "pretrain" / "encoder.pt", get_registry(), cpu)
    tuned, state = load_encoder(run_dir / "stages" / "unpooled" / "encoder.pt", get_registry(), cpu)
    assert state["backbone_spec"]["max_pool"] is False
    assert isinstance(tuned.backbone.net.maxpool, nn.Identity)
    assert not isinstance(pretrained.backbone.net.maxpool, nn.Identity)
    ours, theirs = tuned.backbone.state_dict(), pretrained.backbone.state_dict()
    weights = [k for k in theirs if k.endswith("weight")]
    assert len(weights) > 20
    for key in weights:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def test_backbone_variant_must_fit_the_pretrained_weights(tmp_path: Path):
    with pytest.raises(HvkitError, match="weights of stage 'pretrain' do not fit"):
        _run(tmp_path, TRANSPLANT.replace("model: {backbone: resnet18}", "model: {backbone: small_cnn}"))


HARD = tiny_recipe("""
  train:
    stage: metric_train
    label_fraction: 1.0
    batch_size: 8
    sampler: {name: hard_class, samples_per_class: 2, hard_fraction: 1.0, refresh_every: 2}
    head: {name: mlp, dims: [16, 8]}
    train: {epochs: 3, checkpoint_every: 2, log_every: 1, amp: false}
""", name="hard", seed=2, writers=12, samples_per_writer=4)  # 9 labelled writers, 36 images, 4 steps an epoch


def test_a_hard_class_sampler_observes_the_encoders_clean_embeddings_every_refresh(tmp_path: Path, monkeypatch):
    trainers: list[Trainer] = []
    seen: list[tuple[int, bool, np.ndarray, torch.Tensor]] = []

    class Recording(Trainer):
        def fit(self, *args, **kwargs):
            trainers.append(self)
            return super().fit(*args, **kwargs)

    def spy(sampler: HardClassSampler, embeddings: np.ndarray) -> None:
        trainer = trainers[-1]
        encoder = trainer.modules["encoder"]
        images = labelled_writers(trainer.ctx.dataset.splits["train"], 1.0).images
        with torch.no_grad():  # the encoder as it is now, on the images without augmentation
            expected = F.normalize(copy.deepcopy(encoder).eval()(images.float() / 255), dim=1)
        seen.append((trainer.step, encoder.training, embeddings, expected))
        observe(sampler, embeddings)

    observe = HardClassSampler.observe_embeddings
    monkeypatch.setattr(HardClassSampler, "observe_embeddings", spy)
    monkeypatch.setattr(metric_train, "Trainer", Recording)
    run_dir = _run(tmp_path, HARD)
    assert [s[0] for s in seen] == [0, 8]  # before epochs 0 and 2 (refresh_every: 2)
    for _, training, embeddings, expected in seen:
        assert training  # train mode restored after embedding
        assert isinstance(embeddings, np.ndarray) and embeddings.shape == (36, 8)
        np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(seen[0][2], seen[1][2], atol=1e-3)  # the weights moved in between
    sampler = trainers[0].modules["sampler"].sampler
    assert sampler.nearest_writers is not None
    state = load_checkpoint(run_dir / "stages" / "train" / "last.pt")["modules"]["sampler"]["_extra_state"]
    assert state["epoch"] == 2
    assert torch.equal(state["state"]["nearest"], torch.from_numpy(sampler.state_dict()["nearest"]))


def test_a_run_with_a_hard_class_sampler_resumes_inside_an_epoch_to_the_same_result(tmp_path: Path, monkeypatch):
    text = HARD.replace("refresh_every: 2", "refresh_every: 1")
    straight = run_recipe_text(text, tmp_path, "straight")
    with failing_after_step(6), pytest.raises(RuntimeError, match="injected failure"):  # inside epoch 1 (steps 5-8)
        run_recipe_text(text, tmp_path, "broken")
    broken = tmp_path / "broken"
    assert load_checkpoint(broken / "stages" / "train" / "last.pt")["step"] == 6
    lines: list[str] = []
    run(None, resume=broken, device="cpu", console=lines.append)
    assert "[train] resumed at step 6" in lines
    assert "[train] epoch 1: the sampler observed the embeddings of 36 images" not in lines  # restored, not recomputed
    assert "[train] epoch 2: the sampler observed the embeddings of 36 images" in lines
    a = load_checkpoint(straight / "stages" / "train" / "last.pt")
    b = load_checkpoint(broken / "stages" / "train" / "last.pt")
    assert a["step"] == b["step"] == 12
    for key, value in a["modules"]["encoder"].items():
        assert torch.equal(value, b["modules"]["encoder"][key]), key
    log = [(row["step"], row["loss"]) for row in read_log(straight / "stages" / "train" / "log.jsonl")]
    assert log == [(row["step"], row["loss"]) for row in read_log(broken / "stages" / "train" / "log.jsonl")]


@pytest.mark.parametrize("loss", ["adaface", "cosface"])
def test_a_loss_that_reads_norms_gets_the_embeddings_unnormalised(tmp_path: Path, monkeypatch, loss):
    """``normalize: true`` (the default) L2-normalises the embeddings for every loss but one that
    ``reads_norms``: AdaFace's margin follows the norm, which normalising would make 1 for every image."""
    seen = []
    for factory in (AdaFaceLoss, CosFaceLoss):
        original = factory.forward
        monkeypatch.setattr(factory, "forward", lambda self, emb, *a, _f=original, **k: (
            seen.append(emb.detach().norm(dim=1)), _f(self, emb, *a, **k))[1])
    _run(tmp_path, tiny_recipe(f"""
      sup:
        stage: metric_train
        label_fraction: 1.0
        batch_size: 16
        loss: {loss}
        train: {{epochs: 1, max_steps: 2}}
    """, name="norms", writers=8))
    assert seen
    norms = torch.cat(seen)
    if loss == "adaface":
        assert (norms - 1).abs().max().item() > 0.1
    else:
        torch.testing.assert_close(norms, torch.ones_like(norms))
