"""A factory's signature and type hints as a recipe schema, and type checks against it."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Union

from torch import nn

from hvkit.api import ComponentKind, ExistingPath, OptimizerName, SchedulerName, StageRef


@dataclass(frozen=True)
class Param:
    name: str
    hint: Any
    default: Any
    required: bool


def parameters(factory: Callable) -> tuple[dict[str, Param], bool]:
    """The factory's named parameters (with resolved type hints) and whether it takes ``**kwargs``.

    A class that inherits ``object.__init__`` or ``nn.Module.__init__`` takes no parameters
    (their ``*args, **kwargs`` accept nothing).
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    if target in (object.__init__, nn.Module.__init__):
        return {}, False
    signature = inspect.signature(factory)
    hints = typing.get_type_hints(target, include_extras=True)
    params: dict[str, Param] = {}
    var_kw = False
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        params[p.name] = Param(p.name, hints.get(p.name, Any),
                               None if p.default is p.empty else p.default, p.default is p.empty)
    return params, var_kw


def markers(hint: Any) -> tuple[Any, list[Any]]:
    """(base type, Annotated metadata) of a hint."""
    if typing.get_origin(hint) is typing.Annotated:
        base, *meta = typing.get_args(hint)
        return base, list(meta)
    return hint, []


def describe(hint: Any) -> str:
    base, meta = markers(hint)
    for m in meta:
        if isinstance(m, ComponentKind):
            return f"a {m.kind} (name or {{name: ..., ...}})"
    if base is Any:
        return "any value"
    origin = typing.get_origin(base)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(base))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(base))
    if base is type(None):
        return "null"
    if origin is not None:
        return str(base).replace("typing.", "")
    return getattr(base, "__name__", str(base))


def special_marker(hint: Any) -> Any:
    """The first hvkit marker (component kind, stage ref, path, optimiser …) inside a hint.

    Looks through unions and lists: ``list[Component["head"]]`` is a list of heads.
    """
    base, meta = markers(hint)
    for m in meta:
        if isinstance(m, (ComponentKind, StageRef, ExistingPath, OptimizerName, SchedulerName)):
            return m
    if typing.get_origin(base) in (Union, types.UnionType, list):
        for arg in typing.get_args(base):
            found = special_marker(arg)
            if found is not None:
                return found
    return None


def component_defaults(params: dict[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """The default spec of each component parameter ``given`` lacks, to be built as a given one is.

    The recipe validator resolves these defaults into the spec; a builder handed a spec without
    them (a direct call, the conformance kit) fills them in here.
    """
    return {key: p.default for key, p in params.items()
            if key not in given and p.default is not None and isinstance(special_marker(p.hint), ComponentKind)}


def plain_type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` (parsed YAML) fits ``hint`` (hvkit markers are checked elsewhere)."""
    base, _ = markers(hint)
    if base is Any or base is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(base)
    args = typing.get_args(base)
    if origin in (Union, types.UnionType):
        return any(plain_type_ok(value, a) for a in args)
    if origin is Literal:
        return value in args
    if base is type(None):
        return value is None
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is str:
        return isinstance(value, str)
    if base is Path or (inspect.isclass(base) and issubclass(base, Path)):
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence, __import__("collections.abc").abc.Sequence) or base in (list, tuple):
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(plain_type_ok(v, a) for v, a in zip(value, args))
        return not args or all(plain_type_ok(v, args[0]) for v in value)
    if origin is dict or base is dict:
        if not isinstance(value, dict):
            return False
        return not args or all(plain_type_ok(v, args[1]) for v in value.values())
    if inspect.isclass(base):
        return isinstance(value, base)
    return True


def dataclass_type(hint: Any) -> type | None:
    """The dataclass a hint names (``X`` or ``X | None``), if any: a nested options section."""
    base, _ = markers(hint)
    if typing.get_origin(base) in (Union, types.UnionType):
        found = [a for a in typing.get_args(base) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return base if inspect.isclass(base) and dataclasses.is_dataclass(base) else None
