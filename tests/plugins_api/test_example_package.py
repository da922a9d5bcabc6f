"""The third-party example, examples/hvkit-example-loss, installed for real with pip and used from a recipe.

pip installs a copy into a throwaway ``--target`` folder; putting that folder on the
path is all it takes for hvkit to find the loss, and deleting the install is all it takes
to lose it again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from hvkit import registry as registry_module
from hvkit.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hvkit-example-loss"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
PACKAGE, VERSION = PROJECT["name"], PROJECT["version"]
RECIPE = EXAMPLE / "recipes" / "example_contrastive.yaml"
TINY = ["data.synthetic_writers=20", "data.synthetic_samples_per_writer=4", "data.image_size=32",
        "stages.train.train.epochs=1", "stages.train.train.max_steps=2", "stages.train.batch_size=8",
        "stages.train.head.dims=[16]", "stages.test.plots=false"]


def pip_install(source: Path, target: Path) -> None:
    """``pip install --target`` a copy of ``source`` (the build writes into its source folder)."""
    copy = target.parent / f"{source.name}-src"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(copy)], check=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("example") / "site"
    pip_install(EXAMPLE, target)
    return target


@pytest.fixture
def on_path(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private copy of the install on ``sys.path``, every installed plugin allowed."""
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    monkeypatch.syspath_prepend(str(copy))
    monkeypatch.delenv(registry_module.ALLOW_ENV, raising=False)
    monkeypatch.setenv("HVKIT_CACHE", str(tmp_path / "cache"))
    registry_module.set_registry(None)
    yield copy
    registry_module.set_registry(None)
    for module in [m for m in sys.modules if m.split(".")[0] == "hvkit_example_loss"]:
        del sys.modules[module]


def environment(*paths: Path) -> dict[str, str]:
    """This process's environment with ``paths`` in front of PYTHONPATH and every plugin allowed."""
    env = {k: v for k, v in os.environ.items() if k != registry_module.ALLOW_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*map(str, paths), env.get("PYTHONPATH")]))
    return env


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_list_plugins_in_a_fresh_process_shows_the_installed_loss(site, tmp_path):
    assert (site / f"hvkit_example_loss-{VERSION}.dist-info" / "entry_points.txt").read_text() == (
        "[hvkit]\nexample_loss = hvkit_example_loss\n")
    result = subprocess.run([sys.executable, "-m", "hvkit", "list-plugins", "--kind", "loss", "--json"],
                            env=environment(site), cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["example_contrastive"] == {
        "kind": "loss", "name": "example_contrastive", "package": PACKAGE, "version": VERSION,
        "status": "ok", "summary": "Contrastive loss (Hadsell et al. 2006): same-label pairs pulled "
                                   "to distance 0, others pushed past a margin."}
    assert rows["triplet"]["package"] == "hvkit"


def test_its_own_tests_pass_against_the_installed_copy(on_path, tmp_path, capsys):
    outcome = pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(EXAMPLE / "tests")])
    output = capsys.readouterr().out
    assert outcome == pytest.ExitCode.OK, output[-3000:]
    assert "6 passed" in output
    assert sys.modules["hvkit_example_loss"].__file__.startswith(str(on_path))


def test_a_recipe_with_the_loss_validates_runs_and_records_the_package(on_path, tmp_path):
    assert invoke("validate", str(RECIPE)).stdout == f"ok: {RECIPE}\n"
    run_dir = tmp_path / "run"
    result = invoke("run", str(RECIPE), "--run-dir", str(run_dir), "--device", "cpu",
                    *(f"--set={o}" for o in TINY))
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and metrics["train"]["final_loss"] > 0
    assert 0.0 <= metrics["test"]["verification"]["cosine_pair"]["roc_auc"] <= 1.0
    environment_json = json.loads((run_dir / "environment.json").read_text())
    assert environment_json["plugins_used"] == {"hvkit": environment_json["versions"]["hvkit"],
                                                PACKAGE: VERSION}
    assert environment_json["plugins_installed"][PACKAGE] == VERSION
    requirements = invoke("list-plugins", "--requirements").stdout.splitlines()
    assert f"{PACKAGE}=={VERSION}" in requirements
    assert f"hvkit=={environment_json['versions']['hvkit']}" in requirements


def test_removing_the_install_removes_the_loss(on_path, tmp_path):
    rows = json.loads(invoke("list-plugins", "--json").stdout)
    assert [r["package"] for r in rows if r["name"] == "example_contrastive"] == [PACKAGE]
    shutil.rmtree(on_path / f"hvkit_example_loss-{VERSION}.dist-info")
    shutil.rmtree(on_path / "hvkit_example_loss")
    registry_module.set_registry(None)
    listing = invoke("list-plugins", "--check")
    assert listing.exit_code == 0, listing.output
    assert "example_contrastive" not in listing.stdout and PACKAGE not in listing.stdout
    assert f"{PACKAGE}==" not in invoke("list-plugins", "--requirements").stdout
    result = invoke("validate", str(RECIPE))
    assert result.exit_code == 2
    assert "stages.train.loss.name: unknown loss 'example_contrastive'" in result.stderr
