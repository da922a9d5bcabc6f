"""Where a run stands (``hvkit status``): running or stopped, each stage complete, at a checkpoint,
under way or not started, and what to run next."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import yaml

from hvkit import stop_record
from hvkit.engine import load_checkpoint
from hvkit.engine.trainer import duration, read_log
from hvkit.errors import HvkitError
from hvkit.pipeline import RESOLVED, identification_rows, open_set_rows, set_rows, summary, verification_rows
from hvkit.run_lock import Holder, holder

CHECKPOINT = "last.pt"
SET_KEYS = ("accuracy", "roc_auc", "eer", "writers", "trials")
"""What ``--json`` gives of each size of a stage's ``set_verification``."""


def stage_state(stage_dir: Path, running: bool = False) -> tuple[bool, str]:
    """Whether a stage is complete, and its state: ``complete in 3 min (final loss 0.41, 160 steps)``,
    ``at step 100/160 (checkpoint), loss 0.52 at step 100`` or ``not started``; a stage ``running``
    now: ``running, at step 120/160, loss 0.5, about 40 s left (logged 6 s ago)`` from its log's last
    line (the time left at that line's speed), else ``running, at step 100/160 (checkpoint)`` or
    ``running`` (no step logged yet, or an evaluation)."""
    outputs = stage_dir / "outputs.json"
    if outputs.is_file():
        found = json.loads(outputs.read_text(encoding="utf-8"))
        metrics = found.get("metrics", {})
        details = []
        if isinstance(metrics.get("final_loss"), float):
            details.append(f"final loss {metrics['final_loss']:.4g}")
        if isinstance(metrics.get("steps"), int):
            details.append(f"{metrics['steps']} steps")
        took = f" in {duration(found['seconds'])}" if isinstance(found.get("seconds"), (int, float)) else ""
        return True, f"complete{took}" + (f" ({', '.join(details)})" if details else "")
    logged = read_log(stage_dir / "log.jsonl")
    if running and logged and "time" in logged[-1]:
        last = logged[-1]
        left = (last["total_steps"] - last["step"]) / max(last["steps_per_s"], 1e-9)
        ago = max(time.time() - last["time"], 0.0)
        return False, (f"running, at step {last['step']}/{last['total_steps']}, loss {last['loss']:.4g}, "
                       f"about {duration(left)} left (logged {duration(ago)} ago)")
    if (stage_dir / CHECKPOINT).is_file():
        state = load_checkpoint(stage_dir / CHECKPOINT)
        total = f"/{state['total_steps']}" if "total_steps" in state else ""
        loss = f", loss {logged[-1]['loss']:.4g} at step {logged[-1]['step']}" if logged else ""
        return False, f"{'running, ' if running else ''}at step {state['step']}{total} (checkpoint){loss}"
    return False, "running" if running else "not started"


def runs_in(path: Path) -> list[Path]:
    """``path`` when it holds a run, else the runs directly inside it in name order (a ``runs/`` folder,
    a sweep's), else ``path`` itself, which :func:`run_status` then reports as no run."""
    if (path / RESOLVED).is_file() or not path.is_dir():
        return [path]
    return sorted(child for child in path.iterdir() if (child / RESOLVED).is_file()) or [path]


def run_state(run_dir: Path) -> dict[str, Any]:
    """Where run ``run_dir`` stands, for scripts (``hvkit status --json``): its recipe's name, each stage's
    :func:`stage_state`, the process working in it (:class:`~hvkit.run_lock.Holder`'s fields) or None, the
    number of stages left, for a stopped run why its last ``hvkit run`` ended (``stopped_by``:
    :class:`~hvkit.stop_record.Stop`'s fields; None when it was killed without a word), and for a complete
    run whether its data is synthetic, each verifier's accuracy, ROC AUC and EER, each stage's
    writer-identification accuracies (k-NN, linear probe), its k-against-k verification and its open-set
    identification (without the intervals)."""
    return _state(run_dir)[0]


def _state(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """:func:`run_state`, and a complete run's metrics.json (None for a run not complete)."""
    stored = run_dir / RESOLVED
    if not stored.is_file():
        raise HvkitError(f"{run_dir}: not a run directory (no {RESOLVED})")
    resolved: dict[str, Any] = yaml.safe_load(stored.read_text(encoding="utf-8"))
    states = {name: stage_state(run_dir / "stages" / name) for name in resolved["stages"]}
    left = [name for name, (complete, _) in states.items() if not complete]
    working = holder(run_dir)
    if working is not None and working.command == "hvkit run" and left:  # stages run in order
        states[left[0]] = stage_state(run_dir / "stages" / left[0], running=True)
    metrics = run_dir / "metrics.json"
    results = json.loads(metrics.read_text(encoding="utf-8")) if working is None and not left and metrics.is_file() \
        else None
    stop = stop_record.read(run_dir) if working is None and left else None
    return {"run_dir": str(run_dir), "recipe": resolved["name"],
            "stages": [{"name": name, "complete": done, "state": state} for name, (done, state) in states.items()],
            "running": dataclasses.asdict(working) if working is not None else None, "stages_left": len(left),
            "stopped_by": dataclasses.asdict(stop) if stop is not None else None,
            "synthetic": None if results is None else bool(results.get("data", {}).get("synthetic")),
            "results": None if results is None else [
                {"stage": stage, "verifier": verifier, **{k: found.get(k) for k in ("accuracy", "roc_auc", "eer")}}
                for stage, verifier, found in verification_rows(results)],
            "identification": None if results is None else [
                {"stage": stage, **found} for stage, found in identification_rows(results)],
            "sets": None if results is None else [
                {"stage": stage, "sizes": {str(k): {key: v.get(key) for key in SET_KEYS} for k, v in sizes.items()}}
                for stage, sizes in set_rows(results)],
            "open_set": None if results is None else [
                {"stage": stage, **{key: v for key, v in found.items() if key != "ci"}}
                for stage, found in open_set_rows(results)]}, results


def run_status(run_dir: Path) -> str:
    """:func:`run_state` in words: each stage's state, then the process working in the run, its results
    (a complete run) or the command that continues it."""
    state, results = _state(run_dir)
    width = max(len(stage["name"]) for stage in state["stages"])
    lines = [f"{run_dir}: recipe {state['recipe']}"]
    lines += [f"  {stage['name']:<{width}}  {stage['state']}" for stage in state["stages"]]
    if state["running"] is not None:
        lines.append(f"running: {Holder(**state['running'])}")
    elif results is not None:
        if state["synthetic"]:
            lines.append("data: SYNTHETIC (not real handwriting)")
        lines.append(summary(results))
    else:
        stop = state["stopped_by"]
        if stop is not None:
            how = "interrupted" if stop["interrupted"] else "failed"
            lines += [f"last run {how} ({stop['time']}): {line}" for line in stop["error"]]
        lines.append(f"stopped, {state['stages_left']} of {len(state['stages'])} stages left: hvkit run --resume "
                     f"{run_dir} continues")
    return "\n".join(lines)
