"""``hvkit eval``: re-evaluate a finished run, optionally with changed evaluation settings."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from hvkit.cli import user_errors
from hvkit.pipeline import RESOLVED, reevaluate


@click.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--stage", "stages", multiple=True, help="Stage to re-run (default: every evaluate stage).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a value.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@user_errors
def eval_command(run_dir: Path, stages: tuple[str, ...], overrides: tuple[str, ...], device: str | None) -> None:
    """Re-run a finished run's evaluation stages from its saved encoders; rewrites metrics and report."""
    if not stages:
        recipe = yaml.safe_load((run_dir / RESOLVED).read_text()) if (run_dir / RESOLVED).is_file() else {}
        stages = tuple(n for n, spec in recipe.get("stages", {}).items() if spec.get("stage") == "evaluate")
    reevaluate(run_dir, list(stages), list(overrides), device=device)
