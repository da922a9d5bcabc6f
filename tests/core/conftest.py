"""Fixtures for the core tests: throwaway plugins, throwaway distributions, an isolated registry.

Nothing here imports a first-party plugin: every component is registered by the test itself.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import torch

from hvkit import registry as registry_module
from hvkit.api import hookimpl
from hvkit.engine import StageContext
from hvkit.hookspecs import KIND_HOOKS
from hvkit.registry import Registry


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch):
    """No test may load the installed (first-party) plugins by accident."""
    monkeypatch.setenv(registry_module.ALLOW_ENV, "no-such-plugin-package")
    registry_module.set_registry(None)
    yield
    registry_module.set_registry(None)


def _hook(factories: dict[str, Callable]) -> Callable:
    @hookimpl
    def hook(register):
        for name, factory in factories.items():
            register(name, factory)
    return hook


def plugin_module(name: str = "throwaway", **kinds: dict[str, Callable]) -> ModuleType:
    """A plugin module object: ``plugin_module(loss={"toy": Toy}, stage={...})``."""
    module = ModuleType(name)
    for kind, factories in kinds.items():
        setattr(module, KIND_HOOKS[kind], _hook(factories))
    return module


def make_registry(package: str = "hvkit-test", version: str = "1.0", **kinds: dict[str, Callable]) -> Registry:
    """A registry holding one throwaway plugin with the given factories."""
    registry = Registry()
    assert registry.add_plugin(plugin_module(**kinds), name=f"{package}:test", package=package,
                               version=version), registry.problems
    return registry


class Distributions:
    """Installs throwaway distributions (``*.dist-info`` + a module) into a folder on ``sys.path``."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self.modules: list[str] = []
        monkeypatch.syspath_prepend(str(root))

    def add(self, dist: str, version: str, module: str, source: str, entry: str | None = None) -> str:
        """Write ``module.py`` and a distribution ``dist`` whose ``hvkit`` entry point loads it."""
        (self.root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
                                       encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[hvkit]\n{entry or module} = {module}\n", encoding="utf-8")
        self.modules.append(module)
        return dist

    def cleanup(self) -> None:
        for module in self.modules:
            sys.modules.pop(module, None)


@pytest.fixture
def distributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "site").mkdir()
    dists = Distributions(tmp_path / "site", monkeypatch)
    yield dists
    dists.cleanup()


@pytest.fixture
def stage_context(tmp_path: Path) -> StageContext:
    """A CPU stage context over ``tmp_path`` with no data and no plugins."""
    return StageContext(name="fit", spec={}, recipe={"seed": 0}, run_dir=tmp_path, device=torch.device("cpu"),
                        registry=Registry(), outputs={}, data_fn=lambda: None, console=lambda _: None)
