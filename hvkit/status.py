"""Where a run stands (``hvkit status``): running or stopped, each stage complete, at a checkpoint,
under way or not started, and what to run next."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from hvkit.engine import load_checkpoint
from hvkit.engine.trainer import duration, read_log
from hvkit.errors import HvkitError
from hvkit.pipeline import RESOLVED, summary
from hvkit.run_lock import holder

CHECKPOINT = "last.pt"


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


def run_status(run_dir: Path) -> str:
    """Each stage of run ``run_dir`` with its :func:`stage_state`, then the results (a complete run) or
    the command that continues it."""
    stored = run_dir / RESOLVED
    if not stored.is_file():
        raise HvkitError(f"{run_dir}: not a run directory (no {RESOLVED})")
    resolved: dict[str, Any] = yaml.safe_load(stored.read_text(encoding="utf-8"))
    states = {name: stage_state(run_dir / "stages" / name) for name in resolved["stages"]}
    left = [name for name, (complete, _) in states.items() if not complete]
    working = holder(run_dir)
    if working is not None and working.command == "hvkit run" and left:  # stages run in order
        states[left[0]] = stage_state(run_dir / "stages" / left[0], running=True)
    width = max(len(name) for name in states)
    lines = [f"{run_dir}: recipe {resolved['name']}"]
    lines += [f"  {name:<{width}}  {state}" for name, (_, state) in states.items()]
    metrics = run_dir / "metrics.json"
    if working is not None:
        lines.append(f"running: {working}")
    elif not left and metrics.is_file():
        results = json.loads(metrics.read_text(encoding="utf-8"))
        if results.get("data", {}).get("synthetic"):
            lines.append("data: SYNTHETIC (not real handwriting)")
        lines.append(summary(results))
    else:
        lines.append(f"stopped, {len(left)} of {len(states)} stages left: hvkit run --resume {run_dir} continues")
    return "\n".join(lines)

