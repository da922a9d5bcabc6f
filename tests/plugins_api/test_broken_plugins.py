"""Broken third-party plugins, installed for real, seen through ``hvkit list-plugins``, ``validate`` and ``run``.

Each broken package is reported with its package, version and reason, and the other
plugins keep working: a recipe that uses only good components validates and runs.
(tests/core/test_registry.py covers the registry's bookkeeping in-process.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hvkit.cli import main

TOOLBOX = """
import numpy as np
import torch

from hvkit.api import Component, MetricLoss, Split, hookimpl

HVKIT_API_VERSION = 1


class ToyWriters:
    '''Random 8x8 images by three writers.'''

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)

        def split(n):
            images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
            return Split(images, np.arange(n) % 3, ["a", "b", "c"])

        self.name, self.synthetic, self.info = "toy_writers", True, {}
        self.splits = {"train": split(12), "test": split(6)}


class ToyHinge(MetricLoss):
    '''Mean hinge on the distances of same-writer pairs.'''

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings, labels, indices_tuple=None):
        same = labels[:, None] == labels[None]
        return (torch.cdist(embeddings, embeddings)[same] - self.margin).clamp_min(0).mean()


class ToyMargin(ToyHinge):
    '''The same hinge under a name another package also registers.'''


class ToyTrain:
    '''Evaluates a loss on the pixels of the training images.'''

    def __init__(self, loss: Component["loss"] = "toy_hinge"):
        self.loss = loss

    def run(self, ctx):
        split = ctx.dataset.splits["train"]
        x = split.images.flatten(1).float() / 255
        loss = ctx.build("loss", self.loss, embedding_dim=x.shape[1], num_classes=3)
        return {"metrics": {"loss": float(loss(x, torch.as_tensor(split.labels)))}}


@hookimpl
def register_datasets(register):
    register("toy_writers", ToyWriters)


@hookimpl
def register_losses(register):
    register("toy_hinge", ToyHinge)
    register("toy_margin", ToyMargin)


@hookimpl
def register_stages(register):
    register("toy_train", ToyTrain)
"""

LOSS = """
from hvkit.api import hookimpl
{head}

@hookimpl
def register_losses(register):
    register({name!r}, {factory})
"""

# name used in a recipe -> (package, module, source, what the error must say)
BROKEN = {
    "fancy_loss": ("hvkit-imports-badly", "hvkit_imports_badly",
                   "raise RuntimeError('weights file fancy.pt missing')\n",
                   ["unknown loss 'fancy_loss'", "hvkit-imports-badly 0.1",
                    "RuntimeError: weights file fancy.pt missing", "hvkit_imports_badly.py:1"]),
    "future_loss": ("hvkit-future", "hvkit_future",
                    LOSS.format(head="HVKIT_API_VERSION = 2\n", name="future_loss", factory="dict"),
                    ["unknown loss 'future_loss'", "hvkit-future 0.1",
                     "needs hvkit plugin API 2", "upgrade one of the two"]),
    "toy_margin": ("hvkit-dup", "hvkit_dup",
                   LOSS.format(head="def other(margin: float = 0.2):\n    '''Another.'''\n",
                               name="toy_margin", factory="other"),
                   ["loss 'toy_margin' is registered by both", "hvkit-toolbox", "hvkit-dup",
                    "uninstall one or rename it"]),
    "constant_loss": ("hvkit-constant", "hvkit_constant",
                      LOSS.format(head="", name="constant_loss", factory="0.5"),
                      ["loss 'constant_loss' from hvkit-constant 0.1", "registered as float",
                       "not callable", "register a class or function"]),
    "hinted_loss": ("hvkit-hinted", "hvkit_hinted",
                    LOSS.format(head="def hinted(scale: 'Tensorish' = 1.0):\n    '''Unresolvable hint.'''\n",
                                name="hinted_loss", factory="hinted"),
                    ["loss 'hinted_loss' from hvkit-hinted 0.1", "cannot be read",
                     "name 'Tensorish' is not defined", "type hints all resolve"]),
    "builtin_loss": ("hvkit-builtin", "hvkit_builtin",
                     LOSS.format(head="", name="builtin_loss", factory="max"),
                     ["loss 'builtin_loss' from hvkit-builtin 0.1", "no signature found",
                      "register a Python function or class"]),
}


@pytest.fixture
def installed(site):
    site.install("hvkit-toolbox", "2.0", "hvkit_toolbox", TOOLBOX)
    for package, module, source, _ in BROKEN.values():
        site.install(package, "0.1", module, source)
    return site


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def recipe(folder: Path, loss: str) -> Path:
    path = folder / f"uses_{loss}.yaml"
    path.write_text(f"name: uses_{loss}\ndata: toy_writers\nstages:\n"
                    f"  train: {{stage: toy_train, loss: {loss}}}\n", encoding="utf-8")
    return path


def test_list_plugins_reports_each_broken_package_and_keeps_the_good_ones(installed):
    result = invoke("list-plugins")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    good = {line.split()[0]: line.split()[1:3] for line in lines if "hvkit-toolbox 2.0" in line
            and not line.lstrip().startswith("loss '")}
    assert good == {"toy_writers": ["hvkit-toolbox", "2.0"], "toy_hinge": ["hvkit-toolbox", "2.0"],
                    "toy_train": ["hvkit-toolbox", "2.0"]}
    broken = lines[lines.index("broken:") + 1:]
    for name, (package, _, _, expected) in BROKEN.items():
        [line] = [b for b in broken if package in b]
        assert all(part in line for part in expected[2:]), (name, line)
    assert "Traceback" not in result.output


def test_list_plugins_json_and_check(installed):
    rows = json.loads(invoke("list-plugins", "--json").stdout)
    broken = [f"{row['package']} {row['summary']}" for row in rows if row["status"] == "broken"]
    assert len(broken) == len(BROKEN)
    for package, *_ in BROKEN.values():
        assert any(package in row for row in broken), package
    assert {row["name"] for row in rows if row["status"] == "ok"} == {"toy_writers", "toy_hinge",
                                                                    "toy_train"}
    assert invoke("list-plugins", "--check").exit_code == 1


@pytest.mark.parametrize("loss", sorted(BROKEN))
def test_validate_and_run_name_the_package_and_the_problem(installed, tmp_path, loss):
    path = recipe(tmp_path, loss)
    for args in (["validate", str(path)], ["run", str(path), "--run-dir", str(tmp_path / "run")]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: {path}:stages.train.loss.name: "), line
        for part in BROKEN[loss][3]:
            assert part in line, (part, line)
    assert not (tmp_path / "run").exists()


def test_a_recipe_of_good_components_validates_and_runs_beside_broken_plugins(installed, tmp_path):
    path = recipe(tmp_path, "toy_hinge")
    assert invoke("validate", str(path)).stdout == f"ok: {path}\n"
    result = invoke("run", str(path), "--run-dir", str(tmp_path / "run"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["loss"] > 0
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["plugins_used"] == {"hvkit-toolbox": "2.0"}
    assert {"hvkit-toolbox": "2.0", "hvkit-dup": "0.1"}.items() <= environment["plugins_installed"].items()


COMMAND = """
import click
from hvkit.api import hookimpl


@click.command("hello")
def hello():
    '''Say hello from {package}.'''
    click.echo("hello from {package}")


@hookimpl
def register_commands(register):
    register(hello)
    {extra}
"""


def test_a_command_name_two_packages_register_is_an_error_naming_both(site):
    site.install("hvkit-hello-a", "1.0", "hvkit_hello_a", COMMAND.format(package="a", extra="register('not a command')"))
    site.install("hvkit-hello-b", "2.0", "hvkit_hello_b", COMMAND.format(package="b", extra=""))
    listing = invoke("list-plugins")
    broken = listing.stdout.splitlines()
    assert "  command 'hello' from hvkit-hello-b 2.0: command 'hello' is registered by both " \
           "hvkit-hello-a (hvkit-hello-a:hvkit_hello_a) and hvkit-hello-b (hvkit-hello-b:hvkit_hello_b); " \
           "uninstall one or rename it" in broken
    assert any("hvkit-hello-a 1.0: registered str as a command; register a click.Command" in b for b in broken)
    assert sum("command 'hello'" in b for b in broken) == 1
    result = invoke("hello")
    assert result.exit_code == 2
    assert "command 'hello' from hvkit-hello-b 2.0 is broken: command 'hello' is registered by both" in result.stderr
    assert "hello from" not in result.output
