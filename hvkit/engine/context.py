"""What a stage sees while it runs: the run, the data, the builder and earlier outputs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hvkit.api import ComponentKind, WriterDataset
from hvkit.hookspecs import CONTEXT_ARGS, STAGE_DATA
from hvkit.recipe.schema import component_defaults, dataclass_type, parameters, special_marker
from hvkit.registry import Registry


def derive_seed(*keys: Any) -> int:
    """A 63-bit seed from any keys (stable across processes and Python versions)."""
    digest = hashlib.sha256("\x1f".join(str(k) for k in keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build(registry: Registry, kind: str, spec: str | dict, name_key: str = "name", **context: Any) -> Any:
    """Build a component from its (validated) recipe spec.

    Context arguments are passed when the factory accepts them and the spec does not set
    them (see :data:`hvkit.hookspecs.RECIPE_CONTEXT_ARGS`); nested component
    parameters of non-stage factories, given or defaulted, are built first with the same context.
    """
    if isinstance(spec, str):
        spec = {name_key: spec}
    entry = registry.get(kind, spec[name_key])
    params, var_kw = parameters(entry.factory)
    kwargs = {k: v for k, v in spec.items() if k != name_key}
    for key, value in list(kwargs.items()):
        config = dataclass_type(params[key].hint) if key in params else None
        if config is not None and isinstance(value, dict):
            kwargs[key] = config(**value)
    if kind != "stage":
        kwargs.update(component_defaults(params, kwargs))
        for key, value in list(kwargs.items()):
            marker = special_marker(params[key].hint) if key in params else None
            if isinstance(marker, ComponentKind) and value is not None:
                if isinstance(value, list):
                    kwargs[key] = [build(registry, marker.kind, v, **context) for v in value]
                else:
                    kwargs[key] = build(registry, marker.kind, value, **context)
    for key, value in context.items():
        if key in CONTEXT_ARGS.get(kind, ()) and (key in params or var_kw) and key not in kwargs:
            kwargs[key] = value
    return entry.factory(**kwargs)


@dataclass
class StageContext:
    """Passed to ``Stage.run``: everything a stage may use, nothing global."""

    name: str
    spec: dict[str, Any]
    recipe: dict[str, Any]
    run_dir: Path
    device: torch.device
    registry: Registry
    outputs: dict[str, dict[str, Any]]
    data_fn: Callable[[], WriterDataset]
    resume: bool = False
    rank: int = 0
    world_size: int = 1
    console: Callable[[str], None] = print
    _dataset: WriterDataset | None = field(default=None, repr=False)

    @property
    def seed(self) -> int:
        return int(self.recipe["seed"])

    @property
    def data_seed(self) -> int:
        """The seed of the data protocol (split, pairs): the ``seed`` of this stage's data (its own ``data``, else the
        recipe's) when set, else the recipe's ``seed``."""
        return int(self.spec.get(STAGE_DATA, self.recipe["data"]).get("seed", self.recipe["seed"]))

    @property
    def stage_dir(self) -> Path:
        path = self.run_dir / "stages" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def dataset(self) -> WriterDataset:
        if self._dataset is None:
            self._dataset = self.data_fn()
        return self._dataset

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def build(self, kind: str, spec: str | dict, **context: Any) -> Any:
        return build(self.registry, kind, spec, **context)

    def build_backbone(self, spec: str | dict | None = None, in_channels: int | None = None) -> torch.nn.Module:
        """The recipe's ``model.backbone`` (or ``spec``), on this run's device."""
        spec = spec or self.recipe["model"]["backbone"]
        if in_channels is None:
            in_channels = int(self.dataset.splits["train"].images.shape[1])
        return self.build("backbone", spec, in_channels=in_channels).to(self.device)

    def generator(self, *keys: Any, device: torch.device | None = None) -> torch.Generator:
        """A generator seeded from the recipe seed, this stage's name and ``keys``."""
        g = torch.Generator(device=device or self.device)
        g.manual_seed(derive_seed(self.seed, self.name, *keys))
        return g

    def output_path(self, stage: str, key: str) -> Path:
        """An earlier stage's output file, as an absolute path."""
        if stage not in self.outputs:
            raise KeyError(f"stage {stage!r} has no outputs (has it run?)")
        return self.run_dir / self.outputs[stage][key]

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.run_dir.resolve()))

    def log(self, message: str) -> None:
        if self.is_main:
            self.console(f"[{self.name}] {message}")
