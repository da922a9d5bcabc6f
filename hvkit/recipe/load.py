"""Reading recipes: safe YAML, ``extends:`` composition and ``--set`` overrides.

A recipe is a mapping; ``extends: base.yaml`` (or a list of files, relative to the
recipe) is deep-merged underneath it, later files winning. ``--set a.b.c=value``
parses ``value`` as YAML (so ``3`` is an int, ``[1, 2]`` a list, ``null`` None).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Hashable

import yaml

from hvkit.errors import RecipeError


class SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` and ``1.5e3`` as floats as YAML 1.2 does (not strings),
    and refusing a key given twice in one mapping (PyYAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor``: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


SafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SafeLoader)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` through the safe loader; RecipeError otherwise."""
    if not path.is_file():
        raise RecipeError("recipe file not found", str(path))
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{where}invalid YAML ({problem})", str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a mapping, got {type(data).__name__}", str(path))
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; mappings merge key by key, anything else replaces.

    A component named alone (``loss: triplet``) under a mapping without a name
    (``loss: {margin: 0.3}``) counts as ``{name: triplet}``; a mapping naming another component
    (``loss: {name: ntxent}`` over ``loss: {name: vicreg, …}``) replaces it, settings and all.
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and "name" not in value and isinstance(out.get(key), str):
            out[key] = {"name": out[key]}
        if isinstance(value, dict) and isinstance(out.get(key), dict) and _same_component(out[key], value):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _same_component(base: dict[str, Any], over: dict[str, Any]) -> bool:
    """Whether two mappings may describe one component: they do not name two different plugins."""
    return "name" not in base or "name" not in over or base["name"] == over["name"]


def load_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe at ``path`` with everything it ``extends`` merged in."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise RecipeError(f"extends forms a cycle ({chain})", str(_seen[0]), "extends")
    data = read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError("extends must be a file name or a list of file names", str(path), "extends")
    merged: dict[str, Any] = {}
    for parent in parents:
        parent_path = (path.parent / parent).resolve()
        if not parent_path.is_file():
            raise RecipeError(f"extended recipe {parent!r} not found (looked at {parent_path})",
                              str(path), "extends")
        merged = deep_merge(merged, load_recipe(parent_path, (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'a.b=3'`` → (['a', 'b'], 3)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r} must look like key.path=value", None, "--set")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise RecipeError(f"override {text!r} has an empty key in its path", None, "--set")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``recipe`` with each ``key.path=value`` set; missing mappings are created.

    A component given by name alone (``loss: triplet``) becomes ``{name: triplet}`` when an
    override sets one of its parameters.
    """
    out = copy.deepcopy(recipe)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, str):
                child = {"name": child}
                node[part] = child
            elif child is None:
                child = {}
                node[part] = child
            elif not isinstance(child, dict):
                raise RecipeError(f"cannot set {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is a "
                                  f"{type(child).__name__}, not a mapping", None, "--set")
            node = child
        node[parts[-1]] = value
    return out
