"""``hvkit list-plugins`` and ``hvkit --help`` over throwaway installed plugin packages."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hvkit import registry as registry_module
from hvkit.cli import main
from hvkit.registry import Registry, load_entry_points

from .test_registry import GOOD

COMMAND = """
import click
from hvkit.api import hookimpl


@click.command("toy-hello")
def hello():
    '''Say hello from a plugin command.'''
    click.echo("hello from toy")


@hookimpl
def register_commands(register):
    register(hello)
"""


@pytest.fixture
def installed(distributions, monkeypatch):
    """A good loss package, a command package and a package that fails to import."""
    dists = [distributions.add("hvkit-toy", "1.2.3", "hvkit_cli_toy", GOOD),
             distributions.add("hvkit-hello", "0.1", "hvkit_cli_hello", COMMAND),
             distributions.add("hvkit-broken", "0.0.1", "hvkit_cli_broken", "import no_such_module_xyz\n")]
    monkeypatch.setenv(registry_module.ALLOW_ENV, ",".join(dists))
    return dists


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_works_with_a_broken_plugin_and_shows_plugin_commands(installed):
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    assert "list-plugins" in result.stdout and "toy-hello" in result.stdout
    assert "Traceback" not in result.output
    hello = invoke("toy-hello")
    assert (hello.exit_code, hello.stdout) == (0, "hello from toy\n")


def test_list_plugins_shows_kind_name_package_version_summary(installed):
    result = invoke("list-plugins")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "loss:" in lines
    [toy] = [line for line in lines if line.split()[:1] == ["toy"]]
    assert toy.split()[1:3] == ["hvkit-toy", "1.2.3"]
    assert toy.endswith("A toy loss for discovery tests.")
    assert "More text" not in result.stdout
    [hello] = [line for line in lines if line.split()[:1] == ["toy-hello"]]
    assert "hvkit-hello" in hello and "Say hello from a plugin command." in hello
    [broken] = [line for line in lines if "hvkit-broken" in line]
    assert "No module named 'no_such_module_xyz'" in broken


def test_list_plugins_json_parses(installed):
    result = invoke("list-plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {(row["kind"], row["name"] or row["plugin"]): row for row in json.loads(result.stdout)}
    assert rows[("loss", "toy")] == {"kind": "loss", "name": "toy", "package": "hvkit-toy", "version": "1.2.3",
                                     "summary": "A toy loss for discovery tests.", "status": "ok"}
    assert rows[("command", "toy-hello")]["package"] == "hvkit-hello"
    broken = rows[(None, "hvkit_cli_broken")]
    assert broken["status"] == "broken" and broken["package"] == "hvkit-broken"
    assert "no_such_module_xyz" in broken["summary"]


def test_list_plugins_kind_filter(installed):
    result = invoke("list-plugins", "--kind", "command", "--json")
    kinds = {row["kind"] for row in json.loads(result.stdout) if row["status"] == "ok"}
    assert kinds == {"command"}
    bad = invoke("list-plugins", "--kind", "losses")
    assert bad.exit_code == 2 and "unknown kind 'losses'" in bad.stderr


def test_check_exit_code(installed, distributions):
    assert invoke("list-plugins", "--check").exit_code == 1
    registry_module.set_registry(load_entry_points(Registry(), allow={"hvkit-toy", "hvkit-hello"}))
    assert invoke("list-plugins", "--check").exit_code == 0


def test_requirements_prints_name_equals_version(installed):
    result = invoke("list-plugins", "--requirements")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["hvkit-hello==0.1", "hvkit-toy==1.2.3"]
