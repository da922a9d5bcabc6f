"""``train.monitor_every``: the validation writers' separation (all-pairs AUC of the centred cosine, leave-one-out
precision@1) against brute force, logged by each first-party training stage from the weights it trains, and its
one-line errors (a stage that offers no monitor: tests/core/test_engine.py)."""

from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hvkit.engine import TrainConfig
from hvkit.engine.trainer import read_log
from hvkit.pipeline import run
from hvkit.registry import get_registry
from hvkit.testing import failing_after_step, run_recipe_text, tiny_recipe
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.stages import monitor as monitor_module
from hvkit_plugins.stages.encoder import embed, load_encoder, precise_batchnorm
from hvkit_plugins.stages.monitor import stage_monitor, writer_monitor, writer_separation


def _brute_force(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    z = embeddings - embeddings.mean(axis=0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    pairs = list(itertools.combinations(range(len(labels)), 2))
    same = [float(z[i] @ z[j]) for i, j in pairs if labels[i] == labels[j]]
    different = [float(z[i] @ z[j]) for i, j in pairs if labels[i] != labels[j]]
    wins = sum((s > d) + 0.5 * (s == d) for s in same for d in different)
    hits = []
    for i in range(len(labels)):
        if (labels == labels[i]).sum() < 2:
            continue
        others = [j for j in range(len(labels)) if j != i]
        hits.append(labels[max(others, key=lambda j: float(z[i] @ z[j]))] == labels[i])
    return {"val_auc": wins / (len(same) * len(different)), "val_p1": float(np.mean(hits))}


@pytest.mark.parametrize("seed", [0, 1])
def test_separation_equals_brute_force(seed):
    g = np.random.default_rng(seed)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 4])  # writer 3 has one image: no neighbour of its own
    embeddings = g.normal(size=(len(labels), 5)) + 1.5 * g.normal(size=(5, 5))[labels]
    got = writer_separation(torch.from_numpy(embeddings).float(), labels)
    expected = _brute_force(embeddings.astype(np.float32).astype(np.float64), labels)
    assert got["val_auc"] == pytest.approx(expected["val_auc"], abs=1e-12)
    assert got["val_p1"] == expected["val_p1"]


def test_tied_scores_count_a_half():
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 0, 1, 1, 2])
    assert writer_separation(embeddings, labels)["val_auc"] == pytest.approx(
        _brute_force(embeddings.double().numpy(), labels)["val_auc"], abs=1e-12)


def test_many_images_are_sampled_once_by_seed(monkeypatch):
    monkeypatch.setattr(monitor_module, "MAX_IMAGES", 10)
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(monitor_module, "embed", lambda encoder, images, device, features: seen.append(images)
                        or images.flatten(1).float())
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    watch = writer_monitor(nn.Identity(), images, np.arange(40) // 4, torch.device("cpu"))
    watch(), watch()
    assert len(seen[0]) == 10 and torch.equal(seen[0], seen[1])
    assert not torch.equal(seen[0], images[:10])


def _assert_the_last_check_reads_the_saved_encoder(run, rows: list[dict]) -> None:
    """The last logged check of stage ``train`` (30 synthetic writers of 4 words at 32 px) equals the separation
    of the encoder the stage saved."""
    encoder, _ = load_encoder(run / "stages" / "train" / "encoder.pt", get_registry(), torch.device("cpu"))
    val = cedar_and(synthetic_writers=30, synthetic_samples_per_writer=4, image_size=32).splits["val"]
    expected = writer_separation(embed(encoder, val.images, torch.device("cpu"), "backbone"), val.labels)
    assert rows[-1]["val_auc"] == pytest.approx(expected["val_auc"], abs=1e-6)
    assert rows[-1]["val_p1"] == pytest.approx(expected["val_p1"])


@pytest.mark.parametrize("stage", ["metric_train", "ssl_pretrain", "vae_pretrain", "mae_pretrain"])
def test_each_stage_logs_the_separation_of_the_weights_it_saves(tmp_path, stage):
    spec = {"metric_train": "loss: supcon\n    label_fraction: 1.0",
            "ssl_pretrain": "head: {name: mlp, dims: [16, 16]}",
            "vae_pretrain": "backbone: {name: resnet_vae, latent_dim: 8, image_size: 32}",
            "mae_pretrain": "backbone: {name: vit, image_size: 32, patch_size: 8, hidden_dim: 32, layers: 2, "
                            "heads: 2}\n    decoder_dim: 16\n    decoder_layers: 1\n    decoder_heads: 2"}[stage]
    run = run_recipe_text(tiny_recipe(f"""
  train:
    stage: {stage}
    {spec}
    batch_size: 48
    train: {{epochs: 2, log_every: 100, monitor_every: 1, amp: false}}
""", name="watched", writers=30, samples_per_writer=4), tmp_path)
    rows = read_log(run / "stages" / "train" / "log.jsonl")
    assert [row["epoch"] for row in rows if "val_auc" in row] == [0, 1]
    _assert_the_last_check_reads_the_saved_encoder(run, rows)


def test_a_dataset_without_enough_validation_writers_is_a_one_line_error():
    config = TrainConfig(monitor_every=1)
    split = SimpleNamespace(images=torch.zeros(3, 1, 4, 4, dtype=torch.uint8), labels=np.array([0, 1, 2]))
    ctx = SimpleNamespace(dataset=SimpleNamespace(name="toy", splits={"train": split}), device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"the data \(toy\) has no 'val' split"):
        stage_monitor(ctx, nn.Identity(), config)
    ctx.dataset.splits["val"] = split
    with pytest.raises(ValueError, match="pairs of both kinds; the val split has 3 writers, at most 1 images of one"):
        stage_monitor(ctx, nn.Identity(), config)
    assert stage_monitor(ctx, nn.Identity(), TrainConfig()) is None



def test_a_monitored_run_resumed_mid_epoch_logs_what_the_straight_run_logs(tmp_path):
    text = tiny_recipe("""
  train:
    stage: metric_train
    loss: supcon
    label_fraction: 1.0
    batch_size: 16
    train: {epochs: 3, log_every: 100, checkpoint_every: 5, monitor_every: 1, amp: false}
""", name="watched", writers=30, samples_per_writer=4)
    straight = read_log(run_recipe_text(text, tmp_path, "straight") / "stages" / "train" / "log.jsonl")
    with failing_after_step(6), pytest.raises(RuntimeError, match="injected failure"):
        run_recipe_text(text, tmp_path, "broken")
    run(None, resume=tmp_path / "broken", device="cpu", console=lambda _: None)
    resumed = read_log(tmp_path / "broken" / "stages" / "train" / "log.jsonl")
    keys = ("step", "epoch", "loss", "val_auc", "val_p1")
    assert [[row[k] for k in keys] for row in resumed] == [[row[k] for k in keys] for row in straight]
    assert [row["step"] for row in straight] == [5, 10, 15]  # 5 steps an epoch: resumed from step 5 inside epoch 1


@pytest.mark.parametrize("settings, train", [
    ("precise_bn: true\n    local_views: 2\n    local_size: 16", ""),
    ("", ", ema: 0.9"),
    ("loss: {name: byol, predictor_dim: 16}\n    teacher_momentum: 0.9\n    export_teacher: true", "")],
    ids=["precise_bn", "ema", "teacher"])
def test_ssl_pretrain_monitors_the_model_it_saves_and_trains_as_unmonitored(tmp_path, settings, train):
    """Precise BN's statistics (here after multi-crop's letter-sized passes), train.ema's average or the momentum
    teacher: the last check reads the saved encoder, and every step's loss is that of the run without a monitor."""
    def text(monitor_every: str) -> str:
        return tiny_recipe(f"""
  train:
    stage: ssl_pretrain
    head: {{name: mlp, dims: [16, 16]}}
    batch_size: 48
    train: {{epochs: 2, log_every: 1, monitor_every: {monitor_every}, amp: false{train}}}
    {settings}
""", name="watched", writers=30, samples_per_writer=4)

    run = run_recipe_text(text("1"), tmp_path, "monitored")
    rows = read_log(run / "stages" / "train" / "log.jsonl")
    _assert_the_last_check_reads_the_saved_encoder(run, rows)
    plain = read_log(run_recipe_text(text("null"), tmp_path, "plain") / "stages" / "train" / "log.jsonl")
    assert len(plain) == len(rows) > 2
    assert [row["loss"] for row in plain] == [row["loss"] for row in rows]


def test_a_check_with_precise_statistics_reads_them_and_gives_training_its_own_back():
    class Encoder(nn.Sequential):
        def forward(self, x: torch.Tensor, features: str = "backbone") -> torch.Tensor:
            return super().forward(x)

    torch.manual_seed(0)
    encoder = Encoder(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8))
    encoder[2].running_mean.fill_(3.0)
    training = {key: t.clone() for key, t in encoder.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=g)
    val = torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8, generator=g)
    labels = np.arange(12) // 3
    got = writer_monitor(encoder, val, labels, torch.device("cpu"), statistics_from=clean)()
    assert all(torch.equal(encoder.state_dict()[key], t) for key, t in training.items())
    precise = copy.deepcopy(encoder)
    precise_batchnorm(precise, clean, torch.device("cpu"))
    assert got == writer_separation(embed(precise, val, torch.device("cpu"), "backbone"), labels)
    assert got != writer_separation(embed(encoder, val, torch.device("cpu"), "backbone"), labels)
