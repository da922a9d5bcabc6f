"""Plugin discovery through real ``hvkit`` entry points, each plugin guarded on its own."""

from __future__ import annotations

import pytest

from hvkit import registry as registry_module
from hvkit.errors import HvkitError
from hvkit.registry import Registry, load_entry_points

GOOD = """
from hvkit.api import hookimpl


class Toy:
    '''A toy loss for discovery tests.

    More text that list-plugins must not show.
    '''

    def __init__(self, margin: float = 0.1):
        self.margin = margin


@hookimpl
def register_losses(register):
    register("toy", Toy)
"""

DUPLICATE = """
from hvkit.api import hookimpl


def other_toy(margin: float = 0.2):
    '''The same name from another package.'''


@hookimpl
def register_losses(register):
    register("toy", other_toy)
"""


def load(*dists: str) -> Registry:
    return load_entry_points(Registry(), allow=set(dists))


def messages(registry: Registry) -> str:
    return "\n".join(p.message for p in registry.problems)


def test_entry_point_component_shows_with_package_and_version(distributions):
    dist = distributions.add("hvkit-toy", "1.2.3", "hvkit_toy_good", GOOD)
    registry = load(dist)
    assert registry.problems == []
    entry = registry.get("loss", "toy")
    assert (entry.kind, entry.name, entry.package, entry.version) == ("loss", "toy", "hvkit-toy", "1.2.3")
    assert entry.summary == "A toy loss for discovery tests."
    assert entry.factory(margin=0.5).margin == 0.5
    assert [(s.package, s.version) for s in registry.sources] == [("hvkit-toy", "1.2.3")]


def test_import_error_is_a_problem_and_others_still_load(distributions):
    good = distributions.add("hvkit-toy", "1.0", "hvkit_toy_ok", GOOD)
    bad = distributions.add("hvkit-broken", "0.3", "hvkit_toy_broken",
                            "import os\nraise RuntimeError('boom: missing weights')\n")
    registry = load(good, bad)
    assert registry.get("loss", "toy").package == "hvkit-toy"
    [problem] = registry.problems
    assert (problem.package, problem.version) == ("hvkit-broken", "0.3")
    assert "RuntimeError: boom: missing weights" in problem.message
    assert "hvkit_toy_broken.py:2" in problem.message


def test_system_exit_at_import_is_contained(distributions):
    bad = distributions.add("hvkit-exits", "1.0", "hvkit_toy_exits", "raise SystemExit(3)\n")
    registry = load(bad)
    assert "SystemExit" in messages(registry)


def test_same_name_from_two_packages_names_both(distributions):
    a = distributions.add("hvkit-toy-a", "1.0", "hvkit_toy_a", GOOD)
    b = distributions.add("hvkit-toy-b", "2.0", "hvkit_toy_b", DUPLICATE)
    registry = load(a, b)
    [problem] = registry.problems
    assert "hvkit-toy-a" in problem.message and "hvkit-toy-b" in problem.message
    assert (problem.kind, problem.name) == ("loss", "toy")
    assert "toy" not in registry.names("loss")
    with pytest.raises(HvkitError, match="hvkit-toy-a.*hvkit-toy-b"):
        registry.get("loss", "toy")


def test_misspelt_hook_suggests_the_right_one(distributions):
    dist = distributions.add("hvkit-typo", "1.0", "hvkit_toy_typo", GOOD.replace(
        "def register_losses", "def register_loss"))
    registry = load(dist)
    [problem] = registry.problems
    assert "unknown hook 'register_loss'" in problem.message
    assert "did you mean 'register_losses'" in problem.message
    assert registry.names("loss") == []
    assert registry.sources == []


def test_hook_with_a_wrong_argument_name_is_a_problem(distributions):
    dist = distributions.add("hvkit-arg", "1.0", "hvkit_toy_arg", GOOD.replace(
        "def register_losses(register):\n    register(", "def register_losses(reg):\n    reg("))
    registry = load(dist)
    [problem] = registry.problems
    assert "register_losses" in problem.message and "reg" in problem.message
    assert registry.names("loss") == []


def test_non_callable_factory_is_a_problem(distributions):
    dist = distributions.add("hvkit-nc", "1.0", "hvkit_toy_nc", GOOD.replace(
        'register("toy", Toy)', 'register("toy", Toy)\n    register("fixed", 0.5)'))
    registry = load(dist)
    [problem] = registry.problems
    assert (problem.kind, problem.name) == ("loss", "fixed")
    assert "not callable" in problem.message
    assert registry.names("loss") == ["toy"]
    with pytest.raises(HvkitError, match="not callable"):
        registry.get("loss", "fixed")


def test_unresolvable_type_hint_is_a_problem(distributions):
    dist = distributions.add("hvkit-hint", "1.0", "hvkit_toy_hint", "from __future__ import annotations\n" + GOOD.replace(
        "margin: float = 0.1", "margin: NoSuchType = 0.1"))
    registry = load(dist)
    [problem] = registry.problems
    assert (problem.kind, problem.name) == ("loss", "toy")
    assert "cannot be read" in problem.message and "NoSuchType" in problem.message


def test_hook_that_raises_keeps_the_names_it_registered_before(distributions):
    dist = distributions.add("hvkit-raises", "1.0", "hvkit_toy_raises", GOOD.replace(
        'register("toy", Toy)', 'register("toy", Toy)\n    raise ValueError("half done")'))
    registry = load(dist)
    assert "register_losses raised ValueError: half done" in messages(registry)


def test_other_api_version_is_refused(distributions):
    dist = distributions.add("hvkit-future", "9.0", "hvkit_toy_future", GOOD + "\nHVKIT_API_VERSION = 99\n")
    registry = load(dist)
    [problem] = registry.problems
    assert "needs hvkit plugin API 99" in problem.message
    assert problem.package == "hvkit-future"
    assert registry.names("loss") == []
    with pytest.raises(HvkitError, match="unknown loss 'toy'.*needs hvkit plugin API 99"):
        registry.get("loss", "toy")


def test_unknown_name_suggests_the_nearest(distributions):
    registry = load(distributions.add("hvkit-toy", "1.0", "hvkit_toy_near", GOOD))
    with pytest.raises(HvkitError, match="unknown loss 'tyo'; did you mean 'toy'"):
        registry.get("loss", "tyo")


def test_allow_list_from_the_environment_limits_loading(distributions, monkeypatch):
    a = distributions.add("hvkit-toy-a", "1.0", "hvkit_toy_allow_a", GOOD)
    distributions.add("hvkit-toy-b", "1.0", "hvkit_toy_allow_b", DUPLICATE)
    monkeypatch.setenv("HVKIT_PLUGINS", f" {a} , ")
    registry = registry_module.get_registry(reload=True)
    assert registry.problems == []
    assert registry.get("loss", "toy").package == "hvkit-toy-a"
    assert [s.package for s in registry.sources] == ["hvkit-toy-a"]
    monkeypatch.setenv("HVKIT_PLUGINS", "hvkit_toy_allow_b")  # an entry-point name works too
    assert registry_module.get_registry(reload=True).get("loss", "toy").package == "hvkit-toy-b"
