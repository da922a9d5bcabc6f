"""``hvkit new-plugin NAME --kind KIND``: scaffold a pip-installable plugin package that passes its own test."""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

import click

from hvkit.api import API_VERSION, KINDS
from hvkit.hookspecs import KIND_HOOKS

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$package"
version = "0.1.0"
description = "$summary"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["hvkit"]

[project.optional-dependencies]
test = ["pytest>=8"]

# pip install makes hvkit find the plugin: the entry point is the registration.
[project.entry-points.hvkit]
$name = "$module"

[tool.setuptools]
packages = ["$module"]
''')

INIT = Template('''\
"""$package: registers the $kind ``$name`` with hvkit."""

from hvkit.api import hookimpl

from .$name import $cls

HVKIT_API_VERSION = $api


@hookimpl
def $hook(register):
    register("$name", $cls)
''')

TEST = Template('''\
"""Tests of the $kind ``$name``: hvkit's conformance kit, and its registration."""

import $module
from hvkit.testing import check_$kind
from $module import $cls


def test_keeps_the_hvkit_${kind}_contract():
    check_$kind($cls)


def test_registers_under_its_name():
    found = {}
    $module.$hook(register=lambda name, factory: found.update({name: factory}))
    assert found == {"$name": $cls}
''')

README = Template('''\
# $package

An hvkit $kind plugin, `$name`. $summary.

```
pip install -e .                   # hvkit finds it through the `hvkit` entry point
pytest tests                       # hvkit's conformance kit, then your own tests
hvkit list-plugins --kind $kind    # `$name` with this package and its version
```

Use it in a recipe:

```yaml
$usage
```

`$module/$name.py` holds the component: its signature is the recipe schema (precise type
hints, a default for every parameter), the first line of its docstring is what
`hvkit list-plugins` shows. Replace the starting formula with yours, keep the tests green,
and add tests of your own values. The plugin-author guide is hvkit's `docs/plugins.md`.
''')

# What each kind's starting component is: summary, recipe usage, module body (``$cls`` filled in).
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "loss": (
        "Pair loss: same-label pairs pulled together, other pairs pushed past a margin",
        "stages:\n  train:\n    stage: metric_train\n    loss: {name: $name, margin: 0.5}",
        '''\
"""The ``$name`` loss."""

from __future__ import annotations

import torch

from hvkit.api import MetricLoss


class $cls(MetricLoss):
    """Pair loss: same-label pairs pulled together, other pairs pushed past a margin.

    Over every ordered pair (i, j), i != j, of the batch with Euclidean distance d_ij:
    same label adds d_ij^2, another label adds max(0, margin - d_ij)^2; the loss is the
    mean over pairs (0 for a batch of one sample). A miner's ``indices_tuple`` is not used.
    Default margin 0.5.
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        labels = labels.to(embeddings.device)
        squared = (embeddings.unsqueeze(1) - embeddings.unsqueeze(0)).pow(2).sum(dim=2)
        distance = squared.clamp_min(1e-12).sqrt()  # clamped: sqrt has no gradient at 0
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        other = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        push = (self.margin - distance).clamp_min(0).pow(2)
        terms = torch.where(same, squared, push) * other
        return terms.sum() / other.sum().clamp_min(1)
'''),
    "miner": (
        "Pair miner: every positive pair and the negatives closer than a margin",
        "stages:\n  train:\n    stage: metric_train\n    loss: multi_similarity\n    miner: {name: $name, margin: 0.8}",
        '''\
"""The ``$name`` miner."""

from __future__ import annotations

import torch
from torch import nn


class $cls(nn.Module):
    """Pair miner: every positive pair and the negatives closer than a margin.

    Returns pytorch-metric-learning's pair format ``(a1, p, a2, n)``: all pairs (a, p) of
    one label, a != p, and the pairs (a, n) of two labels whose Euclidean distance is
    below ``margin`` (default 0.8).
    """

    def __init__(self, margin: float = 0.8) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = margin

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        labels = labels.to(embeddings.device)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        other = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        close = torch.cdist(embeddings, embeddings) < self.margin
        a1, p = torch.nonzero(same & other, as_tuple=True)
        a2, n = torch.nonzero(~same & close, as_tuple=True)
        return a1, p, a2, n
'''),
    "sampler": (
        "Shuffled batches, deterministic by (seed, epoch), dealt out to ranks",
        "stages:\n  train:\n    stage: metric_train\n    sampler: $name",
        '''\
"""The ``$name`` batch sampler."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class $cls:
    """Shuffled batches, deterministic by (seed, epoch), dealt out to ranks.

    Each epoch shuffles the indices with a generator seeded by ``(seed, epoch)``, cuts
    full batches of ``batch_size`` and keeps a multiple of ``world_size`` of them; rank r
    yields batches r, r + world_size, … (labels are not used).
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1 or batch_size * world_size > len(labels):
            raise ValueError(f"batch_size {batch_size} x world_size {world_size} must lie in "
                             f"1..{len(labels)} (the number of samples)")
        self.size, self.batch_size, self.seed = len(labels), batch_size, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.batch_size // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        batches = order[: len(self) * self.world_size * self.batch_size].reshape(-1, self.batch_size)
        for batch in batches[self.rank::self.world_size]:
            yield batch.tolist()
'''),
    "evaluator": (
        "Mean cosine similarity of same-writer and of different-writer test pairs, and their gap",
        "stages:\n  test:\n    stage: evaluate\n    evaluators: [verification, $name]",
        '''\
"""The ``$name`` evaluator."""

from __future__ import annotations

from typing import Any

import numpy as np

from hvkit.evaluation import EvalData


class $cls:
    """Mean cosine similarity of same-writer and of different-writer test pairs, and their gap.

    Over the pairs i != j of unit test embeddings u: ``same_writer`` and ``other_writer``
    are the mean u_i . u_j of each kind, ``gap`` their difference (larger separates writers
    better). In O(N D): the pairs of a set S sum to |sum_S u|^2 - |S|.
    """

    name = "$name"
    requires = frozenset()

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, float]:
        norms = np.linalg.norm(data.embeddings, axis=1, keepdims=True)
        unit = data.embeddings.astype(np.float64) / np.maximum(norms, 1e-12)
        _, codes, counts = np.unique(data.labels, return_inverse=True, return_counts=True)
        by_writer = np.zeros((len(counts), unit.shape[1]))
        np.add.at(by_writer, codes, unit)
        same_sum = float(np.sum(by_writer**2) - len(unit))
        same_count = int(np.sum(counts * (counts - 1)))
        other_sum = float(np.sum(unit.sum(axis=0) ** 2) - len(unit)) - same_sum
        other_count = len(unit) * (len(unit) - 1) - same_count
        if same_count == 0 or other_count == 0:
            raise ValueError("$name needs a writer with two test embeddings and at least two writers")
        same, other = same_sum / same_count, other_sum / other_count
        return {"same_writer": same, "other_writer": other, "gap": same - other}
'''),
    "backbone": (
        "Two strided convolutions, global average pooling and a linear embedding",
        "model:\n  backbone: {name: $name, embedding_dim: 128}",
        '''\
"""The ``$name`` backbone."""

from __future__ import annotations

import torch
from torch import nn


class $cls(nn.Module):
    """Two strided convolutions, global average pooling and a linear embedding.

    Maps images (B, in_channels, H, W) to features (B, embedding_dim): 3x3 convolutions
    of ``width`` and 2 x ``width`` channels, stride 2, ReLU. Defaults: width 16,
    embedding_dim 128.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, embedding_dim: int = 128) -> None:
        super().__init__()
        if min(in_channels, width, embedding_dim) < 1:
            raise ValueError("in_channels, width and embedding_dim must be positive")
        self.embedding_dim = embedding_dim
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, embedding_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
'''),
    "head": (
        "Two-layer MLP head: Linear, ReLU, Linear",
        "stages:\n  train:\n    stage: metric_train\n    head: {name: $name, out_dim: 128}",
        '''\
"""The ``$name`` head."""

from __future__ import annotations

import torch
from torch import nn


class $cls(nn.Module):
    """Two-layer MLP head: Linear, ReLU, Linear.

    Maps (B, in_dim) to (B, out_dim) through ``hidden_dim`` units. Defaults: hidden_dim
    256, out_dim 128.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError("in_dim, hidden_dim and out_dim must be positive")
        self.out_dim = out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
'''),
    "transform": (
        "Random ink contrast: each image scaled by a factor in [1 - strength, 1 + strength]",
        "stages:\n  train:\n    stage: metric_train\n    transform: {name: $name, strength: 0.3}",
        '''\
"""The ``$name`` transform."""

from __future__ import annotations

import torch


class $cls:
    """Random ink contrast: each image scaled by a factor in [1 - strength, 1 + strength].

    The factor is uniform per image, drawn from the given generator; values are clamped
    to [0, 1]. Default strength 0.2.
    """

    def __init__(self, strength: float = 0.2) -> None:
        if not 0 < strength < 1:
            raise ValueError(f"strength must lie in (0, 1), got {strength}")
        self.strength = strength

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(images.shape[0], 1, 1, 1, generator=generator, device=images.device)
        factor = 1 + self.strength * (2 * u - 1)
        return (images * factor.to(images.dtype)).clamp(0, 1)
'''),
}

SUFFIX = {"loss": "Loss", "miner": "Miner", "sampler": "Sampler", "head": "Head",
          "transform": "Transform", "backbone": "", "evaluator": "Evaluator"}


def class_name(name: str, kind: str) -> str:
    """``pair_margin`` + loss → ``PairMarginLoss`` (no suffix twice: ``my_loss`` → ``MyLoss``)."""
    camel = "".join(part.capitalize() for part in name.split("_"))
    suffix = SUFFIX[kind]
    return camel if camel.endswith(suffix) else camel + suffix


def scaffold(name: str, kind: str, directory: Path) -> list[Path]:
    """Write the package ``hvkit-<name>`` under ``directory``; returns the files written."""
    package = "hvkit-" + name.replace("_", "-")
    module = "hvkit_" + name
    summary, usage, body = TEMPLATES[kind]
    values = {"name": name, "kind": kind, "package": package, "module": module,
              "cls": class_name(name, kind), "hook": KIND_HOOKS[kind], "summary": summary,
              "api": API_VERSION[0]}
    values["usage"] = Template(usage).substitute(values)
    root = directory / package
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.md": README,
        root / module / "__init__.py": INIT,
        root / module / f"{name}.py": Template(body),
        root / "tests" / f"test_{name}.py": TEST,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.substitute(values), encoding="utf-8")
    return list(files)


@click.command("new-plugin")
@click.argument("name")
@click.option("--kind", required=True, help=f"What the plugin provides: {', '.join(TEMPLATES)}.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to create the package folder hvkit-NAME.")
def new_plugin(name: str, kind: str, directory: Path) -> None:
    """Scaffold a plugin package (entry point, documented component, conformance test, README)."""
    supported = ", ".join(TEMPLATES)
    if kind not in TEMPLATES:
        what = "has no template" if kind in KINDS else "is not a plugin kind"
        raise click.BadParameter(f"{kind!r} {what}; new-plugin scaffolds: {supported}",
                                 param_hint="--kind")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise click.BadParameter(f"{name!r} must be lower-case letters, digits and underscores, "
                                 "starting with a letter (it names the component in recipes), "
                                 "e.g. pair_margin", param_hint="NAME")
    root = directory / ("hvkit-" + name.replace("_", "-"))
    if root.exists():
        raise click.ClickException(f"{root} already exists; choose another NAME or --dir")
    for path in scaffold(name, kind, directory):
        click.echo(f"created {path}")
    click.echo(f"\nnext: pip install -e {root} && pytest {root / 'tests'} && "
               f"hvkit list-plugins --kind {kind}")
