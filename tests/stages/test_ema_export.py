"""``train.ema`` through a training stage: the saved encoder is the average, and resumes are exact."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from hvkit.engine import load_checkpoint
from hvkit.pipeline import run
from hvkit.testing import failing_after_step, run_recipe_text, tiny_recipe
from hvkit_plugins.stages import metric_train


def recipe(ema: float) -> str:
    return tiny_recipe(f"""
      train:
        stage: metric_train
        label_fraction: 1.0
        batch_size: 8
        sampler: {{name: pk, samples_per_class: 2}}
        head: {{name: mlp, dims: [16, 8]}}
        train: {{epochs: 2, checkpoint_every: 3, log_every: 1, amp: false, ema: {ema}}}
    """, name="ema", seed=4, writers=12, samples_per_writer=4)  # 9 labelled writers, 36 images, 4 steps an epoch


def saved(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The stage's encoder as one state dict keyed like the trainer's ``encoder`` module, and its last.pt."""
    encoder = load_checkpoint(run_dir / "stages" / "train" / "encoder.pt")
    weights = {f"{part}.{k}": v for part in ("backbone", "head") for k, v in encoder[part].items()}
    return weights, load_checkpoint(run_dir / "stages" / "train" / "last.pt")


def test_decay_zero_saves_the_raw_weights(tmp_path: Path):
    weights, state = saved(run_recipe_text(recipe(0), tmp_path))
    raw = state["modules"]["encoder"]
    assert weights.keys() == raw.keys() and any(k.endswith("running_mean") for k in raw)
    assert all(torch.equal(weights[k], raw[k]) for k in raw)


def test_the_saved_encoder_is_the_average(tmp_path: Path):
    weights, state = saved(run_recipe_text(recipe(0.9), tmp_path))
    average, raw = state["ema"]["shadow"], state["modules"]["encoder"]
    assert list(average) == ["encoder"] and state["ema"]["updates"] == state["step"] == 8
    assert all(torch.equal(weights[k], average["encoder"][k]) for k in raw)
    for key, value in raw.items():  # every parameter and running statistic averaged, the counts copied
        assert torch.equal(weights[key], value) != value.is_floating_point(), key


@pytest.mark.parametrize("where", ["training", "saving"])
def test_an_interrupted_run_resumes_to_the_same_average(tmp_path: Path, monkeypatch, where: str):
    """Interrupted in step 5 (the last checkpoint is step 3's), or after training, before the
    encoder is saved: the resumed stage then trains no step and must still save the average."""
    text = recipe(0.9)
    straight = run_recipe_text(text, tmp_path, "straight")
    if where == "saving":
        def fails(*args, **kwargs):
            raise RuntimeError("injected failure")
        monkeypatch.setattr(metric_train, "save_encoder", fails)
    failing = failing_after_step(4) if where == "training" else contextlib.nullcontext()
    with failing, pytest.raises(RuntimeError, match="injected failure"):
        run_recipe_text(text, tmp_path, "broken")
    monkeypatch.undo()
    broken = tmp_path / "broken"
    assert load_checkpoint(broken / "stages" / "train" / "last.pt")["step"] == (3 if where == "training" else 8)
    lines: list[str] = []
    run(None, resume=broken, device="cpu", console=lines.append)
    assert f"[train] resumed at step {3 if where == 'training' else 8}" in lines
    assert sum("moving average" in line for line in lines) == 1
    (a, state_a), (b, state_b) = saved(straight), saved(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    raw_a, raw_b = state_a["modules"]["encoder"], state_b["modules"]["encoder"]
    ema_a, ema_b = state_a["ema"]["shadow"]["encoder"], state_b["ema"]["shadow"]["encoder"]
    for key in raw_a:
        assert torch.equal(raw_a[key], raw_b[key]) and torch.equal(ema_a[key], ema_b[key]), key
