"""Running a recipe: validate it, create the run directory, run its stages in order.

Plugins report bad settings with ``ValueError``; the pipeline names the stage (or the
data section) and turns it into a one-line :class:`HvkitError`.

The run directory holds the resolved recipe, the environment (versions of hvkit, torch
and every plugin package used, the seed), each stage's files under ``stages/<name>/``,
``metrics.json`` and ``report.md``. A stage whose ``outputs.json`` exists is complete:
``--resume`` skips it and continues the interrupted stage from its last checkpoint. While a
run or a re-evaluation works, it holds the directory's lock (:mod:`hvkit.run_lock`).
"""

from __future__ import annotations

import functools
import json
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml

import hvkit
from hvkit import distributed, stop_record
from hvkit.api import WriterDataset
from hvkit.engine.checkpoint import atomic_write, write_json
from hvkit.engine.context import StageContext, build, derive_seed
from hvkit.engine.interrupt import Terminated, terminate_as_interrupt
from hvkit.engine.trainer import duration
from hvkit.errors import HvkitError, Interrupted, every
from hvkit.hookspecs import STAGE_DATA
from hvkit.recipe import apply_overrides, load_recipe, validate
from hvkit.registry import Registry, get_registry
from hvkit.run_lock import holding

RESOLVED = "recipe.resolved.yaml"


def prepare(recipe_path: str | Path, overrides: Iterable[str] = (),
            registry: Registry | None = None) -> dict[str, Any]:
    """The validated recipe with every default filled in (nothing is run)."""
    registry = registry or get_registry()
    raw = apply_overrides(load_recipe(recipe_path), list(overrides))
    return validate(raw, registry, str(recipe_path))


def select_device(choice: str) -> torch.device:
    """The device of ``choice`` (auto, cpu, cuda, cuda:N) for this process: under several, ``cuda`` is
    the GPU of its LOCAL_RANK. One that does not exist, or one GPU named for every rank, is an error."""
    _, local_rank, world_size = distributed.world()
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if not choice.startswith("cuda"):
        return torch.device(choice)
    if not torch.cuda.is_available():
        raise HvkitError("device cuda requested but CUDA is not available; use --device cpu")
    named = ":" in choice
    if named and world_size > 1:
        raise HvkitError(f"device {choice} puts all {world_size} processes on one GPU; use device cuda "
                         "(each process takes the GPU of its LOCAL_RANK)")
    index, count = int(choice.partition(":")[2]) if named else local_rank, torch.cuda.device_count()
    if index >= count:
        fix = "name one that exists" if named else f"run at most {count} processes (--nproc {count})"
        raise HvkitError(f"device cuda:{index} does not exist: this machine has {count} GPU(s); {fix}")
    return torch.device("cuda", index)


def used_packages(resolved: dict[str, Any], registry: Registry) -> dict[str, str]:
    """Every plugin package whose component the recipe uses, with its version."""
    used: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("name", "stage"):
                name = node.get(key)
                if isinstance(name, str):
                    for kind_entries in registry.entries.values():
                        entry = kind_entries.get(name)
                        if entry is not None:
                            used[entry.package] = entry.version
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(resolved)
    return dict(sorted(used.items()))


def environment(resolved: dict[str, Any], registry: Registry) -> dict[str, Any]:
    import numpy
    versions = {"hvkit": hvkit.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
                "python": platform.python_version()}
    try:
        import faiss
        versions["faiss"] = faiss.__version__
    except ImportError:
        versions["faiss"] = None
    return {"seed": resolved["seed"], "versions": versions,
            "plugins_used": used_packages(resolved, registry),
            "plugins_installed": {s.package: s.version for s in registry.sources},
            "command": sys.argv, "platform": platform.platform(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (torch, CUDA, numpy, random) so a stage is reproducible on its own."""
    import random

    import numpy
    random.seed(seed)
    numpy.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _quiet(line: str) -> None:
    """The console of a rank other than 0: rank 0 says what every rank would."""


def _banner(console: Callable[[str], None], text: str) -> None:
    line = "!" * 78
    console(f"{line}\n!! {text}\n{line}")


class Run:
    """One execution of a resolved recipe in a run directory."""

    def __init__(self, resolved: dict[str, Any], run_dir: Path, registry: Registry,
                 device: torch.device, resume: bool, console: Callable[[str], None] = print):
        self.resolved, self.run_dir, self.registry = resolved, run_dir, registry
        self.device, self.resume = device, resume
        self.rank, _, self.world_size = distributed.world()
        self.console = console if self.rank == 0 else _quiet
        self._datasets: dict[str, WriterDataset] = {}

    def dataset(self, spec: dict[str, Any] | None = None, where: str = "data") -> WriterDataset:
        """The dataset of ``spec`` (default: the recipe's ``data``), built once per distinct spec."""
        spec = spec or self.resolved["data"]
        key = _data_key(spec)
        if key not in self._datasets:
            data = read_dataset(self.registry, spec, self.resolved["seed"], where)
            if data.synthetic:
                _banner(self.console, f"SYNTHETIC DATA ({data.name}): these are NOT results on real "
                                      f"handwriting; set {where}.root to use a real dataset")
            self._datasets[key] = data
        return self._datasets[key]

    def done(self, name: str, rerun: frozenset[str]) -> bool:
        """Whether stage ``name`` is complete in the run directory being resumed, and not to be rerun."""
        return self.resume and name not in rerun and (self.run_dir / "stages" / name / "outputs.json").is_file()

    def read_data(self, rerun: frozenset[str] = frozenset()) -> None:
        """Builds the dataset of every stage still to run before the first runs, so an empty folder or
        a broken layout is the run's first error, not one after hours of the stages before it; every
        broken dataset is reported at once."""
        pending = [name for name in self.resolved["stages"] if not self.done(name, rerun)]
        every(stage_datasets(self.resolved, pending), lambda found: self.dataset(*found))

    def execute(self, rerun: frozenset[str] = frozenset()) -> dict[str, Any]:
        outputs: dict[str, dict[str, Any]] = {}
        metrics: dict[str, Any] = {"recipe": self.resolved["name"]}
        reports: list[str] = []
        synthetic = False
        for name, spec in self.resolved["stages"].items():
            done_file = self.run_dir / "stages" / name / "outputs.json"
            if self.done(name, rerun):
                outputs[name] = json.loads(done_file.read_text())
                self.console(f"[{name}] complete, skipped")
            else:
                ctx = StageContext(name=name, spec=spec, recipe=self.resolved, run_dir=self.run_dir,
                                   device=self.device, registry=self.registry, outputs=outputs,
                                   data_fn=functools.partial(self.dataset, *stage_data(self.resolved, name)),
                                   resume=self.resume, rank=self.rank,
                                   world_size=self.world_size, console=self.console)
                self.console(f"[{name}] {spec['stage']} …")
                started = time.perf_counter()
                seed_everything(derive_seed(self.resolved["seed"], name))
                try:
                    stage = build(self.registry, "stage", {k: v for k, v in spec.items() if k != STAGE_DATA},
                                  name_key="stage")
                    result = stage.run(ctx) or {}
                except ValueError as exc:
                    raise HvkitError(f"stage {name!r}: {exc}") from exc
                result.setdefault("seconds", round(time.perf_counter() - started, 2))
                self.console(f"[{name}] done in {duration(result['seconds'])}")
                if STAGE_DATA in spec:  # recorded with the outputs, so a resumed run need not read it again
                    result[STAGE_DATA] = _data_record(ctx.dataset)
                outputs[name] = result
                if self.rank == 0:
                    write_json(done_file, result)
                distributed.barrier()
            own = outputs[name].get(STAGE_DATA) if STAGE_DATA in spec else None
            if own is not None:
                synthetic = synthetic or own["synthetic"]
            if "metrics" in outputs[name]:
                metrics[name] = outputs[name]["metrics"] | ({STAGE_DATA: own} if own is not None else {})
            if outputs[name].get("report"):
                note = f"Data: {own['name']}{' (synthetic)' if own['synthetic'] else ''}.\n\n" if own else ""
                reports.append(f"## {name}\n\n{note}{outputs[name]['report']}\n")
        uses_recipe_data = any(STAGE_DATA not in s for s in self.resolved["stages"].values())
        if uses_recipe_data and (_data_key(self.resolved["data"]) in self._datasets
                                 or any("metrics" in o for o in outputs.values())):
            metrics["data"] = _data_record(self.dataset())
            synthetic = synthetic or metrics["data"]["synthetic"]
        if self.rank == 0:
            write_json(self.run_dir / "metrics.json", metrics)
            header = f"# {self.resolved['name']}\n\n"
            if synthetic:
                header += "**Synthetic data: not results on real handwriting.**\n\n"
            atomic_write(self.run_dir / "report.md", lambda f: f.write(header + "\n".join(reports)), "w")
        return metrics


def stage_data(resolved: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
    """The dataset stage ``name`` of a resolved recipe reads and where the recipe sets it: the
    stage's own ``data`` at ``stages.<name>.data``, else the recipe's at ``data``."""
    own = resolved["stages"][name].get(STAGE_DATA)
    return (own, f"stages.{name}.{STAGE_DATA}") if own is not None else (resolved["data"], "data")


def stage_datasets(resolved: dict[str, Any], stages: Iterable[str]) -> list[tuple[dict[str, Any], str]]:
    """:func:`stage_data` of ``stages``, each distinct dataset once."""
    found: dict[str, tuple[dict[str, Any], str]] = {}
    for name in stages:
        spec, where = stage_data(resolved, name)
        found.setdefault(_data_key(spec), (spec, where))
    return list(found.values())


def read_dataset(registry: Registry, spec: dict[str, Any], seed: int, where: str) -> WriterDataset:
    """The dataset of a resolved ``spec``, read; its factory's ``ValueError`` (no images, an unknown
    layout) is an :class:`HvkitError` naming ``where`` in the recipe."""
    try:
        data = build(registry, "dataset", spec, seed=seed)
    except ValueError as exc:
        raise HvkitError(f"{where} ({spec['name']}): {exc}") from exc
    if not isinstance(data, WriterDataset):
        raise HvkitError(f"dataset {spec['name']!r} returned {type(data).__name__}, not a WriterDataset")
    return data


def _data_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def _data_record(data: WriterDataset) -> dict[str, Any]:
    """What ``metrics.json`` says of a dataset: its name, whether it is synthetic, and its own info."""
    return {"name": data.name, "synthetic": bool(data.synthetic), **data.info}


def run(recipe_path: str | Path | None, overrides: Iterable[str] = (), run_dir: str | Path | None = None,
        resume: str | Path | None = None, device: str | None = None,
        registry: Registry | None = None, console: Callable[[str], None] = print) -> Path:
    """Run a recipe (or resume the run in ``resume``); returns the run directory."""
    registry = registry or get_registry()
    overrides = list(overrides)
    if resume is not None:
        run_path = Path(resume)
        stored = run_path / RESOLVED
        if not stored.is_file():
            raise HvkitError(f"--resume {run_path}: not a run directory (no {RESOLVED})")
        resolved = validate(yaml.safe_load(stored.read_text()), registry, str(stored))
        if overrides:
            raise HvkitError("--resume continues a run exactly as it was; --set is not allowed with it")
    else:
        if recipe_path is None:
            raise HvkitError("a recipe file is required")
        resolved = prepare(recipe_path, overrides, registry)
    device_obj = select_device(device or resolved["device"])
    distributed.init(device_obj)
    rank, _, _ = distributed.world()
    if resume is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        default = Path("runs") / f"{resolved['name']}-{stamp}"
        run_path = Path(distributed.broadcast_object(str(run_dir if run_dir is not None else default)))
        fresh(run_path)
        distributed.barrier()
    runner = Run(resolved, run_path, registry, device_obj, resume is not None, console)
    if resume is None:
        runner.read_data()  # before the run directory exists: a broken dataset leaves nothing behind
        if rank == 0:
            run_path.mkdir(parents=True, exist_ok=True)
    with holding(run_path, "hvkit run", None if resume is not None else functools.partial(fresh, run_path)), \
            stop_record.recorded(run_path):
        if resume is not None:
            runner.read_data()
        elif rank == 0:
            atomic_write(run_path / RESOLVED, lambda f: yaml.safe_dump(resolved, f, sort_keys=False), "w")
            write_json(run_path / "environment.json", environment(resolved, registry))
        distributed.barrier()
        runner.console(f"run directory: {run_path}")  # rank 0's alone, as every line of the run
        metrics = execute_stopping_cleanly(runner, frozenset(), f"hvkit run --resume {run_path} continues")
    distributed.shutdown()
    runner.console(summary(metrics))
    return run_path


class RunExists(HvkitError):
    """A new run's directory already holds a run."""


def fresh(run_dir: Path) -> None:
    """:class:`RunExists` when ``run_dir`` holds a run: checked before a new run reads its data, and again
    once it holds the directory's lock (another process may have made a run there meanwhile)."""
    if (run_dir / RESOLVED).exists():
        raise RunExists(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")


def execute_stopping_cleanly(runner: Run, rerun: frozenset[str], again: str) -> dict[str, Any]:
    """``runner.execute(rerun)``; a SIGINT or SIGTERM that stops it at once (outside a training loop, or
    a second one) is an :class:`Interrupted` naming the signal, what is kept and ``again``."""
    try:
        with terminate_as_interrupt():
            return runner.execute(rerun)
    except KeyboardInterrupt as exc:
        received = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        raise Interrupted(f"{received.name}: the completed stages and the last checkpoint are kept; {again}",
                          128 + received.value) from None


def reevaluate(run_dir: Path, stages: list[str], overrides: list[str], device: str | None = None,
               registry: Registry | None = None, console: Callable[[str], None] = print) -> dict[str, Any]:
    """Re-run ``stages`` of a finished run (with ``overrides``); other stages must be complete.

    The stored recipe is kept; the overrides used are recorded in ``reevaluations.jsonl``.
    """
    registry = registry or get_registry()
    stored = run_dir / RESOLVED
    if not stored.is_file():
        raise HvkitError(f"{run_dir}: not a run directory (no {RESOLVED})")
    with holding(run_dir, "hvkit eval"):
        return _reevaluate(run_dir, stored, stages, overrides, device, registry, console)


def _reevaluate(run_dir: Path, stored: Path, stages: list[str], overrides: list[str], device: str | None,
                registry: Registry, console: Callable[[str], None]) -> dict[str, Any]:
    recipe = apply_overrides(yaml.safe_load(stored.read_text()), overrides)
    resolved = validate(recipe, registry, str(stored))
    unknown = [s for s in stages if s not in resolved["stages"]]
    if unknown or not stages:
        raise HvkitError(f"{run_dir}: no stage {unknown[0] if unknown else '(none given)'}; "
                         f"stages: {', '.join(resolved['stages'])}")
    missing = [n for n in resolved["stages"] if n not in stages
               and not (run_dir / "stages" / n / "outputs.json").is_file()]
    if missing:
        raise HvkitError(f"{run_dir}: stage {missing[0]!r} has not completed; finish the run with --resume first")
    device_obj = select_device(device or resolved["device"])
    runner = Run(resolved, run_dir, registry, device_obj, True, console)
    runner.read_data(frozenset(stages))
    metrics = execute_stopping_cleanly(runner, frozenset(stages), "hvkit eval runs them again")
    with open(run_dir / "reevaluations.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": stages,
                            "overrides": overrides}) + "\n")
    console(summary(metrics))
    return metrics


def verification_rows(metrics: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(stage, verifier, its metrics)`` of every verifier a run's ``metrics.json`` scored, in run order."""
    rows = []
    for stage, values in metrics.items():
        verification = values.get("verification") if isinstance(values, dict) else None
        if not isinstance(verification, dict):
            continue
        rows += [(stage, verifier, v) for verifier, v in verification.items() if isinstance(v, dict) and "roc_auc" in v]
    return rows


PROBES = ("knn_probe", "linear_probe")
"""The writer-identification evaluators whose accuracy the headline shows."""


def identification_rows(metrics: dict[str, Any]) -> list[tuple[str, dict[str, float | None]]]:
    """``(stage, {probe: accuracy})`` of every stage of a run's ``metrics.json`` that ran a probe of
    :data:`PROBES`, in run order; None for a probe the stage did not run or skipped."""
    rows = []
    for stage, values in metrics.items():
        if isinstance(values, dict) and any(isinstance(values.get(probe), dict) for probe in PROBES):
            rows.append((stage, {probe: (values.get(probe) or {}).get("accuracy") for probe in PROBES}))
    return rows


def set_rows(metrics: dict[str, Any]) -> list[tuple[str, dict[int, dict[str, Any]]]]:
    """``(stage, {k: metrics of k known against k questioned})`` of every stage of a run's ``metrics.json``
    that ran ``set_verification``, in run order; sizes that had trials only."""
    rows = []
    for stage, values in metrics.items():
        found = values.get("set_verification") if isinstance(values, dict) else None
        if isinstance(found, dict):
            sizes = {int(key[1:]): v for key, v in found.items()
                     if key[:1] == "k" and key[1:].isdigit() and isinstance(v, dict) and v.get("trials")}
            rows.append((stage, dict(sorted(sizes.items()))))
    return rows


def open_set_rows(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(stage, its open_set metrics)`` of every stage of a run's ``metrics.json`` that ran ``open_set`` and
    was not skipped, in run order."""
    return [(stage, values["open_set"]) for stage, values in metrics.items()
            if isinstance(values, dict) and isinstance(values.get("open_set"), dict) and "rank1" in values["open_set"]]


def _shown(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "  -   "


def summary(metrics: dict[str, Any]) -> str:
    """The headline numbers of a run: accuracy, ROC AUC and EER per stage and verifier, then each stage's
    writer-identification accuracy (k-NN vote, linear probe), its open-set identification and its k-against-k
    verification."""
    rows, probes, sets = verification_rows(metrics), identification_rows(metrics), set_rows(metrics)
    open_set = open_set_rows(metrics)
    stage_width = max([22, *(len(stage) for stage, *_ in rows + probes + sets + open_set)])
    verifier_width = max([14, *(len(verifier) for _, verifier, _ in rows)])
    lines = ["results:" if rows else "results: (no verification metrics)"]
    for stage, verifier, v in rows:
        lines.append(f"  {stage:<{stage_width}} {verifier:<{verifier_width}} accuracy {_shown(v.get('accuracy'))}  "
                     f"AUC {v['roc_auc']:.4f}  EER {v.get('eer', float('nan')):.4f}")
    if probes:
        lines.append("writer identification, accuracy:")
        lines += [f"  {stage:<{stage_width}} k-NN {_shown(found['knn_probe'])}  linear probe "
                  f"{_shown(found['linear_probe'])}" for stage, found in probes]
    if open_set:
        lines.append("open-set identification (half the writers known), rank 1 / detection and identification "
                     "rate at each false alarm rate:")
        lines += [f"  {stage:<{stage_width}} rank 1 {found['rank1']:.4f}  " + "  ".join(
            f"DIR@{key.rsplit('_', 1)[1]} {value:.4f}" for key, value in found.items() if key.startswith("dir_at_far_"))
            for stage, found in open_set]
    if sets:
        lines.append("k known against k questioned images, accuracy / AUC:")
        lines += [f"  {stage:<{stage_width}} " + (("  ".join(f"k={k} {_shown(v.get('accuracy'))} / {v['roc_auc']:.4f}"
                                                             for k, v in sizes.items())) or "no trials")
                  for stage, sizes in sets]
    return "\n".join(lines)
