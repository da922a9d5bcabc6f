"""``hvkit new-plugin``: a scaffold of every supported kind passes its own tests out of the box."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest
import yaml
from click.testing import CliRunner

from hvkit import registry as registry_module
from hvkit.cli import main
from hvkit_plugins.commands.new_plugin import TEMPLATES

from .test_example_package import environment, pip_install

KINDS = ["loss", "miner", "sampler", "evaluator", "backbone", "head", "transform"]


@pytest.fixture(autouse=True)
def first_party_only(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(registry_module.ALLOW_ENV, "hvkit")
    registry_module.set_registry(None)
    yield
    registry_module.set_registry(None)


def new_plugin(*args: str):
    return CliRunner().invoke(main, ["new-plugin", *args])


def test_every_kind_scaffolds_a_package_whose_tests_pass(tmp_path):
    assert sorted(TEMPLATES) == sorted(KINDS)
    roots = []
    for kind in KINDS:
        result = new_plugin(f"my_{kind}", "--kind", kind, "--dir", str(tmp_path))
        assert result.exit_code == 0, result.output
        root = tmp_path / f"hvkit-my-{kind}"
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
            "README.md", f"hvkit_my_{kind}/__init__.py", f"hvkit_my_{kind}/my_{kind}.py",
            "pyproject.toml", f"tests/test_my_{kind}.py"]
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        assert project["entry-points"]["hvkit"] == {f"my_{kind}": f"hvkit_my_{kind}"}
        usage = (root / "README.md").read_text().split("```yaml\n")[1].split("```")[0]
        assert isinstance(yaml.safe_load(usage), dict) and f"my_{kind}" in usage
        roots.append(root)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *(str(r / "tests") for r in roots)], cwd=tmp_path, capture_output=True,
                            text=True, env=environment(*roots))
    assert result.returncode == 0, result.stdout[-4000:]
    assert f"{2 * len(KINDS)} passed" in result.stdout


def test_the_scaffold_installs_as_a_listed_plugin(tmp_path, monkeypatch):
    assert new_plugin("pair_margin", "--kind", "loss", "--dir", str(tmp_path)).exit_code == 0
    site = tmp_path / "site"
    pip_install(tmp_path / "hvkit-pair-margin", site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(registry_module.ALLOW_ENV, "hvkit-pair-margin")
    registry_module.set_registry(None)
    try:
        rows = json.loads(CliRunner().invoke(main, ["list-plugins", "--json"]).stdout)
    finally:
        sys.modules.pop("hvkit_pair_margin", None)
        sys.modules.pop("hvkit_pair_margin.pair_margin", None)
    assert rows == [{"kind": "loss", "name": "pair_margin", "package": "hvkit-pair-margin",
                     "version": "0.1.0", "status": "ok",
                     "summary": "Pair loss: same-label pairs pulled together, other pairs pushed "
                                "past a margin."}]


@pytest.mark.parametrize("args, message", [
    (["x", "--kind", "stage"], "Invalid value for --kind: 'stage' has no template; new-plugin "
                               "scaffolds: loss, miner, sampler, evaluator, backbone, head, transform"),
    (["x", "--kind", "losses"], "'losses' is not a plugin kind; new-plugin scaffolds: loss,"),
    (["My-Loss", "--kind", "loss"], "Invalid value for NAME: 'My-Loss' must be lower-case letters, "
                                    "digits and underscores"),
    (["class", "--kind", "loss"], "Invalid value for NAME: 'class' must be"),
])
def test_invalid_arguments_are_clear_errors(tmp_path, args, message):
    result = new_plugin(*args, "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_overwritten(tmp_path):
    (tmp_path / "hvkit-mine").mkdir()
    (tmp_path / "hvkit-mine" / "keep.txt").write_text("mine")
    result = new_plugin("mine", "--kind", "loss", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "hvkit-mine already exists; choose another NAME or --dir" in result.stderr
    assert [p.name for p in (tmp_path / "hvkit-mine").iterdir()] == ["keep.txt"]
