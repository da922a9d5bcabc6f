"""``hvkit curves``: the training curves of runs' stages from their ``log.jsonl``, summarised and drawn."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import yaml

from hvkit.cli import user_errors
from hvkit.engine.trainer import duration, read_log
from hvkit.errors import HvkitError
from hvkit.evaluation.plots import new_figure
from hvkit.pipeline import RESOLVED
from hvkit.status import runs_in

BOOKKEEPING = ("step", "total_steps", "epoch", "time", "steps_per_s")
"""Keys of every log line that are not curves (the loss, the learning rate and a loss's parts are)."""

COLLAPSED = 0.1
"""``output_std`` below this (1 for outputs spread over the sphere, 0 for one direction) reads as collapse."""


@dataclass(frozen=True)
class Curves:
    """One stage's log: its ``stage``, the ``run`` folder's name, whether it sits among several runs, and its rows."""

    stage: str
    run: str
    among_runs: bool
    rows: list[dict[str, float]]

    @property
    def label(self) -> str:
        """``STAGE``, or ``RUN/STAGE`` among several runs."""
        return f"{self.run}/{self.stage}" if self.among_runs else self.stage

    def keys(self) -> list[str]:
        """The curves it holds, ``loss`` and ``lr`` first, then the rest as first logged."""
        found = dict.fromkeys(k for row in self.rows for k in row if k not in BOOKKEEPING)
        return [k for k in ("loss", "lr") if k in found] + [k for k in found if k not in ("loss", "lr")]

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the rows that logged ``key``."""
        rows = [row for row in self.rows if key in row]
        return np.array([row["step"] for row in rows], dtype=float), np.array([row[key] for row in rows], dtype=float)

    def summary(self) -> str:
        """Steps, wall time, steps per second, the loss from first to last (and its lowest), the last parts,
        each monitored figure's highest."""
        first, last = self.rows[0], self.rows[-1]
        steps, losses = self.series("loss")
        low = int(np.argmin(losses))
        parts = [f"{k} {last[k]:.4g}" for k in self.keys() if k not in ("loss", "lr") and k in last]
        said = [f"{self.label}: step {last['step']}/{last['total_steps']}"]
        if "time" in first and "time" in last and last["time"] > first["time"]:
            said.append(f"{duration(last['time'] - first['time'])} from the first logged step")
        speeds = [row["steps_per_s"] for row in self.rows if "steps_per_s" in row]
        if speeds:
            said.append(f"{float(np.median(speeds)):.3g} steps/s")
        said.append(f"loss {losses[0]:.4g} → {losses[-1]:.4g} (lowest {losses[low]:.4g} at step {int(steps[low])})")
        line = ", ".join(said) + ("; at the end " + ", ".join(parts) if parts else "")
        for key in (k for k in self.keys() if k.startswith("val_")):  # the monitor's: higher is better
            at, values = self.series(key)
            best = int(np.argmax(values))
            line += f"; {key} highest {values[best]:.4g} at step {int(at[best])}"
        if last.get("output_std", math.inf) < COLLAPSED:
            line += (f"\n  output_std {last['output_std']:.3g} < {COLLAPSED}: the outputs are collapsing onto few "
                     "directions (near 0: one for every image)")
        return line


def stage_order(run_dir: Path) -> list[str]:
    """The stages of a run in its recipe's order, then any other stage folder in name order."""
    listed: list[str] = []
    if (run_dir / RESOLVED).is_file():
        listed = list((yaml.safe_load((run_dir / RESOLVED).read_text()) or {}).get("stages") or {})
    stages = run_dir / "stages"
    folders = sorted(p.name for p in stages.iterdir() if p.is_dir()) if stages.is_dir() else []
    return [*listed, *(name for name in folders if name not in listed)]


def collect(paths: list[Path], stages: tuple[str, ...]) -> list[Curves]:
    """The logged training stages of every run in ``paths`` (a run, or a folder of runs such as a sweep's),
    all of them or those named in ``stages``, each of which must be a stage of some run."""
    runs = [run for path in paths for run in runs_in(path)]
    for run_dir in runs:
        if not (run_dir / "stages").is_dir():
            raise HvkitError(f"{run_dir}: no run here (no stages/ folder)")
    orders = {run_dir: stage_order(run_dir) for run_dir in runs}
    found: list[Curves] = []
    for run_dir, order in orders.items():
        for name in order:
            if stages and name not in stages:
                continue
            rows = read_log(run_dir / "stages" / name / "log.jsonl")
            if rows:
                found.append(Curves(name, run_dir.name, len(runs) > 1, rows))
    known = {name for order in orders.values() for name in order}
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise HvkitError(f"no stage {', '.join(map(repr, unknown))} in {', '.join(map(str, runs))} "
                         f"(stages: {', '.join(sorted(known)) or 'none'})")
    if not found:
        where = f"stage {', '.join(stages)} of " if stages else ""
        raise HvkitError(f"{where}{', '.join(map(str, runs))}: no training step logged (no stages/*/log.jsonl)")
    return found


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` logged points (the first points over those there are)."""
    if window <= 1:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)


def draw(curves: list[Curves], out: Path, smooth: int) -> None:
    """For each stage, one panel per logged quantity against the step, a line per run; the learning rate and
    the monitor's figures unsmoothed. Stages get panels of their own: their losses differ in scale."""
    by_stage: dict[str, list[Curves]] = {}
    for c in curves:
        by_stage.setdefault(c.stage, []).append(c)
    panels = [(stage, key, group) for stage, group in by_stage.items()
              for key in dict.fromkeys(k for c in group for k in c.keys())]
    columns = min(3, max(Counter(stage for stage, _, _ in panels).values()))
    starts = [i for i, (stage, _, _) in enumerate(panels) if i == 0 or panels[i - 1][0] != stage]
    grid_rows = sum(math.ceil(len([p for p in panels if p[0] == stage]) / columns) for stage in by_stage)
    figure = new_figure(4.2 * columns, 2.9 * grid_rows)
    slot = 0
    for index, (stage, key, group) in enumerate(panels):
        if index in starts and slot % columns:
            slot += columns - slot % columns  # each stage starts a new row
        axes = figure.add_subplot(grid_rows, columns, slot + 1)
        slot += 1
        raw = key == "lr" or key.startswith("val_")  # a schedule, and the monitor's few points
        for c in group:
            steps, values = c.series(key)
            if len(steps):
                axes.plot(steps, values if raw else smoothed(values, smooth), label=c.run, linewidth=1.2,
                          marker="o" if len(steps) <= 50 else None, markersize=2.5)
        smoothing = f", mean of {smooth} logged points" if smooth > 1 and not raw else ""
        axes.set_title(f"{stage}: {key}{smoothing}", fontsize=9)
        axes.set_xlabel("step", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if index in starts and len(group) > 1:
            axes.legend(fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


@click.command("curves")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--stage", "stages", multiple=True, help="A training stage to show (repeatable; default: every "
              "stage that logged steps).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("curves.png"),
              show_default=True, help="The PNG to write.")
@click.option("--smooth", type=click.IntRange(min=1), default=1, show_default=True,
              help="Average each curve but the learning rate and the monitor's over this many logged points.")
@click.option("--json", "as_json", is_flag=True, help="Print each stage's logged rows as JSON; no PNG.")
@user_errors
def curves_command(runs: tuple[Path, ...], stages: tuple[str, ...], out: Path, smooth: int, as_json: bool) -> None:
    """Training curves of runs' stages: loss, learning rate and the loss's parts against the step.

    Each RUN is a run or a folder of runs (a sweep's); with several, the curves of one stage in
    each run share a panel, to compare them. Prints, per stage, the steps done, the time and
    speed, the loss from the first logged step to the last and the parts logged at the end
    (VICReg's invariance, variance and covariance, a classifier loss's cross-entropy …;
    ``ssl_pretrain``'s ``output_std`` is 1 for outputs spread over the sphere and 0 when they
    collapse; with ``train.monitor_every`` the validation writers' ``val_auc`` and ``val_p1``),
    then draws one panel per quantity into ``--out``. Works on a running run too.
    """
    found = collect(list(runs), stages)
    if as_json:
        click.echo(json.dumps({c.label: c.rows for c in found}, indent=1))
        return
    for c in found:
        click.echo(c.summary())
    draw(found, out, smooth)
    click.echo(f"wrote {out}")

