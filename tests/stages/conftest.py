"""Stage tests run whole recipes: first-party plugins only, synthetic data cached per test."""

from __future__ import annotations

import pytest

from hvkit.registry import set_registry


@pytest.fixture(autouse=True)
def first_party_registry(monkeypatch, tmp_path):
    monkeypatch.delenv("HVKIT_PLUGINS", raising=False)
    monkeypatch.setenv("HVKIT_CACHE", str(tmp_path / "cache"))
    set_registry(None)
    yield
    set_registry(None)
