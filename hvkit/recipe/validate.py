"""Validating a whole recipe before any work starts, and filling in every default.

Each component's keys are checked against its factory's signature and type hints; an
unknown plugin or parameter names the nearest valid choices; a missing file is reported.
Every problem is a :class:`RecipeError` naming the recipe file and the key path, and validation
goes on past it: one :class:`RecipeErrors` reports all of them. A part with a problem (a key, a
list item, a stage) is left out of what holds it, so a component is only built, and its plugin's
own ``check_recipe`` only run, when all its settings passed. What may follow from a failed stage
is not reported again: a reference to it, a stage ``like`` it, and a plugin's own check that fails
after it (the check reads the earlier stages).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import typing
import inspect
import itertools
import json
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hvkit.api import ComponentKind, ExistingPath, OptimizerName, SchedulerName, StageRef
from hvkit.engine.optim import optimizer_classes, scheduler_classes
from hvkit.errors import HvkitError, RecipeError, RecipeErrors
from hvkit.hookspecs import CONTEXT_ARGS, RECIPE_CONTEXT_ARGS, STAGE_DATA, STAGE_LIKE
from hvkit.recipe.load import deep_merge
from hvkit.recipe.schema import Param, dataclass_type, describe, parameters, plain_type_ok, special_marker
from hvkit.registry import Registry

TRIAL_KINDS = frozenset({"transform", "miner", "evaluator", "loss", "head", "backbone", "sampler", "stage"})
"""Kinds that validation builds once, so that a setting whose *value* their factory refuses fails
before any stage runs. Datasets check values in their ``check_recipe``: building one reads its data."""


def _stand_in_writers() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of 8,192 writers with 1 to 64 images each (266,240 images), each image's group of 16, and its
    document: a writer's images in documents of 8."""
    writers = np.arange(8192)
    counts = 1 + writers % 64
    labels = np.repeat(writers, counts)
    groups = labels % 16
    documents = labels * 8 + (np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)) // 8
    for array in labels, groups, documents:
        array.setflags(write=False)
    return labels, groups, documents


_WRITERS, _GROUPS, _DOCUMENTS = _stand_in_writers()

STAND_INS: dict[str, tuple[Any, ...]] = {
    "embedding_dim": (1, 512), "num_classes": (2, 10_000), "map_channels": (1, 512), "in_dim": (1, 512),
    "in_channels": (1, 3), "labels": (_WRITERS,), "groups": (_GROUPS, None), "documents": (_DOCUMENTS, None),
    "seed": (0,), "rank": (0,), "world_size": (1,)}
"""Run-time context a trial build tries, small and large where size matters: a value counts as refused
only when every combination refuses it, so a bound against the real context (W-MSE's ``w_size`` above
``embedding_dim``, ``num_proxies`` at most ``num_classes``) passes here and is checked when the stage
builds the component. A sampler's ``labels`` are :func:`_stand_in_writers`' large collection, its
``groups`` that collection's 16 groups or none, its ``documents`` documents of 8 images or none: a value
is refused there for itself (``samples_per_class: 0``, a ``batch_size`` that is not a multiple of it), or
when it would need more than 8,192 writers, 64 images of one writer, 16 groups or 512 writers in a group.
A component with any other context argument is not built."""

STAGE_CONTEXT = frozenset({"batch_size"})
"""Context a stage hands the components nested in it from its own setting of the same name: a
sampler is built at validation with its stage's ``batch_size`` (a stage without one leaves it unbuilt)."""

TOP_LEVEL = {"name", "description", "seed", "device", "data", "model", "stages"}
MODEL_KEYS = {"backbone"}


def _nearest(word: str, choices: list[str]) -> str:
    """'; did you mean …?' with the closest choices, a case-insensitive match first ('Adamw' → 'AdamW')."""
    close = [c for c in choices if c.lower() == word.lower()]
    close = (close + [c for c in difflib.get_close_matches(word, choices, n=3, cutoff=0.5) if c not in close])[:3]
    if close:
        return "; did you mean " + ", ".join(repr(c) for c in close) + "?"
    return f"; valid: {', '.join(sorted(choices))}" if choices else ""


def _name_key(kind: str) -> str:
    """The key that names a component's plugin: ``stage`` for a stage, else ``name``."""
    return "stage" if kind == "stage" else "name"


def _json_default(value: Any) -> Any:
    """A default as it will appear in the resolved recipe (YAML/JSON types only)."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


class _Incomplete(Exception):
    """A part whose problems are collected already: the part that holds it is incomplete too."""


class Validator:
    """Validates one recipe against a registry; ``resolve`` returns it with defaults filled."""

    def __init__(self, registry: Registry, file: str | None):
        self.registry = registry
        self.file = file
        self.earlier: dict[str, tuple[Any, dict[str, Any]]] = {}  # each stage resolved so far: (factory, spec)
        self.failed: set[str] = set()  # stages with a problem
        self.problems: list[RecipeError] = []
        self.failures = 0  # parts that failed, each with a problem of its own or inside it
        self._signatures: dict[Any, tuple[dict[str, Param], bool]] = {}

    def note(self, problem: RecipeError) -> None:
        """Records ``problem``; validation goes on."""
        self.failures += 1
        self.problems.append(problem)

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        """Records a problem of the enclosed part and goes on after it."""
        try:
            yield
        except RecipeError as exc:
            self.note(exc)
        except _Incomplete:
            self.failures += 1

    def settle(self, start: int) -> None:
        """Stops the enclosing part when one of its parts failed since ``failures`` was ``start``."""
        if self.failures > start:
            raise _Incomplete

    def signature(self, factory: Any) -> tuple[dict[str, Param], bool]:
        """:func:`parameters` of ``factory``, read once per recipe (type hints are slow to resolve)."""
        if factory not in self._signatures:
            self._signatures[factory] = parameters(factory)
        return self._signatures[factory]

    def factory(self, kind: str, resolved: dict[str, Any]) -> Any:
        """The factory of a resolved component of ``kind``."""
        return self.registry.get(kind, resolved[_name_key(kind)]).factory

    def error(self, path: str, message: str) -> RecipeError:
        return RecipeError(message, self.file, path)

    def resolve(self, recipe: dict[str, Any]) -> dict[str, Any]:
        """The recipe with every default filled in; :class:`RecipeError` for its only problem, else
        :class:`RecipeErrors` for all of them."""
        for key in sorted(set(recipe) - TOP_LEVEL):
            self.note(self.error(key, "unknown top-level key" + _nearest(key, sorted(TOP_LEVEL))))
        out: dict[str, Any] = {"name": recipe.get("name", Path(self.file or "recipe").stem)}
        if "description" in recipe:
            out["description"] = recipe["description"]
        seed = recipe.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            self.note(self.error("seed", f"expected an int, got {seed!r}"))
        out["seed"] = seed
        device = recipe.get("device", "auto")
        if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", str(device)):
            self.note(self.error("device", f"expected auto, cpu, cuda or cuda:N, got {device!r}"))
        out["device"] = device
        if "data" in recipe:
            with self.collect():
                out["data"] = self.component("dataset", recipe["data"], "data")
        else:
            self.note(self.error("data", "missing: every recipe needs a data section ({name: <dataset>, ...})"))
        with self.collect():
            out["model"] = self.model(recipe.get("model", {}))
        with self.collect():
            out["stages"] = self.stages(recipe.get("stages"))
        if len(self.problems) > 1:
            raise RecipeErrors(self.problems)
        if self.problems:
            raise self.problems[0]
        return out

    def model(self, model: Any) -> dict[str, Any]:
        """The ``model:`` section: each shared component resolved."""
        if not isinstance(model, dict):
            raise self.error("model", "expected a mapping with a backbone")
        start, out = self.failures, {}
        for key, spec in model.items():
            with self.collect():
                if key not in MODEL_KEYS:
                    raise self.error(f"model.{key}", "unknown key" + _nearest(key, sorted(MODEL_KEYS)))
                out[key] = self.component("backbone", spec, f"model.{key}")
        self.settle(start)
        return out

    def stages(self, stages: Any) -> dict[str, Any]:
        """The ``stages:`` section: each stage resolved in order, checked against those before it."""
        if not isinstance(stages, dict) or not stages:
            raise self.error("stages", "expected a mapping of stage name → {stage: <plugin>, ...}")
        start, out = self.failures, {}
        written: dict[str, dict[str, Any]] = {}
        for name, spec in stages.items():
            with self.collect():
                out[name] = self.stage(name, spec, written)
            if name not in out:
                self.failed.add(name)
        self.settle(start)
        return out

    def stage(self, name: str, spec: Any, written: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """One stage resolved, its own ``data`` included; recorded in ``earlier`` when it passed."""
        path = f"stages.{name}"
        if isinstance(spec, dict) and STAGE_LIKE in spec:
            spec = self.like(spec, written, path)
        if not isinstance(spec, dict) or "stage" not in spec:
            raise self.error(path, "expected a mapping with a 'stage' key naming a stage plugin")
        written[name] = spec
        start, own_data = self.failures, spec.get(STAGE_DATA)
        with self.collect():
            resolved = self.component("stage", {k: v for k, v in spec.items() if k != STAGE_DATA}, path,
                                      name_key="stage")
        if own_data is not None:
            with self.collect():
                own_data = self.component("dataset", own_data, f"{path}.{STAGE_DATA}")
        self.settle(start)
        factory = self.registry.get("stage", spec["stage"]).factory
        taken = self.signature(factory)[0]
        for key, use in ((STAGE_DATA, "a stage's own dataset (API 1.9)"),
                         (STAGE_LIKE, "the stage a stage starts from (API 1.11)")):
            if key in taken:
                raise self.error(path, f"stage plugin {spec['stage']!r} takes a parameter {key!r}, which hvkit "
                                       f"reserves for {use}; the plugin must rename it")
        if own_data is not None:
            resolved[STAGE_DATA] = own_data
        self.earlier[name] = (factory, resolved)
        return resolved

    def like(self, spec: dict[str, Any], written: dict[str, dict[str, Any]], path: str) -> dict[str, Any]:
        """A stage with ``like: <earlier stage>``: that stage's settings as written (after ``extends``
        and ``--set``, its own ``like`` expanded), with this stage's keys deep-merged on top."""
        base = spec[STAGE_LIKE]
        if isinstance(base, str) and base in self.failed:
            raise _Incomplete
        if not isinstance(base, str) or base not in written:
            earlier = ", ".join(written) or "none"
            raise self.error(f"{path}.{STAGE_LIKE}", f"expected the name of an earlier stage ({earlier}), got {base!r}")
        return deep_merge(written[base], {k: v for k, v in spec.items() if k != STAGE_LIKE})

    def check_component(self, factory: Any, spec: dict[str, Any], path: str) -> None:
        """The plugin's own check of its resolved settings, when its factory has one.

        A factory of any kind may offer ``check_recipe(spec, earlier)`` (stages since API 1.7,
        every kind since 1.8): ``spec`` is its resolved settings, ``earlier`` maps each earlier
        stage's name to ``(factory, resolved spec)``; a check with a parameter ``registry`` (1.11)
        also gets the registry the recipe is validated against, to look up a nested component's
        factory. It raises ``ValueError`` (or a registry's ``HvkitError``), reported at the component,
        or :class:`RecipeError` with ``path`` relative to it (``members.1``), reported there; after
        a failed stage, its failure only stops the component.
        """
        check = getattr(factory, "check_recipe", None)
        if check is None:
            return
        extra = {"registry": self.registry} if "registry" in inspect.signature(check).parameters else {}
        try:
            check(spec, dict(self.earlier), **extra)
        except (ValueError, HvkitError) as exc:
            if self.failed:  # it may follow from a failed stage, whose problem is reported
                raise _Incomplete from exc
            if isinstance(exc, RecipeError):
                raise self.error(f"{path}.{exc.path}" if exc.path else path, exc.reason) from None
            raise self.error(path, str(exc)) from None

    def component(self, kind: str, spec: Any, path: str, name_key: str = "name") -> dict[str, Any]:
        if isinstance(spec, str):
            spec = {name_key: spec}
        if not isinstance(spec, dict) or not isinstance(spec.get(name_key), str):
            raise self.error(path, f"expected a {kind} name or a mapping with '{name_key}: <{kind}>'")
        name = spec[name_key]
        try:
            entry = self.registry.get(kind, name)
        except HvkitError as exc:
            raise self.error(f"{path}.{name_key}", str(exc)) from None
        params, var_kw = self.signature(entry.factory)
        context = CONTEXT_ARGS.get(kind, frozenset())
        given = {k: v for k, v in spec.items() if k != name_key}
        resolved: dict[str, Any] = {name_key: name}
        start = self.failures
        for key, value in given.items():
            with self.collect():
                resolved[key] = self.setting(kind, name, key, value, params, var_kw, f"{path}.{key}")
        for p in params.values():
            if p.name in given or p.name in context:
                continue
            with self.collect():
                if p.required:
                    raise self.error(f"{path}.{p.name}", f"missing required parameter of {kind} {name!r} "
                                                         f"(expected {describe(p.hint)})")
                resolved[p.name] = self._default(p.default, p.hint, f"{path}.{p.name}")
        self.settle(start)
        self.check_component(entry.factory, resolved, path)
        self.trial_build(kind, resolved, path)
        return resolved

    def setting(self, kind: str, name: str, key: str, value: Any, params: dict[str, Param], var_kw: bool,
                path: str) -> Any:
        """One given setting of a component, checked against its factory's parameter of that name."""
        context = CONTEXT_ARGS.get(kind, frozenset())
        if key in context and key not in RECIPE_CONTEXT_ARGS.get(kind, ()):
            raise self.error(path, f"{key!r} is provided by hvkit at run time; remove it")
        if key in params:
            return self.value(value, params[key].hint, path, params[key].default)
        if var_kw:
            return value
        valid = [p for p in params if p not in context]
        raise self.error(path, f"unknown parameter for {kind} {name!r}" + _nearest(key, valid))

    def each(self, items: list[Any], check: Callable[[Any, str], Any], path: str) -> list[Any]:
        """``check(item, path.i)`` of each item, every item's problem collected."""
        start, out = self.failures, []
        for i, item in enumerate(items):
            with self.collect():
                out.append(check(item, f"{path}.{i}"))
        self.settle(start)
        return out

    def trial_build(self, kind: str, resolved: dict[str, Any], path: str, given: dict[str, Any] | None = None
                    ) -> None:
        """Builds a component of a :data:`TRIAL_KINDS` kind; its factory's ValueError is this path's error.

        Its run-time context is ``given``, else comes from :data:`STAND_INS`, every combination tried
        until one builds. A stage is then built, and each component nested in it that takes some of
        :data:`STAGE_CONTEXT` is built with the stage's own values of it."""
        given = given or {}
        needed = self.context_needed(kind, resolved, set(given)) if kind in TRIAL_KINDS else None
        if needed is None:
            return
        from hvkit.engine.context import build  # here: hvkit.engine.context imports hvkit.recipe
        names = sorted(needed)
        first: ValueError | None = None
        for values in itertools.product(*(STAND_INS[n] for n in names)):
            try:
                with warnings.catch_warnings():  # a stand-in's (a sampler skipping writers) are not the recipe's
                    warnings.simplefilter("ignore")
                    build(self.registry, kind, resolved, _name_key(kind), **given, **dict(zip(names, values)))
                break
            except ValueError as exc:
                first = first or exc
        else:
            raise self.error(path, str(first)) from None
        if kind == "stage":
            self.trial_build_nested(resolved, path)

    def trial_build_nested(self, stage: dict[str, Any], path: str) -> None:
        """Builds each component of ``stage`` that takes context the stage sets (:data:`STAGE_CONTEXT`)."""
        own = {k: stage[k] for k in STAGE_CONTEXT if isinstance(stage.get(k), int)}
        for key, kind, spec in self.nested("stage", stage):
            wanted = self.context_taken(kind, spec) & STAGE_CONTEXT
            if wanted and wanted <= own.keys():
                self.trial_build(kind, spec, f"{path}.{key}", {k: own[k] for k in wanted})

    def nested(self, kind: str, resolved: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Each component set in a resolved component: (its key, ``key.i`` in a list; its kind; its spec)."""
        for key, param in self.signature(self.factory(kind, resolved))[0].items():
            marker, value = special_marker(param.hint), resolved.get(key)
            if isinstance(marker, ComponentKind) and value is not None:
                for i, spec in enumerate(value if isinstance(value, list) else [value]):
                    yield f"{key}.{i}" if isinstance(value, list) else key, marker.kind, spec

    def context_taken(self, kind: str, resolved: dict[str, Any]) -> set[str]:
        """The run-time context arguments ``build`` passes a resolved component's factory: those it names,
        or every one of its kind when it takes ``**kwargs``."""
        params, var_kw = self.signature(self.factory(kind, resolved))
        context = set(CONTEXT_ARGS.get(kind, frozenset()))
        return context if var_kw else context & set(params)

    def context_needed(self, kind: str, resolved: dict[str, Any], given: set[str] = frozenset()
                       ) -> set[str] | None:
        """The run-time context arguments a resolved component and those built inside it take, beyond
        ``given``; None when one of them has no stand-in. A stage's components are not built inside it."""
        needed = self.context_taken(kind, resolved) - given
        if not needed <= set(STAND_INS):
            return None
        if kind == "stage":
            return needed
        for _, inner_kind, spec in self.nested(kind, resolved):
            inner = self.context_needed(inner_kind, spec, given)
            if inner is None:
                return None
            needed |= inner
        return needed

    def _default(self, default: Any, hint: Any, path: str) -> Any:
        marker = special_marker(hint)
        if isinstance(marker, ComponentKind) and default is not None:
            if isinstance(default, list):
                return [self.component(marker.kind, d, f"{path}.{i}") for i, d in enumerate(default)]
            return self.component(marker.kind, default, path)
        if dataclasses.is_dataclass(default):
            return self.section(type(default), dataclasses.asdict(default), path)
        return _json_default(copy.deepcopy(default))

    def value(self, value: Any, hint: Any, path: str, default: Any = None) -> Any:
        marker = special_marker(hint)
        base = {"name": default} if isinstance(default, str) else default
        if isinstance(value, dict) and "name" not in value and isinstance(base, dict) and "name" in base:
            value = deep_merge(base, value)  # {margin: 0.5} (e.g. from --set) tunes the default component
        if marker is not None and value is not None:
            if isinstance(marker, ComponentKind):
                if isinstance(value, list):
                    return self.each(value, lambda v, where: self.component(marker.kind, v, where), path)
                return self.component(marker.kind, value, path)
            if isinstance(marker, StageRef):
                if isinstance(value, list):
                    return self.each(value, self.stage_ref, path)
                return self.stage_ref(value, path)
            if isinstance(marker, ExistingPath):
                if not isinstance(value, str) or not Path(value).expanduser().exists():
                    raise self.error(path, f"file or folder not found: {value!r}")
                return value
            if isinstance(marker, OptimizerName):
                return self.torch_spec(value, path, optimizer_classes(), "optimiser", skip={"params"})
            if isinstance(marker, SchedulerName):
                return self.torch_spec(value, path, scheduler_classes(), "LR scheduler", skip={"optimizer"},
                                       extra={"warmup_steps"})
        config = dataclass_type(hint)
        if config is not None and isinstance(value, dict):
            return self.section(config, value, path, default)
        if not plain_type_ok(value, hint):
            raise self.error(path, f"expected {describe(hint)}, got {value!r}")
        return value

    def stage_ref(self, name: Any, path: str) -> str:
        """The name of an earlier stage; a failed one stops the part that names it, unreported again."""
        if isinstance(name, str) and name in self.failed:
            raise _Incomplete
        if not isinstance(name, str) or name not in self.earlier:
            raise self.error(path, f"{name!r} is not an earlier stage" + _nearest(str(name), list(self.earlier)))
        return name

    def section(self, config: type, value: dict[str, Any], path: str, default: Any = None) -> dict[str, Any]:
        """A mapping checked against a dataclass's fields (e.g. a stage's ``train:`` options).

        Keys not given come from ``default`` (the factory's own instance) when there is one,
        else from the dataclass's field defaults. The dataclass is then built from the result,
        so a range its ``__post_init__`` checks (``ValueError``) is reported here, before any work.
        """
        hints = typing.get_type_hints(config, include_extras=True)
        if isinstance(default, config):
            defaults = dataclasses.asdict(default)
        else:
            defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                        for f in dataclasses.fields(config)}
        out: dict[str, Any] = {}
        start = self.failures
        for key, item in value.items():
            with self.collect():
                if key not in defaults:
                    raise self.error(f"{path}.{key}", f"unknown {config.__name__} option"
                                     + _nearest(key, list(defaults)))
                out[key] = self.value(item, hints[key], f"{path}.{key}", defaults[key])
        for name, default in defaults.items():
            if name not in value:
                out[name] = self.value(default, hints[name], f"{path}.{name}") if default is not None else None
        self.settle(start)
        try:
            config(**out)
        except ValueError as exc:
            raise self.error(path, str(exc)) from None
        return out

    def torch_spec(self, value: Any, path: str, choices: dict[str, type], kind: str, skip: set[str],
                   extra: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict) or "name" not in value:
            raise self.error(path, "expected {name: <class>, ...arguments}")
        cls = choices.get(str(value["name"]))
        if cls is None:
            raise self.error(f"{path}.name", f"unknown {kind} {value['name']!r}" + _nearest(str(value["name"]), list(choices)))
        signature = inspect.signature(cls)
        accepted = [p for p in signature.parameters if p not in skip] + sorted(extra)
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # a class whose hints cannot be resolved is checked by name only
            hints = {}
        hints.update({key: int for key in extra})
        for key, arg in value.items():
            if key == "name":
                continue
            if key not in accepted:
                raise self.error(f"{path}.{key}", f"unknown argument of {value['name']}" + _nearest(key, accepted))
            if not plain_type_ok(arg, hints.get(key, Any)):
                raise self.error(f"{path}.{key}", f"expected {describe(hints[key])}, got {arg!r}")
        return dict(value)


def validate(recipe: dict[str, Any], registry: Registry, file: str | None = None) -> dict[str, Any]:
    """The recipe with every default filled in; :class:`RecipeError` for its only problem,
    :class:`RecipeErrors` for several."""
    return Validator(registry, file).resolve(recipe)
