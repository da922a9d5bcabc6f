"""Every recipe in recipes/ validates and runs end to end at a tiny size on the synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvkit.pipeline import prepare, run
from hvkit.registry import set_registry

ROOT = Path(__file__).parents[2] / "recipes"
RECIPES = sorted(ROOT.rglob("*.yaml"))


@pytest.fixture(autouse=True)
def first_party_registry(monkeypatch):
    monkeypatch.delenv("HVKIT_PLUGINS", raising=False)
    set_registry(None)
    yield
    set_registry(None)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One synthetic-data cache for all recipes of the run (generated once)."""
    return tmp_path_factory.mktemp("cache")


def tiny_overrides(recipe: Path) -> list[str]:
    """Overrides that shrink any recipe to seconds: few synthetic writers, two steps a stage, no plots but the
    flagship's."""
    resolved = prepare(recipe)
    sets = []
    if resolved["data"]["name"] == "cedar_and":
        sets += ["data.synthetic_writers=40", "data.synthetic_samples_per_writer=6"]
    if resolved["model"].get("backbone", {}).get("name") == "resnet18":
        sets.append("model.backbone=small_cnn")
    for name, spec in resolved["stages"].items():
        if (spec.get("backbone") or {}).get("name") == "resnet18":
            sets.append(f"stages.{name}.backbone=small_cnn")
        if "train" in spec:
            sets += [f"stages.{name}.train.max_steps=2", f"stages.{name}.train.epochs=1"]
        if "batch_size" in spec:
            sets.append(f"stages.{name}.batch_size=16")
        if "label_fraction" in spec:
            sets.append(f"stages.{name}.label_fraction=0.5")
        if "pair_training" in spec:
            sets.append(f"stages.{name}.pair_training.epochs=2")
        if spec.get("stage") in ("evaluate", "score_fusion") and recipe.name != "vicreg_cedar.yaml":
            sets.append(f"stages.{name}.plots=false")  # half a tiny evaluation's time; the flagship draws its own
    return sets


def test_recipes_exist():
    names = {str(r.relative_to(ROOT)) for r in RECIPES}
    assert {"vicreg_cedar.yaml", "vae_cedar.yaml", "losses/multi_similarity.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(r.relative_to(ROOT).with_suffix("")) for r in RECIPES])
def test_recipe_runs_tiny(recipe: Path, tmp_path: Path, shared_cache: Path, monkeypatch):
    monkeypatch.setenv("HVKIT_CACHE", str(shared_cache))
    run_dir = run(recipe, tiny_overrides(recipe), run_dir=tmp_path / "run", device="cpu", console=lambda _: None)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["synthetic"] is True
    resolved = prepare(recipe)
    for name in resolved["stages"]:
        assert (run_dir / "stages" / name / "outputs.json").is_file(), name
    evaluated = [m for m in metrics.values() if isinstance(m, dict) and "verification" in m]
    for stage_metrics in evaluated:
        for verifier, values in stage_metrics["verification"].items():
            assert 0.0 <= values["roc_auc"] <= 1.0, verifier
    assert (run_dir / "report.md").read_text().startswith("# ")
