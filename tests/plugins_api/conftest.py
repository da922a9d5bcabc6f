"""Fixtures for the plugin-author tests: throwaway installed packages and an isolated registry."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from hvkit import registry as registry_module


class Site:
    """A ``site-packages``-like folder on ``sys.path``: installs throwaway plugin distributions.

    Each has a ``*.dist-info`` with an ``hvkit`` entry point, found by importlib.metadata as
    pip's would be. ``HVKIT_PLUGINS`` is set to exactly the packages installed here.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root, self.monkeypatch = root, monkeypatch
        self.packages: list[str] = []
        self.modules: list[str] = []
        root.mkdir()
        monkeypatch.syspath_prepend(str(root))
        monkeypatch.setenv(registry_module.ALLOW_ENV, "no-package-installed-yet")

    def install(self, package: str, version: str, module: str, source: str) -> str:
        (self.root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = self.root / f"{package.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n",
                                       encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[hvkit]\n{module} = {module}\n", encoding="utf-8")
        self.packages.append(package)
        self.modules.append(module)
        self.monkeypatch.setenv(registry_module.ALLOW_ENV, ",".join(self.packages))
        registry_module.set_registry(None)
        return package


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    registry_module.set_registry(None)
    installed = Site(tmp_path / "site", monkeypatch)
    yield installed
    for module in installed.modules:
        sys.modules.pop(module, None)
    registry_module.set_registry(None)
