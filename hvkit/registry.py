"""The plugin registry: pluggy over the ``hvkit`` entry-point group.

Each entry point is loaded on its own and guarded: one that fails to import, needs
another API version, misspells a hook, registers a non-callable or a name another
package already holds is recorded as a :class:`Problem` and breaks nothing else. Only
a recipe that uses the broken name fails. ``HVKIT_PLUGINS`` (comma-separated entry-point
or distribution names) limits which entry points load.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import os
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import pluggy

from hvkit import hookspecs
from hvkit.api import API_VERSION
from hvkit.errors import HvkitError

ENTRY_POINT_GROUP = "hvkit"
ALLOW_ENV = "HVKIT_PLUGINS"


@dataclass(frozen=True)
class Entry:
    """One registered component: what a recipe refers to by ``kind`` and ``name``."""

    kind: str
    name: str
    factory: Callable
    package: str
    version: str
    plugin: str

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass(frozen=True)
class Problem:
    """A plugin (or one of its names) that could not be used, and why."""

    plugin: str
    package: str
    version: str
    message: str
    kind: str | None = None
    name: str | None = None


@dataclass
class Source:
    """Where a plugin object came from."""

    plugin: str
    package: str
    version: str


@dataclass
class Registry:
    """Components by kind and name, plus the problems found while loading plugins."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    commands: list[tuple[Any, Source]] = field(default_factory=list)
    _clashes: dict[tuple[str, str], list[Entry]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)

    def add_plugin(self, plugin: ModuleType | object, *, name: str, package: str,
                   version: str = "") -> bool:
        """Register one plugin object and collect what it provides; False if it is broken."""
        source = Source(name, package, version)
        wanted = getattr(plugin, "HVKIT_API_VERSION", None)
        if wanted is not None and wanted != API_VERSION[0]:
            self._problem(source, f"needs hvkit plugin API {wanted}, this hvkit provides "
                                  f"{API_VERSION[0]}.{API_VERSION[1]}; upgrade one of the two")
            return False
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validation: wrong hook arguments, duplicates …
            self._problem(source, _one_line(exc))
            return False
        unknown = [h for h in _hook_names(plugin)
                   if getattr(getattr(self.pm.hook, h, None), "spec", None) is None]
        if unknown:
            self.pm.unregister(plugin)
            hint = difflib.get_close_matches(unknown[0], hookspecs.KIND_HOOKS.values(), n=1)
            self._problem(source, f"unknown hook {unknown[0]!r}"
                                  + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            return False
        self.sources.append(source)
        for kind, hook_name in hookspecs.KIND_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    self._collect(kind, impl.function, source)
        return True

    def _collect(self, kind: str, hook: Callable, source: Source) -> None:
        if kind == "command":
            def register(command: Any) -> None:
                self._add_command(command, source)
        else:
            def register(name: str, factory: Callable) -> None:
                self._add(kind, name, factory, source)
        try:
            hook(register=register)
        except Exception as exc:
            self._problem(source, f"{hookspecs.KIND_HOOKS[kind]} raised {_one_line(exc)}", kind)

    def _add_command(self, command: Any, source: Source) -> None:
        import click
        if not isinstance(command, click.Command) or not command.name:
            self._problem(source, f"registered {type(command).__name__} as a command; register a "
                                  "click.Command", "command")
            return
        name = command.name
        holders = [s for c, s in self.commands if c.name == name]
        if not holders and not any((p.kind, p.name) == ("command", name) for p in self.problems):
            self.commands.append((command, source))
            return
        self.commands = [(c, s) for c, s in self.commands if c.name != name]
        packages = " and ".join(f"{s.package} ({s.plugin})" for s in (*holders, source))
        self._problem(source, f"command {name!r} is registered by {'both ' if holders else ''}"
                              f"{packages}{'' if holders else ' and another package'}; uninstall "
                              "one or rename it", "command", name)

    def _add(self, kind: str, name: str, factory: Callable, source: Source) -> None:
        if not isinstance(name, str) or not name:
            self._problem(source, f"registered a {kind} with an invalid name {name!r}", kind)
            return
        if not callable(factory):
            self._problem(source, f"registered as {type(factory).__name__}, which is not callable; "
                                  "register a class or function", kind, name)
            return
        from hvkit.recipe.schema import parameters
        try:
            parameters(factory)
        except Exception as exc:  # no signature (C builtin), a type hint that does not resolve …
            self._problem(source, f"the parameters of its factory cannot be read ({_one_line(exc)}); "
                                  "register a Python function or class whose type hints all "
                                  "resolve at import time", kind, name)
            return
        entry = Entry(kind, name, factory, source.package, source.version, source.plugin)
        by_name = self.entries.setdefault(kind, {})
        clash = self._clashes.get((kind, name))
        if clash is not None:
            clash.append(entry)
        elif name in by_name:
            self._clashes[(kind, name)] = [by_name.pop(name), entry]
        else:
            by_name[name] = entry
            return
        packages = " and ".join(f"{e.package} ({e.plugin})" for e in self._clashes[(kind, name)])
        self.problems = [p for p in self.problems if (p.kind, p.name) != (kind, name)]
        self.problems.append(Problem(source.plugin, source.package, source.version,
                                     f"{kind} {name!r} is registered by both {packages}; "
                                     "uninstall one or rename it", kind, name))

    def _problem(self, source: Source, message: str, kind: str | None = None,
                 name: str | None = None) -> None:
        self.problems.append(Problem(source.plugin, source.package, source.version, message,
                                     kind, name))

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; a clear :class:`HvkitError` if it is unknown or broken."""
        entry = self.entries.get(kind, {}).get(name)
        if entry is not None:
            return entry
        for problem in self.problems:
            if problem.name == name and problem.kind == kind:
                if (kind, name) in self._clashes:
                    raise HvkitError(problem.message)
                raise HvkitError(f"{kind} {name!r} from {problem.package} {problem.version}: "
                                 f"{problem.message}")
        raise HvkitError(self.unknown_message(kind, name))

    def unknown_message(self, kind: str, name: str) -> str:
        known = sorted(self.entries.get(kind, {}))
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        message = f"unknown {kind} {name!r}"
        if close:
            message += f"; did you mean {', '.join(repr(c) for c in close)}?"
        elif known:
            message += f"; known: {', '.join(known)}"
        broken = [p for p in self.problems if p.name is None and p.kind in (None, kind)]
        if broken:
            shown = "; ".join(f"{p.package} {p.version} ({p.plugin}): {p.message}" for p in broken[:3])
            more = f"; and {len(broken) - 3} more" if len(broken) > 3 else ""
            message += (f" ({len(broken)} plugin(s) that might provide it failed to load: "
                        f"{shown}{more}; see `hvkit list-plugins --check`)")
        return message

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries.get(kind, {}))

    def all_entries(self) -> list[Entry]:
        return [e for kind in sorted(self.entries) for _, e in sorted(self.entries[kind].items())]


def _hook_names(plugin: object) -> list[str]:
    names = []
    for attr in dir(plugin):
        value = getattr(plugin, attr, None)
        if callable(value) and hasattr(value, ENTRY_POINT_GROUP + "_impl"):
            names.append(attr)
    return names


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text if len(text) < 400 else text[:397] + "..."


def _allowed(ep: md.EntryPoint, allow: set[str] | None) -> bool:
    if allow is None:
        return True
    dist = ep.dist.name if ep.dist is not None else ""
    return ep.name in allow or dist in allow or f"{dist}:{ep.name}" in allow


def load_entry_points(registry: Registry, allow: set[str] | None = None) -> Registry:
    """Load every ``hvkit`` entry point into ``registry``, each guarded on its own."""
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name)):
        if not _allowed(ep, allow):
            continue
        package = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else ""
        try:
            plugin = ep.load()
        except BaseException as exc:  # a plugin's import may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            at = f" at {where.filename}:{where.lineno}" if where else ""
            registry.problems.append(Problem(ep.name, package, version,
                                             f"import of {ep.value} failed: {_one_line(exc)}{at}"))
            continue
        registry.add_plugin(plugin, name=f"{package}:{ep.name}", package=package, version=version)
    return registry


def allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


_REGISTRY: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded lazily on first use."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = load_entry_points(Registry(), allow_list())
    return _REGISTRY


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests; embedding hvkit in another program)."""
    global _REGISTRY
    _REGISTRY = registry
