"""The ``hvkit`` command line: run, validate, list-plugins, and plugin-provided commands.

User errors (:class:`HvkitError`) print one line a problem and exit with code 2 (an interrupted
run: 128 + the signal's number), no traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

import hvkit
from hvkit.errors import HvkitError, every, problems


def report(error: HvkitError) -> None:
    """``error: …`` on stderr for each problem ``error`` reports."""
    for problem in problems(error):
        click.echo(f"error: {problem}", err=True)


def _first_to_report(error: HvkitError) -> bool:
    """Whether this process prints ``error``: always in a single process (no torch import for it)."""
    if "WORLD_SIZE" not in os.environ:
        return True
    from hvkit import distributed
    return distributed.first_to_report(str(error))


def user_errors(func: Callable) -> Callable:
    """Turn an HvkitError into ``error: …`` lines on stderr and its exit code (2 unless it says); under
    several processes the error is printed once, by the first rank to meet it."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HvkitError as exc:
            if _first_to_report(exc):
                report(exc)
            sys.exit(getattr(exc, "exit_code", 2))

    return wrapper


class HvkitGroup(click.Group):
    """Built-in commands plus those plugins register; plugins load only when needed."""

    def _plugin_commands(self) -> dict[str, click.Command]:
        from hvkit.registry import get_registry
        commands = {}
        for command, _source in get_registry().commands:
            if isinstance(command, click.Command) and command.name not in self.commands:
                commands[command.name] = command
        return commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self._plugin_commands()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        command = self._plugin_commands().get(name)
        if command is None:
            from hvkit.registry import get_registry
            for p in get_registry().problems:
                if (p.kind, p.name) == ("command", name):
                    ctx.fail(f"command {name!r} from {p.package} {p.version} is broken: {p.message}")
        return command


@click.group(cls=HvkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(hvkit.__version__, prog_name="hvkit")
def main() -> None:
    """hvkit: deep metric learning for handwriting verification, driven by YAML recipes."""


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe value (parsed as YAML); repeatable.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the run (default runs/<name>-<time>).")
@click.option("--resume", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Continue an interrupted run directory to the same result.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Override the recipe's device.")
@click.option("--nproc", type=click.IntRange(min=1), default=1,
              help="Processes on this machine (wraps torchrun; one per GPU).")
@user_errors
def run(recipe: Path | None, overrides: tuple[str, ...], run_dir: Path | None, resume: Path | None,
        device: str | None, nproc: int) -> None:
    """Run a recipe: pre-train, train, evaluate; results land in a run directory."""
    from hvkit.launch import launch, quiet_after_peers, run_args
    from hvkit.pipeline import prepare, run as run_pipeline
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        if resume is None and recipe is not None:
            prepare(recipe, overrides)  # a broken recipe is reported once, before any process starts
        launch(nproc, run_args(recipe, overrides, run_dir, resume, device), resume or run_dir)
        return
    with quiet_after_peers():
        run_pipeline(recipe, overrides, run_dir=run_dir, resume=resume, device=device)


@main.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a value.")
@click.option("--show", is_flag=True, help="Print the resolved recipe (all defaults filled in).")
@click.option("--data", "read_data", is_flag=True,
              help="Also read every dataset the recipe's stages use, as the run would (slow for a large one).")
def validate(recipes: tuple[Path, ...], overrides: tuple[str, ...], show: bool, read_data: bool) -> None:
    """Check recipes completely without running anything."""
    import yaml

    from hvkit.pipeline import prepare, read_dataset, stage_datasets
    from hvkit.registry import get_registry
    failed = 0
    for path in recipes:
        try:
            resolved = prepare(path, overrides)
            every(stage_datasets(resolved, resolved["stages"]) if read_data else (),
                  lambda found: read_dataset(get_registry(), found[0], resolved["seed"], f"{path}:{found[1]}"))
        except HvkitError as exc:
            report(exc)
            failed += 1
            continue
        click.echo(f"ok: {path}")
        if show:
            click.echo(yaml.safe_dump(resolved, sort_keys=False))
    if failed:
        sys.exit(2)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object a run.")
@user_errors
def status(run_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Where runs stand: running or stopped, each stage complete, at a checkpoint, under way or not started;
    then the results or how to continue. A folder of runs (runs/, a sweep's) gives each run in it; a path
    that is neither is an error line after the others."""
    from hvkit.status import run_state, run_status, runs_in
    shown: list[Any] = []
    try:
        every([run for path in run_dirs for run in runs_in(path)],
              lambda run_dir: shown.append(run_state(run_dir) if as_json else run_status(run_dir)))
    finally:
        click.echo(json.dumps(shown, indent=2) if as_json else "\n\n".join(shown))


@main.command("list-plugins")
@click.option("--kind", help="Only this kind (backbone, loss, sampler …).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--check", is_flag=True, help="Exit non-zero when any plugin is broken.")
@click.option("--requirements", is_flag=True, help="Print installed plugin packages as name==version.")
def list_plugins(kind: str | None, as_json: bool, check: bool, requirements: bool) -> None:
    """List every component by kind, with its package, version and summary."""
    from hvkit.api import KINDS
    from hvkit.registry import get_registry
    registry = get_registry()
    if kind is not None and kind not in KINDS:
        click.echo(f"error: unknown kind {kind!r}; kinds: {', '.join(KINDS)}", err=True)
        sys.exit(2)
    if requirements:
        for package, version in sorted({(s.package, s.version) for s in registry.sources}):
            click.echo(f"{package}=={version}")
        return
    entries = [e for e in registry.all_entries() if kind is None or e.kind == kind]
    commands = [(c, s) for c, s in registry.commands if kind in (None, "command")]
    problems = [p for p in registry.problems if kind is None or p.kind in (None, kind)]
    if as_json:
        rows = [{"kind": e.kind, "name": e.name, "package": e.package, "version": e.version,
                 "summary": e.summary, "status": "ok"} for e in entries]
        rows += [{"kind": "command", "name": c.name, "package": s.package, "version": s.version,
                  "summary": (c.get_short_help_str(200) if isinstance(c, click.Command) else ""),
                  "status": "ok"} for c, s in commands]
        rows += [{"kind": p.kind, "name": p.name, "package": p.package, "version": p.version,
                  "plugin": p.plugin, "summary": p.message, "status": "broken"} for p in problems]
        click.echo(json.dumps(rows, indent=2))
    else:
        current = None
        for e in entries:
            if e.kind != current:
                current = e.kind
                click.echo(f"\n{current}:")
            click.echo(f"  {e.name:<22} {e.package} {e.version:<8} {e.summary}")
        if commands:
            click.echo("\ncommand:")
            for c, s in commands:
                click.echo(f"  {c.name:<22} {s.package} {s.version:<8} "
                           f"{c.get_short_help_str(80) if isinstance(c, click.Command) else ''}")
        if problems:
            click.echo("\nbroken:")
            for p in problems:
                what = f"{p.kind} {p.name!r}" if p.name else p.plugin
                click.echo(f"  {what} from {p.package} {p.version}: {p.message}")
    if check and problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
