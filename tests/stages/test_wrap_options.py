"""Each training stage hands its ``train.channels_last`` and ``train.sync_batchnorm`` to
``distributed.wrap``, which applies them under several processes (tests/distributed)."""

from __future__ import annotations

import pytest

from hvkit import distributed
from hvkit.testing import run_recipe_text, tiny_recipe

TRAIN = "train: {epochs: 1, max_steps: 1, channels_last: false, sync_batchnorm: false}"
STAGES = {
    "ssl_pretrain": ("stage: ssl_pretrain\nloss: vicreg\nbatch_size: 8", "small_cnn"),
    "metric_train": ("stage: metric_train\nloss: supcon\nlabel_fraction: 1.0\nbatch_size: 8", "small_cnn"),
    "vae_pretrain": ("stage: vae_pretrain\nbackbone: {name: resnet_vae, latent_dim: 8, image_size: 32}\n"
                     "batch_size: 8", "small_cnn"),
    "mae_pretrain": ("stage: mae_pretrain\ndecoder_dim: 16\ndecoder_layers: 1\ndecoder_heads: 2\nbatch_size: 8",
                     "{name: vit, image_size: 32, patch_size: 8, hidden_dim: 32, layers: 2, heads: 2}"),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_wraps_its_model_with_its_train_options(tmp_path, monkeypatch, stage):
    calls = []
    wrap = distributed.wrap

    def recording(module, device, channels_last=False, sync_batchnorm=True):
        calls.append((channels_last, sync_batchnorm))
        return wrap(module, device, channels_last, sync_batchnorm)

    monkeypatch.setattr(distributed, "wrap", recording)
    settings, backbone = STAGES[stage]
    body = "\n".join("    " + line for line in f"{settings}\n{TRAIN}".splitlines())
    run_recipe_text(tiny_recipe(f"one:\n{body}", backbone=backbone), tmp_path)
    assert calls == [(False, False)]
