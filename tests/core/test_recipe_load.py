"""``--set`` overrides and ``extends`` composition."""

from __future__ import annotations

import pytest

from hvkit.errors import RecipeError
from hvkit.pipeline import prepare
from hvkit.recipe import apply_overrides, load_recipe

from .test_recipe_validation import BASE, registry, write  # noqa: F401  (registry is a fixture)


@pytest.mark.parametrize("text, value", [
    ("a.b=3", 3), ("a.b=0.5", 0.5), ("a.b=1e-3", 0.001), ("a.b=[1, 2]", [1, 2]), ("a.b=null", None),
    ("a.b=true", True), ("a.b=hello", "hello"), ("a.b='3'", "3"), ("a.b=", ""), ("a.b=x=y", "x=y"),
    ("a.b={k: 1}", {"k": 1}),
])
def test_override_values_are_parsed_as_yaml(text, value):
    assert apply_overrides({"a": {"b": "old", "c": 1}}, [text]) == {"a": {"b": value, "c": 1}}


def test_override_creates_missing_mappings_and_leaves_the_input_alone():
    recipe = {"a": {"c": 1}}
    assert apply_overrides(recipe, ["a.x.y=2", "top=1"]) == {"a": {"c": 1, "x": {"y": 2}}, "top": 1}
    assert recipe == {"a": {"c": 1}}


def test_component_given_by_name_becomes_a_mapping():
    recipe = {"stages": {"train": {"stage": "fit", "loss": "triplet"}}}
    out = apply_overrides(recipe, ["stages.train.loss.margin=0.3"])
    assert out["stages"]["train"]["loss"] == {"name": "triplet", "margin": 0.3}
    out = apply_overrides(out, ["stages.train.loss=contrastive"])
    assert out["stages"]["train"]["loss"] == "contrastive"


def test_later_override_wins():
    assert apply_overrides({}, ["a=1", "a=2"]) == {"a": 2}


@pytest.mark.parametrize("text, fragment", [
    ("novalue", "must look like key.path=value"), ("=3", "must look like key.path=value"),
    ("a..b=3", "empty key"), ("a.c.d=1", "a.c is a int, not a mapping"),
])
def test_bad_override(text, fragment):
    with pytest.raises(RecipeError, match=fragment) as info:
        apply_overrides({"a": {"c": 1}}, [text])
    assert str(info.value).startswith("--set: ")


def test_overrides_are_validated_with_their_types(tmp_path, registry):  # noqa: F811
    resolved = prepare(write(tmp_path, BASE), [
        "stages.first.epochs=3", "stages.first.widths=[1, 2]", "stages.first.mode=slow",
        "stages.first.loss.margin=0.5", "stages.first.optimizer.lr=1e-2", "data.root=null", "seed=7",
    ], registry=registry)
    first = resolved["stages"]["first"]
    assert (first["epochs"], first["widths"], first["mode"]) == (3, [1, 2], "slow")
    assert first["loss"] == {"name": "toy_loss", "margin": 0.5, "miner": None}
    assert first["optimizer"] == {"name": "SGD", "lr": 0.01}
    assert resolved["data"]["root"] is None and resolved["seed"] == 7
    with pytest.raises(RecipeError, match="stages.first.epochs: expected int, got 'three'"):
        prepare(write(tmp_path, BASE), ["stages.first.epochs=three"], registry=registry)


def test_extends_deep_merges_with_later_files_winning(tmp_path):
    common = tmp_path / "common"
    common.mkdir()
    write(common, """
        seed: 1
        data: {name: toy_data, writers: 4}
        stages:
          first: {stage: toy_stage, epochs: 1, widths: [8, 4], loss: toy_loss}
        """, "defaults.yaml")
    write(common, """
        extends: defaults.yaml
        data: {writers: 6}
        stages:
          first: {lr: 0.5, widths: [2]}
        """, "base.yaml")
    write(tmp_path, "seed: 2\nstages: {first: {epochs: 5}}\n", "other.yaml")
    child = write(tmp_path, """
        extends: [common/base.yaml, other.yaml]
        stages:
          first: {loss: {margin: 0.9}}
        """)  # the parent names the loss alone: the child's mapping tunes it
    assert load_recipe(child) == {
        "seed": 2,
        "data": {"name": "toy_data", "writers": 6},
        "stages": {"first": {"stage": "toy_stage", "epochs": 5, "widths": [2], "lr": 0.5,
                             "loss": {"name": "toy_loss", "margin": 0.9}}},
    }


def test_a_child_naming_another_component_replaces_the_parents_settings(tmp_path):
    write(tmp_path, "stages: {first: {stage: toy_stage, loss: {name: vicreg, invariance_weight: 25.0}}}\n", "base.yaml")
    child = write(tmp_path, """
        extends: base.yaml
        stages:
          first: {loss: {name: ntxent, temperature: 0.1}}
        """)
    assert load_recipe(child)["stages"]["first"]["loss"] == {"name": "ntxent", "temperature": 0.1}
    same = write(tmp_path, "extends: base.yaml\nstages: {first: {loss: {name: vicreg, gamma: 2.0}}}\n", "same.yaml")
    assert load_recipe(same)["stages"]["first"]["loss"] == {"name": "vicreg", "invariance_weight": 25.0, "gamma": 2.0}


def test_a_file_may_be_extended_twice_without_being_a_cycle(tmp_path):
    write(tmp_path, "seed: 1\nname: base\n", "base.yaml")
    write(tmp_path, "extends: base.yaml\nseed: 2\n", "left.yaml")
    write(tmp_path, "extends: base.yaml\ndescription: right\n", "right.yaml")
    child = write(tmp_path, "extends: [left.yaml, right.yaml]\n")
    assert load_recipe(child) == {"seed": 1, "name": "base", "description": "right"}


def test_extends_must_name_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe.yaml:extends: extends must be a file name"):
        load_recipe(write(tmp_path, "extends: {a: 1}\n"))


def test_recipe_must_be_a_mapping(tmp_path):
    with pytest.raises(RecipeError, match="a recipe must be a mapping, got list"):
        load_recipe(write(tmp_path, "- 1\n- 2\n"))
