"""``train.ema``: the Trainer's exponential moving average of the weights, against a float64 recurrence."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hvkit import registry as registry_module
from hvkit.cli import main
from hvkit.engine import StageContext, TrainConfig, Trainer, load_checkpoint
from hvkit.engine.ema import ModelEma
from hvkit.errors import HvkitError, RecipeError
from hvkit.pipeline import prepare

from .conftest import make_registry

X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = torch.randn(6, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def config(**options) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "optimizer": {"name": "SGD", "lr": 0.2}, "amp": False,
                          "channels_last": False, "checkpoint_every": 2, **options})


def linear_bn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit(ctx: StageContext, train: TrainConfig, fail_at: int | None = None
        ) -> tuple[Trainer, dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Regression of Y on X in batches of 2 (3 steps an epoch); returns the trainer, the initial
    weights and the weights after each optimiser step (recorded by ``after_step``)."""
    model = linear_bn()
    trainer = Trainer(ctx, {"model": model}, train, steps_per_epoch=3)
    start, trajectory = snapshot(model), []

    def after_step(done: int) -> None:
        trajectory.append(snapshot(model))
        if done == fail_at:
            raise RuntimeError("injected failure")

    trainer.fit(lambda epoch: ((X[i:i + 2], Y[i:i + 2]) for i in range(0, 6, 2)),
                lambda batch, g: (model(batch[0]) - batch[1]).pow(2).mean(), after_step)
    return trainer, start, trajectory


@pytest.mark.parametrize("warmup", [True, False])
def test_average_is_the_float64_recurrence_over_the_trajectory(stage_context, warmup):
    trainer, start, trajectory = fit(stage_context, config(ema=0.8, ema_warmup=warmup))
    assert len(trajectory) == 6
    expected = dict(start)
    for k, weights in enumerate(trajectory):
        tau = min(0.8, (1 + k) / (10 + k)) if warmup else 0.8
        expected = {key: tau * expected[key] + (1 - tau) * w if w.is_floating_point() else w
                    for key, w in weights.items()}
    averaged = trainer.modules["model"].state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, rtol=1e-13, atol=1e-15, msg=key)
        assert averaged[key].dtype == value.dtype
    assert averaged["1.num_batches_tracked"].item() == 6  # copied, not averaged
    assert not torch.allclose(averaged["1.running_mean"], trajectory[-1]["1.running_mean"])

    state = load_checkpoint(trainer.checkpoint_path)  # the raw weights and the average, both exact
    assert state["ema"]["updates"] == 6
    for key, raw in trajectory[-1].items():
        assert torch.equal(state["modules"]["model"][key], raw), key
        assert torch.equal(state["ema"]["shadow"]["model"][key], averaged[key]), key
    assert not torch.equal(state["modules"]["model"]["0.weight"], averaged["0.weight"])


def test_warmup_changes_the_average(stage_context):
    with_warmup = fit(stage_context, config(ema=0.8))[0].modules["model"].state_dict()
    without = fit(replace(stage_context, name="plain"), config(ema=0.8, ema_warmup=False))[0].modules["model"]
    assert not torch.allclose(with_warmup["0.weight"], without.state_dict()["0.weight"])


def test_decay_zero_gives_the_raw_weights_exactly(stage_context):
    trainer, _, trajectory = fit(stage_context, config(ema=0.0))
    averaged = trainer.modules["model"].state_dict()
    assert all(torch.equal(averaged[key], raw) for key, raw in trajectory[-1].items())


def test_without_ema_the_modules_keep_their_raw_weights(stage_context):
    trainer, _, trajectory = fit(stage_context, config())
    assert trainer.ema is None and load_checkpoint(trainer.checkpoint_path)["ema"] is None
    assert all(torch.equal(trainer.modules["model"].state_dict()[k], v) for k, v in trajectory[-1].items())


def test_interrupted_run_resumes_to_the_same_average(stage_context):
    lines: list[str] = []
    straight, _, _ = fit(replace(stage_context, console=lines.append), config(ema=0.8))
    assert [line for line in lines if "average" in line] == [
        "[fit] the stage exports the moving average of the weights of model (train.ema=0.8), not the last step's"]
    broken = replace(stage_context, name="broken")
    with pytest.raises(RuntimeError, match="injected failure"):
        fit(broken, config(ema=0.8), fail_at=5)
    assert load_checkpoint(broken.stage_dir / "last.pt")["ema"]["updates"] == 4
    resumed, _, trajectory = fit(replace(broken, resume=True), config(ema=0.8))
    assert len(trajectory) == 2  # steps 5 and 6
    a, b = load_checkpoint(straight.checkpoint_path), load_checkpoint(resumed.checkpoint_path)
    for key, value in a["ema"]["shadow"]["model"].items():
        assert torch.equal(value, b["ema"]["shadow"]["model"][key]), key
        assert torch.equal(a["modules"]["model"][key], b["modules"]["model"][key]), key
        assert torch.equal(straight.modules["model"].state_dict()[key], resumed.modules["model"].state_dict()[key])

    finished, _, trajectory = fit(replace(broken, resume=True), config(ema=0.8))  # nothing left to train
    assert trajectory == []
    for key, value in straight.modules["model"].state_dict().items():
        assert torch.equal(finished.modules["model"].state_dict()[key], value), key


def test_losses_and_momentum_teachers_are_not_averaged(stage_context):
    torch.manual_seed(0)
    model, teacher = nn.Linear(3, 2).double(), nn.Linear(3, 2).double().requires_grad_(False)
    scale = nn.Linear(2, 1, bias=False).double()  # a loss with a trainable parameter
    trainer = Trainer(stage_context, {"model": model, "loss": scale, "teacher": teacher}, config(ema=0.5),
                      steps_per_epoch=3, loss_modules=("loss",))
    assert list(trainer.ema.modules) == ["model"]

    def after_step(done: int) -> None:
        teacher.load_state_dict(model.state_dict())  # follows the online weights

    trainer.fit(lambda epoch: iter(range(3)), lambda batch, g: scale(model(X)).pow(2).mean(), after_step)
    state = load_checkpoint(trainer.checkpoint_path)
    assert list(state["ema"]["shadow"]) == ["model"]
    assert torch.equal(scale.weight, state["modules"]["loss"]["weight"])
    assert torch.equal(teacher.weight, state["modules"]["model"]["weight"])  # the raw weights, not the average
    assert torch.equal(model.weight, state["ema"]["shadow"]["model"]["weight"])
    assert not torch.equal(model.weight, teacher.weight)


def test_ema_needs_a_trained_module_besides_the_losses(stage_context):
    with pytest.raises(HvkitError, match="^stage fit: train.ema is set but no module other than the losses "
                                         r"has trainable parameters \(modules: loss, teacher\)$"):
        Trainer(stage_context, {"loss": nn.Linear(2, 1), "teacher": nn.Linear(2, 1).requires_grad_(False)},
                config(ema=0.9), steps_per_epoch=1, loss_modules=("loss",))


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5, float("nan")])
def test_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match=r"^train.ema=.* must lie in \[0, 1\)"):
        TrainConfig(ema=decay)


def toy_stage(train: TrainConfig = TrainConfig(epochs=2)):
    """A stage with the shared training options."""


@pytest.fixture
def registry():
    return make_registry(dataset={"toy_data": lambda: None}, stage={"toy_stage": toy_stage})


def recipe(tmp_path, train: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""
        data: {{name: toy_data}}
        stages:
          first: {{stage: toy_stage, train: {train}}}
        """), encoding="utf-8")
    return path


def test_recipe_accepts_a_decay(tmp_path, registry):
    train = prepare(recipe(tmp_path, "{ema: 0.999}"), registry=registry)["stages"]["first"]["train"]
    assert (train["epochs"], train["ema"], train["ema_warmup"]) == (2, 0.999, True)
    train = prepare(recipe(tmp_path, "{ema: 0, ema_warmup: false}"), registry=registry)["stages"]["first"]["train"]
    assert (train["ema"], train["ema_warmup"]) == (0, False)
    assert prepare(recipe(tmp_path, "{epochs: 1}"), registry=registry)["stages"]["first"]["train"]["ema"] is None


@pytest.mark.parametrize("train, key, fragment", [
    ("{ema: 1.5}", "stages.first.train", "train.ema=1.5 must lie in [0, 1)"),
    ("{ema: 1}", "stages.first.train", "train.ema=1 must lie in [0, 1)"),
    ("{ema: fast}", "stages.first.train.ema", "expected float or null, got 'fast'"),
    ("{ema_warmup: 1}", "stages.first.train.ema_warmup", "expected bool, got 1"),
])
def test_recipe_refuses_a_bad_decay_in_one_line(tmp_path, registry, train, key, fragment):
    path = recipe(tmp_path, train)
    with pytest.raises(RecipeError) as info:
        prepare(path, registry=registry)
    assert str(info.value).startswith(f"{path}:{key}: ") and fragment in str(info.value)
    registry_module.set_registry(registry)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {path}:{key}: ") and fragment in line


def test_the_monitor_reads_the_average_and_training_goes_on_from_the_raw_weights(stage_context):
    """With train.ema a monitored check sees the weights the stage would export at that step; the steps after it
    train from the raw weights as an unmonitored run does."""
    model = linear_bn()
    seen: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
    trainer = Trainer(stage_context, {"model": model}, config(ema=0.8, monitor_every=1), steps_per_epoch=3)
    trajectory: list[dict[str, torch.Tensor]] = []

    def monitor() -> dict[str, float]:
        seen.append((snapshot(model), {k: t.clone() for k, t in trainer.ema.shadow["model"].items()}))
        return {"val_auc": 0.5}

    trainer.fit(lambda epoch: ((X[i:i + 2], Y[i:i + 2]) for i in range(0, 6, 2)),
                lambda batch, g: (model(batch[0]) - batch[1]).pow(2).mean(),
                lambda done: trajectory.append(snapshot(model)), monitor)
    assert len(seen) == 2  # after each epoch
    for held, shadow in seen:
        assert all(torch.equal(held[key], value) for key, value in shadow.items())
    assert not torch.equal(seen[0][0]["0.weight"], trajectory[2]["0.weight"])  # the average, not the raw step 3
    plain, _, unmonitored = fit(replace(stage_context, name="plain"), config(ema=0.8))
    for key, value in unmonitored[-1].items():
        assert torch.equal(trajectory[-1][key], value), key
    for key, value in plain.modules["model"].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_swap_gives_the_modules_their_own_weights_back_after_an_error():
    model = linear_bn()
    ema = ModelEma({"model": model}, 0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    raw = snapshot(model)
    with pytest.raises(RuntimeError, match="inside"), ema.swapped():
        assert torch.equal(model[0].weight, ema.shadow["model"]["0.weight"])
        raise RuntimeError("inside")
    assert all(torch.equal(model.state_dict()[key], value) for key, value in raw.items())
