"""``hvkit sweep``: one recipe over a grid of settings and seeds, each point a run, then mean ± sd.

``--vary KEY=[V1, V2]`` (repeatable) gives each axis; the runs are every combination, the last
axis changing fastest, each in ``OUT/<name>`` with ``name`` such as ``sim_weight=10,seed=1``.
Every combination is validated before the first runs. Axes named ``seed`` or ``….seed`` are
repeats: the tables group the runs that differ only there and report each verifier's accuracy,
ROC AUC and EER, each stage's retrieval P@1, R-precision and MAP@R and its k-NN and linear
probes' accuracy, as mean ± sample standard deviation over them (``OUT/summary.md``,
``OUT/summary.json``). The same command again continues a sweep: complete runs are kept, an
interrupted one resumes from its checkpoint, the rest start. A run that fails (a NaN loss, a
setting its data cannot meet) is reported at the end; the other runs go on. ``--nproc N`` runs
each run in N processes (``hvkit run --nproc``). The same command started several times side by
side (one process, or one ``--nproc`` group, a GPU) shares the runs: one that another process
works in is skipped (:class:`~hvkit.run_lock.InUse`), and the process that ends last summarises
every run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from hvkit import stop_record
from hvkit.cli import user_errors
from hvkit.engine.checkpoint import atomic_write, write_json
from hvkit.errors import HvkitError, Interrupted, every, problems, raise_all
from hvkit.launch import launched, run_args
from hvkit.pipeline import RESOLVED, RunExists, prepare, run, set_rows, verification_rows
from hvkit.recipe.load import parse_override
from hvkit.run_lock import InUse, exclusive, holder

RECORD = "sweep.json"
SUMMARY_LOCK = ".summary.lock"
TABLES = {"verification": (("accuracy", "accuracy"), ("roc_auc", "ROC AUC"), ("eer", "EER")),
          "retrieval": (("precision_at_1", "P@1"), ("r_precision", "R-precision"), ("map_at_r", "MAP@R")),
          "knn_probe": (("accuracy", "accuracy"),), "linear_probe": (("accuracy", "accuracy"),),
          "open_set": (("rank1", "rank 1"), ("dir_at_far_0.01", "DIR at 1% false alarms"),
                       ("detection_auc", "detection AUC")),
          "set_verification": (("accuracy", "accuracy"), ("roc_auc", "ROC AUC"), ("eer", "EER"))}
"""Each table of the summary and its measures, (key in metrics.json, title); verification has a row a
stage and verifier, set_verification a row a stage and number of images a side, every other table a row
a stage, read from the stage's metrics under the table's name."""
ROW_TITLES = {"verification": "stage/verifier", "set_verification": "stage/images a side"}


@dataclass(frozen=True)
class Point:
    """One combination of the axes' values, and the run directory's name for it."""

    name: str
    values: dict[str, Any]

    def overrides(self) -> list[str]:
        return [f"{key}={json.dumps(value)}" for key, value in self.values.items()]


def parse_axes(texts: tuple[str, ...]) -> dict[str, list[Any]]:
    """``KEY=[V1, V2]`` texts as ``{KEY: [V1, V2]}`` (values read as YAML); keys that vary together,
    ``K1,K2=[[A1, A2], [B1, B2]]``, as one axis ``{"K1,K2": [[A1, A2], [B1, B2]]}``."""
    axes: dict[str, list[Any]] = {}
    for text in texts:
        parts, values = parse_override(text)
        axis = ".".join(parts)
        keys = axis.split(",")
        if not all(keys):
            raise HvkitError(f"--vary {text}: an empty key; keys that vary together read K1,K2=[[A1, A2], …]")
        if not isinstance(values, list) or not values:
            raise HvkitError(f"--vary {text}: the values must be a non-empty YAML list, e.g. {keys[0]}=[1, 2]")
        if len(keys) > 1 and not all(isinstance(v, list) and len(v) == len(keys) for v in values):
            raise HvkitError(f"--vary {text}: {len(keys)} keys vary together, so each value must be a list of "
                             f"{len(keys)}, one for each key in order")
        seen = keys_of(axes)
        again = next((key for i, key in enumerate(keys) if key in seen or key in keys[:i]), None)
        if again is not None:
            raise HvkitError(f"--vary {again} is given twice; list every value in one --vary")
        if len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
            raise HvkitError(f"--vary {text}: a value is listed twice")
        axes[axis] = values
    return axes


def keys_of(axes: dict[str, list[Any]]) -> list[str]:
    """Every varied key in axis order, each of keys that vary together (``K1,K2``) on its own."""
    return [key for axis in axes for key in axis.split(",")]


_COMPACT = str.maketrans({'"': None, "{": None, "}": None, "[": None, "]": None, ":": "-", ",": "+"})


def _label(value: Any) -> str:
    """A value in a folder name: ``0.001``, ``a_b`` for ``a/b``, ``margin-0.2+name-triplet`` for a mapping."""
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, separators=(",", ":")).translate(_COMPACT)
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in value)


NAME_MAX = 255
"""The bytes a folder's name may hold on common file systems (ext4, XFS, APFS, NTFS's 255 characters)."""


def _fitted(name: str) -> str:
    """``name`` as a folder name: itself where it fits :data:`NAME_MAX` bytes, else its start and ``~`` and
    the first 12 hex digits of its SHA-1, so that each combination keeps a folder of its own."""
    encoded = name.encode()
    if len(encoded) <= NAME_MAX:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:12]
    return encoded[:NAME_MAX - len(digest) - 1].decode(errors="ignore") + "~" + digest


def grid(axes: dict[str, list[Any]]) -> list[Point]:
    """Every combination of the axes' values, the last axis fastest (keys that vary together take their
    values in step); a run's name keeps each key's last part (the whole key where two keys share it),
    cut to fit a folder's name (:func:`_fitted`)."""
    keys = keys_of(axes)
    last = [key.rsplit(".", 1)[-1] for key in keys]
    shown = {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}
    combos: list[dict[str, Any]] = [{}]
    for axis, values in axes.items():
        together = axis.split(",")
        combos = [combo | (dict(zip(together, value)) if len(together) > 1 else {axis: value})
                  for combo in combos for value in values]
    points = [Point(_fitted(",".join(f"{shown[k]}={_label(v)}" for k, v in combo.items())), combo)
              for combo in combos]
    names = [point.name for point in points]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise HvkitError(f"two combinations would share the run directory {twice!r}: their values differ only in "
                         "characters a folder name cannot hold")
    return points


def is_seed(key: str) -> bool:
    """Whether an axis repeats a run under another seed (``seed``, ``data.seed``, ``….seed``)."""
    return key == "seed" or key.endswith(".seed")


def _spread(values: list[float]) -> dict[str, Any]:
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": float(np.mean(values)), "sd": sd, "n": len(values), "values": values}


def headlines(metrics: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """A run's figures the summary reads, as ``(table, row, values)``: each verifier's verification as
    ``("verification", "STAGE/VERIFIER", …)``, each size of a stage's k-against-k verification as
    ``("set_verification", "STAGE/k=K", …)``, each stage's retrieval as ``("retrieval", "STAGE", …)``,
    and its probes alike."""
    for stage, verifier, found in verification_rows(metrics):
        yield "verification", f"{stage}/{verifier}", found
    for stage, sizes in set_rows(metrics):
        for k, found in sizes.items():
            yield "set_verification", f"{stage}/k={k}", found
    for kind in [kind for kind in TABLES if kind not in ROW_TITLES]:
        for stage, values in metrics.items():
            if isinstance(values, dict) and isinstance(values.get(kind), dict):
                yield kind, stage, values[kind]


def aggregate(axes: dict[str, list[Any]], finished: list[tuple[Point, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The finished runs grouped by the axes that are not seeds: for each group its values, its runs and,
    per table of :data:`TABLES` and row of :func:`headlines`, each measure's mean, sample standard deviation
    (None for one run), count and values."""
    settings = [key for key in keys_of(axes) if not is_seed(key)]
    groups: dict[str, dict[str, Any]] = {}
    for point, metrics in finished:
        values = {key: point.values[key] for key in settings}
        group = groups.setdefault(json.dumps(values, sort_keys=True), {"values": values, "runs": [], "found": {}})
        group["runs"].append(point.name)
        for kind, row, found in headlines(metrics):
            measures = group["found"].setdefault(kind, {}).setdefault(row, {})
            for measure, _ in TABLES[kind]:
                if isinstance(found.get(measure), (int, float)) and math.isfinite(found[measure]):
                    measures.setdefault(measure, []).append(float(found[measure]))
    return [{"values": g["values"], "runs": g["runs"],
             "results": {kind: {row: {m: _spread(v) for m, v in measures.items()} for row, measures in rows.items()}
                         for kind, rows in g["found"].items()}}
            for g in groups.values()]


def _cell(spread: dict[str, Any] | None) -> str:
    if spread is None:
        return "-"
    return f"{spread['mean']:.4f}" + (f" ± {spread['sd']:.4f}" if spread["sd"] is not None else "")


def table(axes: dict[str, list[Any]], groups: list[dict[str, Any]]) -> str:
    """One markdown table a kind of :data:`TABLES` the runs hold, under its name: a row per group and
    verifier (or stage), each measure as mean ± sd, and the runs counted."""
    settings = [key for key in keys_of(axes) if not is_seed(key)]
    parts = []
    for kind, measures in TABLES.items():
        if not any(kind in group["results"] for group in groups):
            continue
        head = settings + [ROW_TITLES.get(kind, "stage")] + \
            [title for _, title in measures] + ["runs"]
        lines = [f"## {kind}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for group in groups:
            for row, found in group["results"].get(kind, {}).items():
                cells = [json.dumps(group["values"][k]) if not isinstance(group["values"][k], str)
                         else group["values"][k] for k in settings]
                cells += [row] + [_cell(found.get(m)) for m, _ in measures] + [str(len(group["runs"]))]
                lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _check_record(out: Path, record: dict[str, Any]) -> None:
    """Write the sweep's record in ``out``, or refuse a folder that holds another sweep."""
    path = out / RECORD
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != record:
            raise HvkitError(f"{out} holds another sweep ({path}: recipe {found.get('recipe')}, vary "
                             f"{', '.join(found.get('vary', {}))}); give another --out, or the same recipe, "
                             f"--set and --vary to continue it")
        return
    # hidden names left aside: a sweep process started beside this one may be writing the same record
    if out.exists() and any(not entry.name.startswith(".") for entry in out.iterdir()):
        raise HvkitError(f"{out} is not empty and holds no sweep; give another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


@click.command("sweep")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--vary", "axes", multiple=True, required=True, metavar="KEY.PATH=[V1, V2]",
              help="An axis: a recipe key and the list of its values (YAML); repeatable. seed=[0, 1, 2] repeats; "
                   "K1,K2=[[A1, A2], [B1, B2]] varies two keys together.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a value in every run.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The sweep's folder: one run directory per combination, summary.md and summary.json.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Override the device.")
@click.option("--nproc", type=click.IntRange(min=1), default=1,
              help="Processes for each run, as hvkit run --nproc (torchrun; one per GPU).")
@user_errors
def sweep_command(recipe: Path, axes: tuple[str, ...], overrides: tuple[str, ...], out: Path,
                  device: str | None, nproc: int) -> None:
    """Run a recipe over every combination of --vary values, one run each; then each verifier's accuracy,
    ROC AUC and EER, and each stage's retrieval and probes, as mean ± sd over the seed axes. The same command again
    continues the sweep; started side by side (one a GPU), several share its runs."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise HvkitError("hvkit sweep starts the processes of each run itself: run it as one process, with "
                         "--nproc N for N processes a run")
    vary = parse_axes(axes)
    clash = sorted({".".join(parse_override(o)[0]) for o in overrides} & set(keys_of(vary)))
    if clash:
        raise HvkitError(f"{clash[0]} is both set (--set) and varied (--vary); keep one")
    points = grid(vary)
    every(points, lambda point: prepare(recipe, list(overrides) + point.overrides()))  # each problem once
    _check_record(out, {"recipe": str(recipe.resolve()), "set": list(overrides), "vary": vary})
    failed: dict[str, list[HvkitError]] = {}
    for i, point in enumerate(points, 1):
        click.echo(f"sweep {i}/{len(points)}: {point.name}")
        try:
            _run_point(recipe, list(overrides) + point.overrides(), out / point.name, device, nproc)
        except Interrupted as exc:
            raise Interrupted(f"sweep {i}/{len(points)} ({point.name}): {exc}; the same hvkit sweep command "
                              "continues the sweep", exc.exit_code) from None
        except InUse as exc:
            click.echo(f"  {exc}: skipped")
        except HvkitError as exc:
            failed[point.name] = [HvkitError(f"sweep run {point.name}: {problem}") for problem in problems(exc)]
    _summarise(recipe, out, vary, points, failed)
    raise_all([error for errors in failed.values() for error in errors])


def _summarise(recipe: Path, out: Path, vary: dict[str, list[Any]], points: list[Point],
               failed: dict[str, list[HvkitError]]) -> None:
    """``summary.json`` and ``summary.md`` of every run complete now, whichever process ran it (with the runs
    another process works in, those started but stopped or failed, by this process or another, and every
    failure's error: :func:`failures`): the sweep process that ends last writes the whole sweep's. One
    process at a time reads the runs and writes, so a summary read before another process's last run
    completed cannot be written after that one's."""
    with exclusive(out / SUMMARY_LOCK):
        _write_summary(recipe, out, vary, points, failed)


def failures(out: Path, points: list[Point], stopped: list[str], done: set[str],
             failed: dict[str, list[HvkitError]]) -> list[str]:
    """The errors of the sweep's failed runs that are not complete now, in sweep order: a stopped run's as its
    last ``hvkit run`` recorded them (:mod:`hvkit.stop_record`), whichever process ran it, else this
    process's (``failed``: say, a run that failed before its directory held a run)."""
    lines = []
    for point in points:
        stop = stop_record.read(out / point.name) if point.name in stopped else None
        if stop is not None and not stop.interrupted:
            lines += [f"sweep run {point.name}: {line}" for line in stop.error]
        elif stop is None and point.name not in done:
            lines += [str(error) for error in failed.get(point.name, [])]
    return lines


def _write_summary(recipe: Path, out: Path, vary: dict[str, list[Any]], points: list[Point],
                   failed: dict[str, list[HvkitError]]) -> None:
    finished = [(point, json.loads((out / point.name / "metrics.json").read_text(encoding="utf-8")))
                for point in points if (out / point.name / "metrics.json").is_file()]
    done = {point.name for point, _ in finished}
    busy = [p.name for p in points if p.name not in done and holder(out / p.name) is not None]
    stopped = [p.name for p in points
               if p.name not in done and p.name not in busy and (out / p.name / RESOLVED).is_file()]
    groups = aggregate(vary, finished)
    shown = table(vary, groups)
    errors = failures(out, points, stopped, done, failed)
    write_json(out / "summary.json", {"vary": vary, "groups": groups, "failed": errors, "running": busy,
                                      "stopped": stopped})
    listed = "".join(f"- {error}\n" for error in errors)
    atomic_write(out / "summary.md", lambda f: f.write(f"# sweep of {recipe}\n\n{shown}\n"
                                                       + (f"\n## failed\n\n{listed}" if errors else "")), "w")
    running = f"; {len(busy)} running in another process" if busy else ""
    running += f"; {len(stopped)} stopped or failed, which the same command resumes" if stopped else ""
    click.echo(f"sweep: {len(finished)} of {len(points)} runs complete{running} ({out / 'summary.md'})\n{shown}")


def _run_point(recipe: Path, overrides: list[str], run_dir: Path, device: str | None, nproc: int) -> None:
    """A point's run: started, or kept when complete, or resumed when started before (by this sweep or
    another process); :class:`InUse` when another process works in it."""
    if nproc > 1:
        _launch_point(recipe, overrides, run_dir, device, nproc)
        return
    if not (run_dir / RESOLVED).is_file():
        try:
            run(recipe, overrides, run_dir=run_dir, device=device)
            return
        except RunExists:  # another sweep process started it meanwhile
            pass
    if (run_dir / "metrics.json").is_file():
        click.echo(f"  {run_dir} is complete, kept")
        return
    run(None, resume=run_dir, device=device)


def _launch_point(recipe: Path, overrides: list[str], run_dir: Path, device: str | None, nproc: int) -> None:
    """:func:`_run_point` in ``nproc`` processes (``hvkit run --nproc``), whose ranks say their own errors:
    a failure is the exit code, unless another sweep process took the run meanwhile (it holds or
    completed it); a signal that stopped the ranks is :class:`Interrupted`."""
    if _taken(run_dir, "is complete"):
        return
    started = (run_dir / RESOLVED).is_file()
    code = launched(nproc, run_args(None, [], resume=run_dir, device=device) if started else
                    run_args(recipe, overrides, run_dir=run_dir, device=device), run_dir)
    if code > 128:
        raise Interrupted(f"its {nproc} processes stopped on {signal.Signals(code - 128).name} (each rank said "
                          "where above)", code)
    if code and not _taken(run_dir, "was completed by another process"):
        raise HvkitError(f"failed in {nproc} processes with exit code {code} (the error above)")


def _taken(run_dir: Path, complete: str) -> bool:
    """Whether ``run_dir`` holds a complete run (said, with ``complete``); :class:`InUse` when another process
    works in it."""
    working = holder(run_dir)
    if working is not None:
        raise InUse(f"{run_dir} is in use by {working}")
    if (run_dir / "metrics.json").is_file():
        click.echo(f"  {run_dir} {complete}, kept")
        return True
    return False
