"""Every recipe mistake is a one-line error naming the file and the key path, before any work."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from click.testing import CliRunner

from hvkit import registry as registry_module
from hvkit.api import Component, FilePath, OptimizerSpec, SchedulerSpec, StageOutput
from hvkit.cli import main
from hvkit.engine.context import build
from hvkit.errors import RecipeError, RecipeErrors
from hvkit.pipeline import prepare
from hvkit.recipe.load import safe_load
from hvkit.recipe.validate import STAND_INS

from .conftest import make_registry, plugin_module


def toy_data(writers: int = 4, root: FilePath | None = None, seed: int = 0):
    """A dataset that is never built here."""


def toy_miner(k: int = 1):
    """A miner."""


def toy_loss(margin: float = 0.1, miner: Component["miner"] | None = None, embedding_dim: int = 2):
    """A loss with a context argument."""


def toy_stage(epochs: int = 1, lr: float = 0.1, amp: bool = True, mode: Literal["fast", "slow"] = "fast",
              widths: list[int] = (8, 4), loss: Component["loss"] = "toy_loss",
              optimizer: OptimizerSpec = {"name": "SGD", "lr": 0.1},
              scheduler: SchedulerSpec | None = None, init_from: StageOutput | None = None,
              members: list[StageOutput] | None = None, weights: FilePath | None = None):
    """A stage with every kind of parameter."""


def needs_count(count: int, label: str = "x"):
    """A stage with a required parameter."""


class CheckedStage:
    """A stage that checks its ``source`` against the earlier stages (``check_recipe``, API 1.7)."""

    seen: list = []

    def __init__(self, source: str = "first"):
        self.source = source

    @staticmethod
    def check_recipe(spec, earlier):
        CheckedStage.seen.append((spec, earlier))
        if spec["source"] == "itself":
            raise ValueError("a stage cannot read its own outputs")
        if spec["source"] not in earlier:
            raise RecipeError(f"{spec['source']!r} is no earlier stage", path="source")


class CheckedLoss:
    """A loss that checks its own settings when the recipe is validated (``check_recipe`` on any kind, API 1.8)."""

    def __init__(self, low: float = 0.0, high: float = 1.0):
        self.low, self.high = low, high

    @staticmethod
    def check_recipe(spec, earlier):
        if spec["low"] > spec["high"]:
            raise RecipeError(f"low={spec['low']} is above high={spec['high']}", path="low")
        if "first" in earlier:
            raise ValueError("only the first stage may use it")


class RegistryCheckedLoss:
    """A loss whose check declares ``registry`` (API 1.11): it looks up its nested ``partner`` loss there."""

    seen: list = []

    def __init__(self, partner: str = "toy_loss"):
        self.partner = partner

    @staticmethod
    def check_recipe(spec, earlier, registry):
        RegistryCheckedLoss.seen.append(registry)
        registry.get("loss", spec["partner"])


def refusing(margin: float = 0.1):
    """A loss whose factory refuses a value (no ``check_recipe``)."""
    refusing.built.append(margin)
    if margin < 0:
        raise ValueError(f"refusing: margin={margin} must be >= 0")


def refusing_sized(margin: float = 0.1, embedding_dim: int = 2):
    """The same with a context argument: validation builds it with stand-ins."""
    refusing_sized.dims.append(embedding_dim)
    return refusing(margin)


def bounded(w_size: int = 4, embedding_dim: int = 2, num_classes: int = 2):
    """Refuses a value against the context: ``w_size`` must exceed ``embedding_dim``, at most ``num_classes``."""
    bounded.built.append((embedding_dim, num_classes))
    if not embedding_dim < w_size <= num_classes:
        raise ValueError(f"bounded: w_size={w_size} must lie in ({embedding_dim}, {num_classes}]")


def wrapping(inner: Component["loss"] = "refusing", weight: float = 1.0):
    """A loss around another: built with the stand-ins its inner loss needs, not at all when one has none."""
    wrapping.built.append(weight)


class ToySampler:
    """A PK-like sampler: ``k`` images a writer, so the batch must be a multiple of ``k``; at least
    ``writers_needed`` writers in the data."""

    built: list = []

    def __init__(self, labels, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, k: int = 4,
                 writers_needed: int = 2):
        ToySampler.built.append((len(labels), batch_size))
        if k < 1 or batch_size % k:
            raise ValueError(f"toy_sampler: batch_size {batch_size} must be a multiple of k={k} >= 1")
        if len(np.unique(labels)) < writers_needed:
            raise ValueError(f"toy_sampler: needs {writers_needed} writers")


def grouped(labels, batch_size: int, groups=None):
    """A sampler that needs writer groups."""
    grouped.had_groups.append(groups is not None)
    if groups is None:
        raise ValueError("grouped: the data names no writer groups")


def loose(**context):
    """A sampler that takes its run-time context as ``**kwargs``."""
    loose.built.append(sorted(context))


def sampled(batch_size: int = 8, fraction: float = 0.5, sampler: Component["sampler"] = "toy_sampler"):
    """A stage that refuses a value and hands its ``batch_size`` to its sampler."""
    if not 0 < fraction <= 1:
        raise ValueError(f"sampled: fraction={fraction} must be in (0, 1]")


def unsized(sampler: Component["sampler"] = "toy_sampler"):
    """A stage with a sampler but no ``batch_size``: validation cannot build the sampler."""


refusing.built, refusing_sized.dims, bounded.built, wrapping.built = [], [], [], []
grouped.had_groups, loose.built = [], []


@pytest.fixture
def registry():
    return make_registry(dataset={"toy_data": toy_data, "echo_seed": lambda seed=0: seed},
                         miner={"toy_miner": toy_miner},
                         loss={"toy_loss": toy_loss, "checked_loss": CheckedLoss, "registry_checked": RegistryCheckedLoss,
                               "refusing": refusing,
                               "refusing_sized": refusing_sized, "bounded": bounded, "wrapping": wrapping},
                         sampler={"toy_sampler": ToySampler, "grouped": grouped, "loose": loose},
                         stage={"toy_stage": toy_stage, "needs_count": needs_count, "checked": CheckedStage,
                                "sampled": sampled, "unsized": unsized})


BASE = """
data: {name: toy_data}
stages:
  first: {stage: toy_stage}
"""


def write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_valid_recipe_is_resolved_with_every_default(tmp_path, registry):
    resolved = prepare(write(tmp_path, BASE), registry=registry)
    assert resolved == {
        "name": "recipe", "seed": 0, "device": "auto",
        "data": {"name": "toy_data", "writers": 4, "root": None},
        "model": {},
        "stages": {"first": {
            "stage": "toy_stage", "epochs": 1, "lr": 0.1, "amp": True, "mode": "fast", "widths": [8, 4],
            "loss": {"name": "toy_loss", "margin": 0.1, "miner": None},
            "optimizer": {"name": "SGD", "lr": 0.1}, "scheduler": None, "init_from": None,
            "members": None, "weights": None}},
    }


def test_data_seed_may_fix_the_split_apart_from_the_training_seed(tmp_path, registry):
    text = "seed: 5\ndata: {name: toy_data, seed: 3}\nstages: {first: {stage: toy_stage}}\n"
    resolved = prepare(write(tmp_path, text), registry=registry)
    assert resolved["seed"] == 5 and resolved["data"]["seed"] == 3
    built = build(registry, "dataset", {"name": "echo_seed", "seed": 3}, seed=5)
    assert built == 3 and build(registry, "dataset", {"name": "echo_seed"}, seed=5) == 5


def takes_data(data: int = 0):
    """A stage whose parameter is named as hvkit's own ``data`` key."""


def test_a_stage_may_read_its_own_data(tmp_path, registry):
    text = BASE + "  second: {stage: toy_stage, epochs: 2, data: {name: toy_data, writers: 7, seed: 4}}\n"
    resolved = prepare(write(tmp_path, text), registry=registry)
    assert resolved["stages"]["second"]["data"] == {"name": "toy_data", "writers": 7, "root": None, "seed": 4}
    assert resolved["stages"]["second"]["epochs"] == 2 and "data" not in resolved["stages"]["first"]
    with pytest.raises(RecipeError, match=r"recipe.yaml:stages.second.data.writers: expected int"):
        prepare(write(tmp_path, BASE + "  second: {stage: toy_stage, data: {name: toy_data, writers: many}}\n"),
                registry=registry)
    registry = make_registry(dataset={"toy_data": toy_data}, loss={"toy_loss": toy_loss},
                             stage={"toy_stage": toy_stage, "takes_data": takes_data})
    with pytest.raises(RecipeError, match=r"recipe.yaml:stages.second: stage plugin 'takes_data' takes a parameter "
                                          r"'data', which hvkit reserves for a stage's own dataset \(API 1.9\)"):
        prepare(write(tmp_path, BASE + "  second: {stage: takes_data}\n"), registry=registry)


def test_valid_values_pass(tmp_path, registry):
    weights = write(tmp_path, "", "weights.bin")
    recipe = write(tmp_path, f"""
        seed: 3
        data: {{name: toy_data, root: {tmp_path}}}
        stages:
          pre: {{stage: needs_count, count: 2}}
          first:
            stage: toy_stage
            epochs: 3
            lr: 1
            amp: false
            mode: slow
            widths: []
            loss: {{name: toy_loss, miner: {{name: toy_miner, k: 2}}}}
            optimizer: {{name: AdamW, lr: 1e-3, betas: [0.9, 0.99]}}
            scheduler: {{name: CosineAnnealingLR, warmup_steps: 5}}
            init_from: pre
            members: [pre, pre]
            weights: {weights}
        """)
    first = prepare(recipe, registry=registry)["stages"]["first"]
    assert first["loss"] == {"name": "toy_loss", "margin": 0.1, "miner": {"name": "toy_miner", "k": 2}}
    assert first["optimizer"] == {"name": "AdamW", "lr": 0.001, "betas": [0.9, 0.99]}
    assert first["lr"] == 1 and first["widths"] == [] and first["init_from"] == "pre"
    assert first["members"] == ["pre", "pre"]


def test_a_stage_check_sees_its_resolved_spec_and_each_earlier_stage(tmp_path, registry):
    CheckedStage.seen.clear()
    text = "data: {name: toy_data}\nstages:\n  first: {stage: toy_stage, epochs: 2}\n  second: {stage: checked}\n"
    resolved = prepare(write(tmp_path, text), registry=registry)
    [(spec, earlier)] = CheckedStage.seen
    assert spec == {"stage": "checked", "source": "first"} == resolved["stages"]["second"]
    assert list(earlier) == ["first"] and earlier["first"] == (toy_stage, resolved["stages"]["first"])


def test_a_check_that_declares_registry_gets_the_validating_one(tmp_path, registry):
    RegistryCheckedLoss.seen.clear()
    prepare(write(tmp_path, stage(loss="{name: registry_checked}")), registry=registry)
    assert RegistryCheckedLoss.seen == [registry]
    with pytest.raises(RecipeError, match="unknown loss 'toy_los'; did you mean 'toy_loss'") as info:
        prepare(write(tmp_path, stage(loss="{name: registry_checked, partner: toy_los}")), registry=registry)
    assert info.value.path == "stages.first.loss"


def test_a_stage_like_an_earlier_one_starts_from_its_settings_as_written(tmp_path, registry):
    text = """
        data: {name: toy_data}
        stages:
          first: {stage: toy_stage, epochs: 3, widths: [2], loss: {name: toy_loss, margin: 0.5}}
          second: {like: first, lr: 0.5, loss: {miner: toy_miner}}
          fourth: {like: first, loss: {name: registry_checked}}
        """
    resolved = prepare(write(tmp_path, text), ["stages.first.epochs=4"], registry=registry)["stages"]
    first, second = resolved["first"], resolved["second"]
    assert first["epochs"] == second["epochs"] == 4 and second["widths"] == [2] and second["lr"] == 0.5
    assert first["lr"] == 0.1 and first["loss"]["miner"] is None
    assert second["loss"] == {"name": "toy_loss", "margin": 0.5, "miner": {"name": "toy_miner", "k": 1}}
    assert resolved["fourth"]["loss"] == {"name": "registry_checked", "partner": "toy_loss"}  # margin gone
    assert "like" not in second
    with pytest.raises(RecipeError, match="unknown parameter for stage 'checked'") as info:
        prepare(write(tmp_path, text.rstrip(" ") + "          third: {like: second, stage: checked}\n"), registry=registry)
    assert info.value.path == "stages.third.epochs"


def test_like_is_a_key_no_stage_plugin_may_take(tmp_path, registry):
    def liking(like: str = "x"):
        """A stage whose parameter clashes with the recipe key."""

    registry.add_plugin(plugin_module("liking", stage={"liking": liking}), name="liking:test", package="liking")
    with pytest.raises(RecipeError, match="takes a parameter 'like', which hvkit reserves for the stage a stage "
                                          "starts from") as info:
        prepare(write(tmp_path, "data: {name: toy_data}\nstages: {first: {stage: liking}}\n"), registry=registry)
    assert info.value.path == "stages.first"


def test_lars_is_a_recipe_optimiser(tmp_path, registry):
    recipe = write(tmp_path, f"""
        data: {{name: toy_data, root: {tmp_path}}}
        stages:
          first: {{stage: toy_stage, optimizer: {{name: LARS, lr: 0.2, eta: 0.001}}}}
        """)
    assert prepare(recipe, registry=registry)["stages"]["first"]["optimizer"] == {"name": "LARS", "lr": 0.2, "eta": 0.001}


def stage(**params: str) -> str:
    items = ", ".join(f"{k}: {v}" for k, v in params.items())
    return f"data: {{name: toy_data}}\nstages:\n  first: {{stage: toy_stage, {items}}}\n"


CASES = {
    "unknown dataset": ("data: {name: toy_dta}\nstages: {first: {stage: toy_stage}}\n", "data.name",
                        "unknown dataset 'toy_dta'; did you mean 'toy_data'?"),
    "unknown stage": ("data: {name: toy_data}\nstages: {first: {stage: toy_stag}}\n", "stages.first.stage",
                      "unknown stage 'toy_stag'; did you mean 'toy_stage'?"),
    "unknown nested component": (stage(loss="toy_los"), "stages.first.loss.name",
                                 "unknown loss 'toy_los'; did you mean 'toy_loss'?"),
    "unknown nested miner": (stage(loss="{name: toy_loss, miner: toy_minr}"), "stages.first.loss.miner.name",
                             "did you mean 'toy_miner'?"),
    "unknown parameter": (stage(epoch=2), "stages.first.epoch",
                          "unknown parameter for stage 'toy_stage'; did you mean 'epochs'?"),
    "unknown nested parameter": (stage(loss="{name: toy_loss, margn: 1}"), "stages.first.loss.margn",
                                 "did you mean 'margin'?"),
    "str where float": (stage(lr="fast"), "stages.first.lr", "expected float, got 'fast'"),
    "float where int": (stage(epochs=1.5), "stages.first.epochs", "expected int, got 1.5"),
    "bool where int": (stage(epochs="true"), "stages.first.epochs", "expected int, got True"),
    "int where bool": (stage(amp=1), "stages.first.amp", "expected bool, got 1"),
    "literal choice": (stage(mode="medium"), "stages.first.mode", "expected one of 'fast', 'slow', got 'medium'"),
    "list element": (stage(widths="[8, wide]"), "stages.first.widths", "expected list[int], got [8, 'wide']"),
    "not a list": (stage(widths=8), "stages.first.widths", "expected list[int], got 8"),
    "missing required": ("data: {name: toy_data}\nstages: {first: {stage: needs_count}}\n", "stages.first.count",
                         "missing required parameter of stage 'needs_count' (expected int)"),
    "context argument": (stage(loss="{name: toy_loss, embedding_dim: 3}"), "stages.first.loss.embedding_dim",
                         "'embedding_dim' is provided by hvkit at run time; remove it"),
    "dataset seed must be an int": ("data: {name: toy_data, seed: x}\nstages: {first: {stage: toy_stage}}\n",
                                    "data.seed", "expected int, got 'x'"),
    "unknown top-level key": (BASE + "stage: {}\n", "stage", "unknown top-level key; did you mean 'stages'"),
    "missing data": ("stages: {first: {stage: toy_stage}}\n", "data", "missing"),
    "bad seed": (BASE + "seed: abc\n", "seed", "expected an int, got 'abc'"),
    "missing path": (stage(weights="/no/such/weights.pt"), "stages.first.weights",
                     "file or folder not found: '/no/such/weights.pt'"),
    "like a later stage": ("data: {name: toy_data}\nstages:\n  first: {like: second}\n  second: {stage: toy_stage}\n",
                           "stages.first.like", "expected the name of an earlier stage (none), got 'second'"),
    "like an unknown stage": ("data: {name: toy_data}\nstages:\n  first: {stage: toy_stage}\n  second: {like: frist}\n",
                              "stages.second.like", "expected the name of an earlier stage (first), got 'frist'"),
    "like a parameter the base's plugin lacks": ("data: {name: toy_data}\nstages:\n  first: {stage: toy_stage}\n"
                                                 "  second: {like: first, count: 2}\n", "stages.second.count",
                                                 "unknown parameter for stage 'toy_stage'"),
    "later stage": ("data: {name: toy_data}\nstages:\n  first: {stage: toy_stage, init_from: second}\n"
                    "  second: {stage: toy_stage}\n", "stages.first.init_from", "'second' is not an earlier stage"),
    "unknown stage ref": ("data: {name: toy_data}\nstages:\n  first: {stage: toy_stage}\n"
                          "  second: {stage: toy_stage, init_from: frist}\n", "stages.second.init_from",
                          "'frist' is not an earlier stage; did you mean 'first'?"),
    "unknown stage ref in a list": ("data: {name: toy_data}\nstages:\n  first: {stage: toy_stage}\n"
                                    "  second: {stage: toy_stage, members: [first, frist]}\n",
                                    "stages.second.members.1", "'frist' is not an earlier stage; did you mean 'first'?"),
    "later stage in a list": ("data: {name: toy_data}\nstages:\n  first: {stage: toy_stage, members: [second]}\n"
                              "  second: {stage: toy_stage}\n", "stages.first.members.0",
                              "'second' is not an earlier stage"),
    "a stage's own check, at a key": ("data: {name: toy_data}\nstages:\n  first: {stage: toy_stage}\n"
                                      "  second: {stage: checked, source: frist}\n", "stages.second.source",
                                      "'frist' is no earlier stage"),
    "a stage's own check, at the stage": ("data: {name: toy_data}\nstages:\n  first: {stage: toy_stage}\n"
                                          "  second: {stage: checked, source: itself}\n", "stages.second",
                                          "a stage cannot read its own outputs"),
    "a loss's own check, at a key": ("data: {name: toy_data}\nstages:\n"
                                     "  first: {stage: toy_stage, loss: {name: checked_loss, low: 2}}\n",
                                     "stages.first.loss.low", "low=2 is above high=1.0"),
    "a loss's own check against the earlier stages": ("data: {name: toy_data}\nstages:\n  first: {stage: toy_stage}\n"
                                                      "  second: {stage: toy_stage, loss: checked_loss}\n",
                                                      "stages.second.loss", "only the first stage may use it"),
    "unknown optimizer": (stage(optimizer="{name: Adamw}"), "stages.first.optimizer.name",
                          "unknown optimiser 'Adamw'; did you mean 'AdamW'"),
    "unknown optimizer argument": (stage(optimizer="{name: SGD, lr: 0.1, betas: [0.9, 0.9]}"),
                                   "stages.first.optimizer.betas", "unknown argument of SGD"),
    "unknown LARS argument": (stage(optimizer="{name: LARS, lr: 0.2, nesterov: true}"),
                              "stages.first.optimizer.nesterov", "unknown argument of LARS"),
    "mistyped optimizer argument": (stage(optimizer="{name: SGD, lr: fast}"), "stages.first.optimizer.lr",
                                    "expected float or Tensor, got 'fast'"),
    "unknown scheduler": (stage(scheduler="{name: Cosine}"), "stages.first.scheduler.name",
                          "unknown LR scheduler 'Cosine'"),
    "scheduler warmup type": (stage(scheduler="{name: CosineAnnealingLR, warmup_steps: 1.5}"),
                              "stages.first.scheduler.warmup_steps", "expected int, got 1.5"),
}


@pytest.fixture(params=sorted(CASES))
def bad_recipe(request, tmp_path):
    text, key_path, fragment = CASES[request.param]
    return write(tmp_path, text), key_path, fragment


def test_error_names_file_key_path_and_fix(bad_recipe, registry):
    path, key_path, fragment = bad_recipe
    with pytest.raises(RecipeError) as info:
        prepare(path, registry=registry)
    message = str(info.value)
    assert message.startswith(f"{path}:{key_path}: "), message
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_exits_2_with_one_line_and_no_traceback(bad_recipe, registry, command, tmp_path):
    path, key_path, fragment = bad_recipe
    registry_module.set_registry(registry)
    args = [command, str(path)] + (["--run-dir", str(tmp_path / "run")] if command == "run" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {path}:{key_path}: ")
    assert fragment in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


EVERY_PROBLEM = """
seed: abc
data: {name: toy_dta}
model: {backbone: {name: toy_stage}, head: x}
stages:
  first: {stage: toy_stage, epoch: 2, lr: fast, loss: {name: toy_loss, margn: 1}, optimizer: {name: SGD, lr: 0.1},
          widths: [8, wide], members: [frist, secnd]}
  second: {stage: needs_count, data: {name: toy_data, writers: many}}
  third: {stage: toy_stage, amp: 1, mode: fast}
stage: {}
"""

EVERY_PATH = [
    ("stage", "unknown top-level key"), ("seed", "expected an int"), ("data.name", "unknown dataset 'toy_dta'"),
    ("model.backbone.name", "unknown backbone 'toy_stage'"), ("model.head", "unknown key"),
    ("stages.first.epoch", "did you mean 'epochs'"), ("stages.first.lr", "expected float, got 'fast'"),
    ("stages.first.loss.margn", "did you mean 'margin'"), ("stages.first.widths", "expected list[int]"),
    ("stages.first.members.0", "'frist' is not an earlier stage"),
    ("stages.first.members.1", "'secnd' is not an earlier stage"),
    ("stages.second.count", "missing required parameter"), ("stages.second.data.writers", "expected int, got 'many'"),
    ("stages.third.amp", "expected bool, got 1")]


def test_every_problem_is_reported_in_recipe_order(tmp_path, registry):
    path = write(tmp_path, EVERY_PROBLEM)
    with pytest.raises(RecipeErrors) as info:
        prepare(path, registry=registry)
    found = [(error.path, error.reason) for error in info.value.errors]
    assert [p for p, _ in found] == [p for p, _ in EVERY_PATH]
    for (_, reason), (_, fragment) in zip(found, EVERY_PATH):
        assert fragment in reason
    assert (info.value.path, info.value.reason) == found[0]
    assert str(info.value).splitlines() == [f"{path}:{p}: {reason}" for p, reason in found]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_prints_every_problem_on_its_own_line(tmp_path, registry, command):
    registry_module.set_registry(registry)
    path = write(tmp_path, EVERY_PROBLEM)
    args = [command, str(path)] + (["--run-dir", str(tmp_path / "run")] if command == "run" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [f"{path}:{p}" for p, _ in EVERY_PATH]
    assert all(line.startswith("error: ") for line in lines)
    assert not (tmp_path / "run").exists()


def test_what_follows_from_a_failed_stage_is_not_reported_again(tmp_path, registry):
    CheckedStage.seen.clear()
    text = """
    data: {name: toy_data}
    stages:
      first: {stage: toy_stage, epochs: x}
      second: {stage: toy_stage, init_from: first, members: [first, frist], lr: slow}
      third: {like: first, lr: 0.2}
      fourth: {stage: checked, source: first}
      fifth: {stage: checked, source: itself, data: {name: toy_data, writers: x}}
      sixth: {stage: toy_stage, init_from: third}
    """
    with pytest.raises(RecipeErrors) as info:
        prepare(write(tmp_path, text), registry=registry)
    assert [error.path for error in info.value.errors] == [
        "stages.first.epochs", "stages.second.members.1", "stages.second.lr", "stages.fifth.data.writers"]
    assert [spec["source"] for spec, _ in CheckedStage.seen] == ["first", "itself"]  # both fail, unreported


def test_a_component_with_a_problem_is_neither_checked_nor_built(tmp_path, registry):
    refusing.built.clear()
    text = """
    data: {name: toy_data}
    stages:
      first: {stage: toy_stage, loss: {name: checked_loss, low: 2, hihg: 1}}
      second: {stage: toy_stage, loss: {name: refusing, margin: -1, wieght: 2}, epochs: x}
    """
    with pytest.raises(RecipeErrors) as info:
        prepare(write(tmp_path, text), registry=registry)
    assert [error.path for error in info.value.errors] == [
        "stages.first.loss.hihg", "stages.second.loss.wieght", "stages.second.epochs"]
    assert refusing.built == []


def test_one_problem_is_a_plain_recipe_error(tmp_path, registry):
    with pytest.raises(RecipeError) as info:
        prepare(write(tmp_path, stage(epoch=2)), registry=registry)
    assert type(info.value) is RecipeError


def test_validate_reports_each_file_and_show_prints_defaults(tmp_path, registry):
    registry_module.set_registry(registry)
    good = write(tmp_path, BASE, "good.yaml")
    bad = write(tmp_path, stage(epoch=2), "bad.yaml")
    result = CliRunner().invoke(main, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert result.stdout == f"ok: {good}\n"
    assert result.stderr.startswith(f"error: {bad}:stages.first.epoch: ")
    shown = CliRunner().invoke(main, ["validate", "--show", str(good)])
    assert shown.exit_code == 0 and "margin: 0.1" in shown.stdout


def test_invalid_yaml_gives_line_and_column(tmp_path, registry):
    path = write(tmp_path, "data: {name: toy_data}\nstages:\n  first: [unclosed\n")
    with pytest.raises(RecipeError) as info:
        prepare(path, registry=registry)
    assert str(info.value).startswith(f"{path}: line 4, column 1: invalid YAML")
    assert "\n" not in str(info.value)


def test_duplicate_key_is_refused_with_its_line(tmp_path, registry):
    path = write(tmp_path, "data: {name: toy_data}\nstages:\n  first:\n    stage: toy_stage\n    lr: 0.1\n    lr: 0.2\n")
    with pytest.raises(RecipeError) as info:
        prepare(path, registry=registry)
    assert str(info.value) == f"{path}: line 6, column 5: invalid YAML (duplicate key 'lr')"


def test_yaml_merge_keys_may_be_overridden():
    assert safe_load("a: &x {p: 1, q: 2}\nb: {<<: *x, q: 3}\n") == {"a": {"p": 1, "q": 2}, "b": {"p": 1, "q": 3}}


def test_missing_extends_file(tmp_path, registry):
    path = write(tmp_path, "extends: base.yaml\n" + BASE)
    with pytest.raises(RecipeError, match=r"recipe\.yaml:extends: extended recipe 'base\.yaml' not found"):
        prepare(path, registry=registry)


def test_extends_cycle(tmp_path, registry):
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: [a.yaml]\n", "b.yaml")
    path = write(tmp_path, "extends: a.yaml\n" + BASE)
    with pytest.raises(RecipeError) as info:
        prepare(path, registry=registry)
    assert str(info.value) == f"{path}:extends: extends forms a cycle (recipe.yaml -> a.yaml -> b.yaml -> a.yaml)"


def test_missing_recipe_file(tmp_path, registry):
    with pytest.raises(RecipeError, match="recipe file not found"):
        prepare(tmp_path / "nope.yaml", registry=registry)


def test_broken_default_component_names_the_parameter(tmp_path):
    registry = make_registry(dataset={"toy_data": toy_data}, stage={"toy_stage": toy_stage})
    with pytest.raises(RecipeError) as info:
        prepare(write(tmp_path, BASE), registry=registry)
    assert str(info.value).startswith(f"{tmp_path / 'recipe.yaml'}:stages.first.loss.name: unknown loss 'toy_loss'")


def test_a_factory_that_refuses_a_value_fails_validation_under_every_stand_in_context(tmp_path, registry,
                                                                                      monkeypatch):
    def loss(spec: str) -> Path:
        return write(tmp_path, BASE.replace("{stage: toy_stage}", f"{{stage: toy_stage, loss: {spec}}}"))

    def refused(spec: str) -> str:
        with pytest.raises(RecipeError) as caught:
            prepare(loss(spec), registry=registry)
        return str(caught.value).removeprefix(f"{tmp_path / 'recipe.yaml'}:")

    refusing.built.clear()
    prepare(loss("{name: refusing, margin: 0.5}"), registry=registry)
    assert refusing.built == [0.5]  # built once, as the recipe says
    assert refused("{name: refusing, margin: -1}") == "stages.first.loss: refusing: margin=-1 must be >= 0"
    refusing_sized.dims.clear()
    assert refused("{name: refusing_sized, margin: -1}") == "stages.first.loss: refusing: margin=-1 must be >= 0"
    assert refusing_sized.dims == list(STAND_INS["embedding_dim"])  # refused under every stand-in
    refusing_sized.dims.clear()
    prepare(loss("{name: refusing_sized, margin: 0.5}"), registry=registry)
    assert refusing_sized.dims == [STAND_INS["embedding_dim"][0]]  # the first stand-in builds it
    bounded.built.clear()
    prepare(loss("{name: bounded, w_size: 600}"), registry=registry)  # (1, 10000] holds it; run time checks the rest
    assert bounded.built == [(1, 2), (1, 10_000)]
    assert refused("{name: bounded, w_size: 1}") == "stages.first.loss: bounded: w_size=1 must lie in (1, 2]"
    assert len(bounded.built) == 2 + 4  # every combination of the two arguments' stand-ins
    wrapping.built.clear()
    assert refused("{name: wrapping, inner: {name: refusing_sized, margin: -2}}") == \
        "stages.first.loss.inner: refusing: margin=-2 must be >= 0"
    prepare(loss("{name: wrapping, inner: {name: bounded, w_size: 600}, weight: 2.0}"), registry=registry)
    assert wrapping.built == [2.0]  # the context reaches the inner loss through the outer one
    monkeypatch.delitem(STAND_INS, "embedding_dim")  # a context argument without a stand-in: not built
    refusing_sized.dims.clear()
    wrapping.built.clear()
    prepare(loss("{name: refusing_sized, margin: -1}"), registry=registry)
    prepare(loss("{name: wrapping, inner: {name: refusing_sized, margin: -1}}"), registry=registry)
    assert refusing_sized.dims == [] and wrapping.built == []


def test_a_stage_is_built_at_validation_and_its_sampler_with_the_stage_batch_size(tmp_path, registry):
    def recipe(spec: str) -> Path:
        return write(tmp_path, BASE.replace("{stage: toy_stage}", spec))

    def refused(spec: str) -> str:
        with pytest.raises(RecipeError) as caught:
            prepare(recipe(spec), registry=registry)
        return str(caught.value).removeprefix(f"{tmp_path / 'recipe.yaml'}:")

    assert refused("{stage: sampled, fraction: 1.5}") == "stages.first: sampled: fraction=1.5 must be in (0, 1]"
    ToySampler.built.clear()
    prepare(recipe("{stage: sampled, batch_size: 12, sampler: {name: toy_sampler, k: 3}}"), registry=registry)
    assert ToySampler.built == [(len(STAND_INS["labels"][0]), 12)]  # the stage's batch, the stand-in writers
    assert refused("{stage: sampled, batch_size: 10, sampler: {name: toy_sampler, k: 4}}") == \
        "stages.first.sampler: toy_sampler: batch_size 10 must be a multiple of k=4 >= 1"
    prepare(recipe("{stage: sampled, sampler: {name: toy_sampler, writers_needed: 8000}}"), registry=registry)
    grouped.had_groups.clear()
    prepare(recipe("{stage: sampled, sampler: grouped}"), registry=registry)
    assert grouped.had_groups == [True]  # the stand-in groups come first, and build it
    loose.built.clear()
    prepare(recipe("{stage: sampled, sampler: loose}"), registry=registry)
    assert loose.built == [["batch_size", "documents", "groups", "labels", "rank", "seed",
                            "world_size"]]  # all of its kind's
    ToySampler.built.clear()
    prepare(recipe("{stage: unsized, sampler: {name: toy_sampler, k: 0}}"), registry=registry)
    assert ToySampler.built == []  # no batch_size to build it with: checked when the stage starts
