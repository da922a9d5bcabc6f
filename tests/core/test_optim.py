"""Optimisers and schedulers from recipe specs, per-module learning rates and warm-up."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from hvkit.engine import TrainConfig, Trainer
from hvkit.engine.lars import LARS
from hvkit.engine.optim import build_optimizer, build_scheduler
from hvkit.engine.trainer import cosine_weight_decay
from hvkit.errors import HvkitError, RecipeError
from hvkit.pipeline import prepare

from .conftest import make_registry


def lrs(scheduler, optimizer, steps: int) -> list[list[float]]:
    """The learning rate of every group before each of ``steps`` steps."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def sgd(*lr: float) -> torch.optim.Optimizer:
    return build_optimizer({"name": "SGD", "lr": 1.0}, [{"params": [nn.Parameter(torch.zeros(1))], "lr": v}
                                                         for v in lr])


def test_optimizer_by_name_with_arguments_and_group_lrs():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer({"name": "AdamW", "lr": 0.01, "betas": [0.8, 0.9], "weight_decay": 0.5},
                                [{"params": [a]}, {"params": [b], "lr": 0.2}])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.2]
    assert tuple(optimizer.param_groups[0]["betas"]) == (0.8, 0.9)
    assert optimizer.param_groups[1]["weight_decay"] == 0.5


def test_no_scheduler():
    assert build_scheduler(None, sgd(0.1), 10) is None


def test_t_max_defaults_to_the_stage_length():
    optimizer = sgd(0.1)
    seen = lrs(build_scheduler({"name": "CosineAnnealingLR"}, optimizer, 8), optimizer, 9)
    expected = [0.1 * (1 + math.cos(math.pi * t / 8)) / 2 for t in range(9)]
    assert [v[0] for v in seen] == pytest.approx(expected, abs=1e-12)


def test_warmup_then_cosine_per_group():
    optimizer = sgd(0.1, 0.5)
    seen = lrs(build_scheduler({"name": "CosineAnnealingLR", "warmup_steps": 3}, optimizer, 10), optimizer, 11)
    for base, column in ((0.1, 0), (0.5, 1)):
        expected = [base * (1e-3 + (1 - 1e-3) * t / 3) for t in range(3)]
        expected += [base * (1 + math.cos(math.pi * t / 7)) / 2 for t in range(8)]
        assert [v[column] for v in seen] == pytest.approx(expected, abs=1e-12)


def test_one_cycle_gets_each_groups_lr_and_the_step_count():
    optimizer = sgd(0.1, 0.5)
    scheduler = build_scheduler({"name": "OneCycleLR"}, optimizer, 20)
    assert scheduler.total_steps == 20
    seen = lrs(scheduler, optimizer, 20)
    assert max(v[0] for v in seen) == pytest.approx(0.1, rel=1e-3)
    assert max(v[1] for v in seen) == pytest.approx(0.5, rel=1e-3)


def test_explicit_arguments_are_kept():
    optimizer = sgd(1.0)
    seen = lrs(build_scheduler({"name": "StepLR", "step_size": 2, "gamma": 0.5}, optimizer, 10), optimizer, 5)
    assert [v[0] for v in seen] == [1.0, 1.0, 0.5, 0.5, 0.25]


class Proxies(nn.Module):
    """A loss with learnable parameters (like proxy-anchor's proxies)."""

    def __init__(self):
        super().__init__()
        self.proxies = nn.Parameter(torch.ones(3))


def test_loss_lr_gives_the_loss_module_its_own_group(stage_context):
    model, loss, frozen = nn.Linear(3, 1), Proxies(), nn.Linear(2, 2).requires_grad_(False)
    config = TrainConfig(optimizer={"name": "SGD", "lr": 0.1}, loss_lr=0.5, amp=False)
    trainer = Trainer(stage_context, {"model": model, "loss": loss, "frozen": frozen}, config,
                      steps_per_epoch=1, loss_modules=("loss",))
    groups = trainer.optimizer.param_groups
    assert [(g["name"], g["lr"]) for g in groups] == [("model", 0.1), ("loss", 0.5)]
    before = model(torch.tensor([[1.0, 2.0, 3.0]])).detach()
    weight = model.weight.detach().clone()
    x = torch.tensor([[1.0, 2.0, 3.0]])
    trainer.fit(lambda epoch: [x], lambda batch, g: (model(batch) * loss.proxies).sum())
    # loss = model(x) * sum(proxies): d/dW = sum(proxies) x = 3x, d/dproxies = model(x)
    assert torch.allclose(model.weight, weight - 0.1 * 3 * x)
    assert torch.allclose(loss.proxies, 1 - 0.5 * before.flatten())


def test_without_loss_lr_every_group_uses_the_optimizer_lr(stage_context):
    config = TrainConfig(optimizer={"name": "SGD", "lr": 0.1}, amp=False)
    trainer = Trainer(stage_context, {"model": nn.Linear(3, 1), "loss": Proxies()}, config,
                      steps_per_epoch=1, loss_modules=("loss",))
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.1, 0.1]


def test_nothing_to_train(stage_context):
    with pytest.raises(HvkitError, match="nothing to train"):
        Trainer(stage_context, {"model": nn.Linear(2, 2).requires_grad_(False)}, TrainConfig(), steps_per_epoch=1)


def test_an_epoch_without_a_full_batch_is_a_clear_error(stage_context):
    with pytest.raises(HvkitError, match="stage fit: an epoch holds no full batch .steps_per_epoch=0.; lower"):
        Trainer(stage_context, {"model": nn.Linear(2, 2)}, TrainConfig(), steps_per_epoch=0)


def test_grad_clip_limits_the_update(stage_context):
    model = nn.Linear(4, 1, bias=False)
    nn.init.zeros_(model.weight)
    config = TrainConfig(optimizer={"name": "SGD", "lr": 1.0}, grad_clip=0.5, amp=False)
    trainer = Trainer(stage_context, {"model": model}, config, steps_per_epoch=1)
    trainer.fit(lambda epoch: [torch.full((1, 4), 10.0)], lambda batch, g: model(batch).sum())
    assert model.weight.norm().item() == pytest.approx(0.5)


def lars_step_reference(w, g, buffer, lr, momentum, weight_decay, eta, adapt):
    """One LARS step in float64 by the formula of hvkit.engine.lars.LARS."""
    u = g + weight_decay * w if adapt else g
    if adapt and np.linalg.norm(w) > 0 and np.linalg.norm(u) > 0:
        u = u * eta * np.linalg.norm(w) / np.linalg.norm(u)
    buffer = momentum * buffer + u
    return w - lr * buffer, buffer


def test_lars_matches_the_formula_over_steps_and_skips_1d_parameters():
    rng = np.random.default_rng(0)
    weight = nn.Parameter(torch.tensor(rng.normal(size=(4, 3))))
    bias = nn.Parameter(torch.tensor(rng.normal(size=4)))
    settings = dict(lr=0.5, momentum=0.9, weight_decay=0.01, eta=0.02)
    optimizer = build_optimizer({"name": "LARS", **settings}, [{"params": [weight, bias]}])
    assert isinstance(optimizer, LARS)
    ref = {"w": (weight.detach().numpy().copy(), np.zeros((4, 3))), "b": (bias.detach().numpy().copy(), np.zeros(4))}
    for _ in range(3):
        grads = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=4)}
        weight.grad, bias.grad = torch.tensor(grads["w"]), torch.tensor(grads["b"])
        optimizer.step()
        for key, adapt in (("w", True), ("b", False)):
            ref[key] = lars_step_reference(*ref[key][:1], grads[key], ref[key][1], adapt=adapt, **settings)
        np.testing.assert_allclose(weight.detach().numpy(), ref["w"][0], rtol=1e-12)
        np.testing.assert_allclose(bias.detach().numpy(), ref["b"][0], rtol=1e-12)


def test_lars_trust_ratio_sets_the_step_size_and_falls_back_to_one_at_zero_norm():
    weight = nn.Parameter(torch.full((2, 2), 3.0))  # norm 6
    optimizer = LARS([weight], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.1)
    weight.grad = torch.full((2, 2), 100.0)  # any gradient: the step's norm is eta * ||w|| = 0.6
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.full((2, 2), 3.0 - 0.3))
    zero = nn.Parameter(torch.zeros(2, 2))
    optimizer = LARS([zero], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.1)
    zero.grad = torch.full((2, 2), 2.0)  # ||w|| = 0: a plain SGD step
    optimizer.step()
    assert torch.allclose(zero.detach(), torch.full((2, 2), -2.0))
    with pytest.raises(ValueError, match="LARS"):
        LARS([zero], lr=0.1, momentum=1.0)



def test_cosine_weight_decay_runs_from_the_optimizers_value_to_the_end():
    assert cosine_weight_decay(0.04, 0.4, 0, 10) == pytest.approx(0.04)
    assert cosine_weight_decay(0.04, 0.4, 5, 10) == pytest.approx(0.22)
    assert cosine_weight_decay(0.04, 0.4, 10, 10) == pytest.approx(0.4)


def decay_only(stage_context, config: TrainConfig, steps: int, fail_at: int | None = None):
    """SGD at lr 1 on a zero gradient for ``steps`` steps: each step multiplies a weight by ``1 - wd_k``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    trainer = Trainer(stage_context, {"model": model}, config, steps_per_epoch=steps)
    seen = []

    def after_step(done: int) -> None:
        seen.append([g["weight_decay"] for g in trainer.optimizer.param_groups])
        if done == fail_at:
            raise RuntimeError("injected failure")

    start = [p.detach().clone() for p in model.parameters()]
    trainer.fit(lambda epoch: iter(range(steps)), lambda batch, g: sum((p * 0).sum() for p in model.parameters()),
                after_step)
    return trainer, start, seen


def test_weight_decay_schedule_decays_weights_by_the_cosine_and_resumes(stage_context):
    config = TrainConfig(optimizer={"name": "SGD", "lr": 1.0, "weight_decay": 0.04}, weight_decay_end=0.4,
                         amp=False, channels_last=False, checkpoint_every=2)
    trainer, start, seen = decay_only(stage_context, config, steps=5)
    schedule = [0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * k / 5)) / 2 for k in range(5)]
    assert [row[0] for row in seen] == pytest.approx(schedule, abs=1e-15)
    factor = float(np.prod([1 - wd for wd in schedule], dtype=np.float64))
    for p, p0 in zip(trainer.modules["model"].parameters(), start):
        assert torch.allclose(p.detach(), p0 * factor, atol=1e-7)
    final = [p.detach().clone() for p in trainer.modules["model"].parameters()]

    with pytest.raises(RuntimeError, match="injected failure"):
        decay_only(replace(stage_context, name="again"), config, steps=5, fail_at=3)
    resumed, _, seen = decay_only(replace(stage_context, name="again", resume=True), config, steps=5)
    assert [row[0] for row in seen] == pytest.approx(schedule[2:], abs=1e-15)
    assert all(torch.equal(a.detach(), b) for a, b in zip(resumed.modules["model"].parameters(), final))


def test_weight_decay_1d_false_spares_biases_and_norms(stage_context):
    config = TrainConfig(optimizer={"name": "SGD", "lr": 1.0, "weight_decay": 0.5}, weight_decay_1d=False,
                         amp=False, channels_last=False, epochs=1)
    trainer, start, _ = decay_only(stage_context, config, steps=1)
    groups = trainer.optimizer.param_groups
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in groups] == [
        ("model", 0.5, 1), ("model.no_decay", 0.0, 3)]
    weight, bias, scale, shift = trainer.modules["model"].parameters()
    assert torch.allclose(weight.detach(), start[0] * 0.5)
    for p, p0 in zip((bias, scale, shift), start[1:]):
        assert torch.equal(p.detach(), p0)


def test_weight_decay_end_leaves_the_undecayed_group_alone(stage_context):
    config = TrainConfig(optimizer={"name": "SGD", "lr": 1.0, "weight_decay": 0.1}, weight_decay_1d=False,
                         weight_decay_end=0.3, amp=False, channels_last=False)
    _, _, seen = decay_only(stage_context, config, steps=3)
    assert [row[1] for row in seen] == [0.0, 0.0, 0.0]
    assert seen[-1][0] == pytest.approx(cosine_weight_decay(0.1, 0.3, 2, 3))


def test_frozen_epochs_hold_a_parameter_still_then_release_it(stage_context):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    config = TrainConfig(epochs=2, optimizer={"name": "AdamW", "lr": 0.1}, frozen_epochs={"model.1": 1},
                         amp=False, channels_last=False)
    trainer = Trainer(stage_context, {"model": model}, config, steps_per_epoch=2)
    x = torch.randn(4, 3)
    history = []

    def after_step(done: int) -> None:
        history.append([p.detach().clone() for p in model.parameters()])

    start = [p.detach().clone() for p in model.parameters()]
    trainer.fit(lambda epoch: iter(range(2)), lambda batch, g: model(x).pow(2).mean(), after_step)
    for step, params in enumerate(history):
        first_changed = not torch.equal(params[0], start[0])
        last_changed = [not torch.equal(p, p0) for p, p0 in zip(params[2:], start[2:])]
        assert first_changed
        assert last_changed == ([False, False] if step < 2 else [True, True])


def test_frozen_epochs_must_name_a_parameter(stage_context):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    config = TrainConfig(frozen_epochs={"model.head": 1})
    with pytest.raises(HvkitError, match=r"stage fit: train.frozen_epochs names 'model.head', which is no trainable "
                                         r"parameter nor a prefix of one \(they are named like model.0.weight, "):
        Trainer(stage_context, {"model": model}, config, steps_per_epoch=1)
    with pytest.raises(HvkitError, match="frozen_epochs names 'model.1.w'"):  # a prefix ends at a dot
        Trainer(stage_context, {"model": model}, TrainConfig(frozen_epochs={"model.1.w": 1}), steps_per_epoch=1)


def test_weight_decay_end_needs_an_optimizer_with_weight_decay(stage_context):
    config = TrainConfig(optimizer={"name": "Rprop", "lr": 0.1}, weight_decay_end=0.4)
    with pytest.raises(HvkitError, match="weight_decay_end is set but optimizer Rprop has no weight_decay"):
        Trainer(stage_context, {"model": nn.Linear(2, 2)}, config, steps_per_epoch=1)


def test_lr_scale_gives_each_prefix_its_share_of_the_rate_the_longest_prefix_first(stage_context):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)).double()
    loss = nn.Linear(1, 1).double()
    config = TrainConfig(epochs=1, optimizer={"name": "SGD", "lr": 0.1}, loss_lr=0.02, amp=False, channels_last=False,
                         lr_scale={"model.0": 0.1, "model.0.bias": 0.5, "loss": 3.0},
                         scheduler={"name": "CosineAnnealingLR", "warmup_steps": 2})
    trainer = Trainer(stage_context, {"model": model, "loss": loss}, config, steps_per_epoch=5, loss_modules=("loss",))
    groups = trainer.optimizer.param_groups
    assert [(g["name"], len(g["params"])) for g in groups] == [("model", 2), ("model.0", 1), ("model.0.bias", 1),
                                                              ("loss", 2)]
    assert [g["lr"] for g in groups] == pytest.approx([0.1e-3, 0.01e-3, 0.05e-3, 0.06e-3])  # warm-up's first step
    x = torch.randn(4, 3, dtype=torch.float64)
    seen = []

    def step(batch, generator):
        before = [p.detach().clone() for p in (*model.parameters(), *loss.parameters())]
        value = loss(model(x)).pow(2).mean()
        grads = torch.autograd.grad(value, [*model.parameters(), *loss.parameters()], retain_graph=True)
        lr = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
        seen.append((before, grads, [lr["model.0"], lr["model.0.bias"], lr["model"], lr["model"], lr["loss"], lr["loss"]]))
        return value

    trainer.fit(lambda epoch: iter(range(5)), step)
    after = [p.detach() for p in (*model.parameters(), *loss.parameters())]
    for k, (before, grads, rates) in enumerate(seen):
        following = seen[k + 1][0] if k + 1 < len(seen) else after
        for p0, g, rate, p1 in zip(before, grads, rates, following):
            assert torch.allclose(p1, p0 - rate * g, rtol=0, atol=1e-15)
        assert rates[0] / rates[2] == pytest.approx(0.1) and rates[1] / rates[2] == pytest.approx(0.5)
        assert rates[4] / rates[2] == pytest.approx(0.02 * 3 / 0.1)
    assert seen[3][2][2] < seen[2][2][2]  # the schedule moves every group together


def test_lr_scale_must_name_a_parameter_and_be_positive(stage_context):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    with pytest.raises(HvkitError, match=r"^stage fit: train.lr_scale names 'model.2', which is no trainable "
                                         r"parameter nor a prefix of one"):
        Trainer(stage_context, {"model": model}, TrainConfig(lr_scale={"model.2": 0.1}), steps_per_epoch=1)
    with pytest.raises(HvkitError, match="lr_scale names 'model.1.w'"):  # a prefix ends at a dot
        Trainer(stage_context, {"model": model}, TrainConfig(lr_scale={"model.1.w": 0.1}), steps_per_epoch=1)
    with pytest.raises(HvkitError, match=r"^stage fit: train.lr_scale needs the optimizer's lr \(SGD has none"):
        Trainer(stage_context, {"model": model}, TrainConfig(optimizer={"name": "SGD"}, lr_scale={"model.1": 0.1}),
                steps_per_epoch=1)
    for scale in (0.0, -1.0):
        with pytest.raises(ValueError, match=rf"^train.lr_scale\['model.1'\]={scale} must be > 0"):
            TrainConfig(lr_scale={"model.1": scale})


def test_lr_scale_splits_the_undecayed_group_too(stage_context):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    config = TrainConfig(optimizer={"name": "AdamW", "lr": 0.1, "weight_decay": 0.5}, weight_decay_1d=False,
                         lr_scale={"model.1": 0.5})
    trainer = Trainer(stage_context, {"model": model}, config, steps_per_epoch=1)
    assert [(g["name"], g["weight_decay"], g["lr"], len(g["params"])) for g in trainer.optimizer.param_groups] == [
        ("model", 0.5, 0.1, 1), ("model.no_decay", 0.0, 0.1, 1), ("model.1", 0.5, 0.05, 1),
        ("model.1.no_decay", 0.0, 0.05, 1)]


def toy_stage(train: TrainConfig = TrainConfig(epochs=2)):
    """A stage with the shared training options."""


@pytest.mark.parametrize("scale, error", [("{encoder.backbone: 0.1}", None),
                                          ("{encoder.backbone: 0}", "train.lr_scale['encoder.backbone']=0"),
                                          ("{encoder.backbone: fast}", "lr_scale: expected dict[str, float], got {'encoder.backbone': 'fast'}")])
def test_recipe_takes_lr_scale_and_refuses_a_bad_one_in_one_line(tmp_path, scale, error):
    path = tmp_path / "recipe.yaml"
    path.write_text("data: {name: toy_data}\n"
                    f"stages:\n  first: {{stage: toy_stage, train: {{lr_scale: {scale}}}}}\n", encoding="utf-8")
    registry = make_registry(dataset={"toy_data": lambda: None}, stage={"toy_stage": toy_stage})
    if error is None:
        assert prepare(path, registry=registry)["stages"]["first"]["train"]["lr_scale"] == {"encoder.backbone": 0.1}
        return
    with pytest.raises(RecipeError) as info:
        prepare(path, registry=registry)
    assert str(info.value).startswith(f"{path}:stages.first.train") and error in str(info.value)
    assert "\n" not in str(info.value)
