"""The pipeline and the shared Trainer, through a throwaway dataset and a throwaway training stage."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F

import hvkit
from hvkit import registry as registry_module
from hvkit import run_lock, stop_record
from hvkit.api import Split, StageOutput, WriterDataset
from hvkit.cli import main
from hvkit.engine import StageContext, TrainConfig, Trainer, load_checkpoint
from hvkit.engine import trainer as trainer_module
from hvkit.engine.trainer import duration, read_log
from hvkit.errors import HvkitError, Interrupted, problems
from hvkit.pipeline import RunExists, fresh, reevaluate, run, select_device

from .conftest import make_registry

INJECT: dict[str, Any] = {"fail_at": None, "nan_at": None, "checkpoint_before_nan": None, "signal_at": None}
"""Faults the stage injects, each ``(stage name, step)``: an exception once when ``trainer.step``
reaches ``fail_at`` (``"end"``: after training), a NaN loss at step ``nan_at``; ``signal_at`` is
``(stage name, step, signals)``: each signal sent to this process once during that step."""


@dataclass
class ToyWriters:
    name: str
    synthetic: bool
    splits: dict[str, Split]
    info: dict[str, Any] = field(default_factory=dict)


def toy_writers(writers: int = 4, per_writer: int = 4, size: int = 4, seed: int = 0) -> WriterDataset:
    """Random uint8 images, one brightness offset per writer (test dataset)."""
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(writers), per_writer)
    images = torch.randint(0, 200, (len(labels), 1, size, size), generator=g, dtype=torch.uint8)
    images += torch.from_numpy(labels * 10).to(torch.uint8).view(-1, 1, 1, 1)
    split = Split(images, labels, [f"w{i}" for i in range(writers)])
    return ToyWriters("toy_writers", True, {"train": split, "test": split}, {"writers": writers})


class TinyTrain:
    """Trains a linear writer classifier with dropout (test stage)."""

    def __init__(self, train: TrainConfig = TrainConfig(
                     epochs=3, optimizer={"name": "SGD", "lr": 0.05, "momentum": 0.9},
                     scheduler={"name": "CosineAnnealingLR", "warmup_steps": 2}, log_every=1, checkpoint_every=3),
                 batch_size: int = 4, init_from: StageOutput | None = None):
        self.config, self.batch_size, self.init_from = train, batch_size, init_from

    def run(self, ctx: StageContext) -> dict[str, Any]:
        data = ctx.dataset.splits["train"]
        x = data.images.float().flatten(1) / 255
        y = torch.from_numpy(data.labels)
        torch.manual_seed(ctx.seed)
        model = nn.Sequential(nn.Dropout(0.2), nn.Linear(x.shape[1], len(data.writers)))
        if self.init_from is not None:
            model.load_state_dict(load_checkpoint(ctx.output_path(self.init_from, "checkpoint"))["modules"]["model"])
        steps = len(y) // self.batch_size
        trainer = Trainer(ctx, {"model": model}, self.config, steps_per_epoch=steps)

        def batches(epoch: int):
            order = torch.randperm(len(y), generator=ctx.generator("epoch", epoch, device=torch.device("cpu")))
            for i in range(steps):
                index = order[i * self.batch_size:(i + 1) * self.batch_size]
                yield x[index], y[index]

        def step(batch, generator):
            inputs, labels = batch
            logits = model(inputs + 0.01 * torch.randn(inputs.shape, generator=generator))
            loss = F.cross_entropy(logits, labels)
            if INJECT["signal_at"] is not None and INJECT["signal_at"][:2] == (ctx.name, trainer.step):
                for sig in INJECT["signal_at"][2]:
                    os.kill(os.getpid(), sig)
                INJECT["signal_at"] = None
            if INJECT["fail_at"] == (ctx.name, trainer.step):
                INJECT["fail_at"] = None
                raise RuntimeError("injected failure")
            if INJECT["nan_at"] == (ctx.name, trainer.step + 1):
                if trainer.checkpoint_path.is_file():
                    INJECT["checkpoint_before_nan"] = trainer.checkpoint_path.read_bytes()
                loss = loss * float("nan")
            return loss, {"accuracy": (logits.argmax(1) == labels).float().mean()}

        last = trainer.fit(batches, step)
        if INJECT["signal_at"] is not None and INJECT["signal_at"][:2] == (ctx.name, "end"):
            os.kill(os.getpid(), INJECT["signal_at"][2][0])
        if INJECT["fail_at"] == (ctx.name, "end"):
            INJECT["fail_at"] = None
            raise RuntimeError("injected failure")
        return {"checkpoint": ctx.relative(trainer.checkpoint_path),
                "metrics": {"final_loss": last["loss"], "accuracy": last["accuracy"], "steps": trainer.step},
                "report": f"trained {trainer.step} steps"}


RECIPE = """
name: tiny
seed: 5
data: {name: toy_writers}
stages:
  pre: {stage: tiny_train, train: {epochs: 1}}
  train: {stage: tiny_train, init_from: pre}
"""


def toy_registry():
    return make_registry(dataset={"toy_writers": toy_writers}, stage={"tiny_train": TinyTrain})


@pytest.fixture
def registry():
    return toy_registry()


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run of RECIPE, shared by the tests that compare against it or read it."""
    folder = tmp_path_factory.mktemp("straight")
    (folder / "tiny.yaml").write_text(RECIPE, encoding="utf-8")
    lines = execute(folder / "tiny.yaml", folder / "run", toy_registry())
    return folder / "run", lines


@pytest.fixture
def inject(monkeypatch):
    for key in INJECT:
        monkeypatch.setitem(INJECT, key, None)
    return INJECT


def execute(recipe: Path, run_dir: Path, registry, **kwargs) -> list[str]:
    lines: list[str] = []
    run(recipe, run_dir=run_dir, registry=registry, device="cpu", console=lines.append, **kwargs)
    return lines


def losses(run_dir: Path, stage: str) -> list[tuple[int, float, float]]:
    return [(row["step"], row["loss"], row["lr"]) for row in read_log(run_dir / "stages" / stage / "log.jsonl")]


@pytest.mark.parametrize("fail_at, resumed_at", [
    (("train", 7), 6),  # the last checkpoint is mid-epoch (4 steps an epoch, one every 3)
    (("train", 2), None),  # before the first checkpoint: the stage starts again
    (("train", "end"), 12),  # after the final checkpoint, before the stage wrote its outputs
    (("pre", 3), None),  # in the first stage
])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, recipe, registry, inject, straight, fail_at,
                                                   resumed_at):
    straight, broken = straight[0], tmp_path / "broken"
    inject["fail_at"] = fail_at
    with pytest.raises(RuntimeError, match="injected failure"):
        execute(recipe, broken, registry)
    stage = fail_at[0]
    assert not (broken / "stages" / stage / "outputs.json").exists()
    if resumed_at is not None:
        assert load_checkpoint(broken / "stages" / stage / "last.pt")["step"] == resumed_at

    lines: list[str] = []
    run(None, resume=broken, registry=registry, device="cpu", console=lines.append)
    assert ("[pre] complete, skipped" in lines) == (stage == "train")
    assert (f"[{stage}] resumed at step {resumed_at}" in lines) == (resumed_at is not None)

    for name in ("pre", "train"):
        a = load_checkpoint(straight / "stages" / name / "last.pt")
        b = load_checkpoint(broken / "stages" / name / "last.pt")
        for key in a["modules"]["model"]:
            assert torch.equal(a["modules"]["model"][key], b["modules"]["model"][key]), (name, key)
        assert a["step"] == b["step"] == (4 if name == "pre" else 12)
        assert losses(straight, name) == losses(broken, name)
    assert json.loads((straight / "metrics.json").read_text()) == json.loads((broken / "metrics.json").read_text())


@pytest.mark.parametrize("sig, during", [(signal.SIGINT, 4), (signal.SIGTERM, 4), (signal.SIGINT, 11)])
def test_a_signal_ends_the_step_saves_there_and_resumes_to_the_same_result(tmp_path, recipe, registry, inject,
                                                                         straight, sig, during):
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    broken = tmp_path / "broken"
    inject["signal_at"] = ("train", during, [sig])  # during step 5 (checkpoints fall every 3 steps) or the last
    with pytest.raises(Interrupted) as info:
        execute(recipe, broken, registry)
    assert str(info.value) == (f"stage train: {sig.name} at step {during + 1}/12, checkpoint saved there; hvkit run "
                               f"--resume {broken} continues to the uninterrupted result")
    assert info.value.exit_code == 128 + sig.value
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before
    assert load_checkpoint(broken / "stages" / "train" / "last.pt")["step"] == during + 1
    assert not (broken / "stages" / "train" / "outputs.json").exists()
    lines: list[str] = []
    run(None, resume=broken, registry=registry, device="cpu", console=lines.append)
    assert f"[train] resumed at step {during + 1}" in lines
    a, b = (load_checkpoint(folder / "stages" / "train" / "last.pt") for folder in (straight[0], broken))
    assert all(torch.equal(a["modules"]["model"][key], b["modules"]["model"][key]) for key in a["modules"]["model"])
    assert losses(straight[0], "train") == losses(broken, "train")


def status(run_dir: Path) -> list[str]:
    result = CliRunner().invoke(main, ["status", str(run_dir)])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def status_json(*paths: Path) -> list[dict]:
    result = CliRunner().invoke(main, ["status", "--json", *map(str, paths)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("change", ["module", "optimizer"])
def test_a_checkpoint_that_does_not_fit_the_stage_is_one_line_and_kept(tmp_path, recipe, registry, inject, change):
    """A mid-stage checkpoint from another version of the code (a module's keys, an optimiser state's shape)
    is refused with one line naming it and what to do; the file stays."""
    stopped = tmp_path / "stopped"
    inject["signal_at"] = ("train", 4, [signal.SIGINT])
    with pytest.raises(Interrupted):
        execute(recipe, stopped, registry)
    path = stopped / "stages" / "train" / "last.pt"
    state = torch.load(path, weights_only=True)
    if change == "module":
        next(iter(state["modules"].values()))["renamed.weight"] = torch.zeros(1)
    else:
        momentum = next(s for s in state["optimizer"]["state"].values() if s["momentum_buffer"].dim() > 1)
        momentum["momentum_buffer"] = momentum["momentum_buffer"].reshape(-1)  # SGD's, of a weight matrix
    torch.save(state, path)
    kept = path.read_bytes()
    with pytest.raises(HvkitError) as info:
        run(None, resume=stopped, registry=registry, device="cpu", console=lambda _: None)
    message = str(info.value)
    assert message.startswith(f"stage train: {path} does not fit the stage (")
    assert message.endswith("): was it written by another version of hvkit or of a plugin? Move it away and the "
                            "same command starts the stage again")
    said = "Unexpected key(s)" if change == "module" else "the optimiser's 'momentum_buffer' of a parameter"
    assert said in message
    assert "\n" not in message and path.read_bytes() == kept


def test_status_says_where_a_run_stands(tmp_path, recipe, registry, inject):
    """Each stage complete, at its checkpoint (step, total, last logged loss) or not started; then why the
    last hvkit run stopped and the command that continues the run, or its results."""
    early, stopped = tmp_path / "early", tmp_path / "stopped"
    inject["fail_at"] = ("pre", 2)  # before the first checkpoint
    with pytest.raises(RuntimeError, match="injected failure"):
        execute(recipe, early, registry)
    failed = stop_record.read(early)
    assert (failed.error, failed.interrupted) == (["RuntimeError: injected failure"], False)
    assert status(early) == [f"{early}: recipe tiny", "  pre    not started", "  train  not started",
                             f"last run failed ({failed.time}): RuntimeError: injected failure",
                             f"stopped, 2 of 2 stages left: hvkit run --resume {early} continues"]
    inject["fail_at"], inject["signal_at"] = None, ("train", 4, [signal.SIGINT])
    with pytest.raises(Interrupted):
        execute(recipe, stopped, registry)
    pre = json.loads((stopped / "stages" / "pre" / "outputs.json").read_text())
    last = read_log(stopped / "stages" / "train" / "log.jsonl")[-1]
    interrupted = stop_record.read(stopped)
    assert status(stopped) == [
        f"{stopped}: recipe tiny",
        f"  pre    complete in {duration(pre['seconds'])} (final loss {pre['metrics']['final_loss']:.4g}, "
        f"{pre['metrics']['steps']} steps)",
        f"  train  at step 5/12 (checkpoint), loss {last['loss']:.4g} at step {last['step']}",
        f"last run interrupted ({interrupted.time}): {interrupted.error[0]}",
        f"stopped, 1 of 2 stages left: hvkit run --resume {stopped} continues"]
    assert interrupted.interrupted and interrupted.error[0].startswith("stage train: SIGINT at step 5/12")
    assert status_json(stopped) == [{
        "run_dir": str(stopped), "recipe": "tiny",
        "stages": [{"name": "pre", "complete": True, "state": status(stopped)[1].split(None, 1)[1]},
                   {"name": "train", "complete": False, "state": status(stopped)[2].split(None, 1)[1]}],
        "running": None, "stages_left": 1,
        "stopped_by": {"time": interrupted.time, "error": interrupted.error, "interrupted": True},
        "synthetic": None, "results": None, "identification": None, "sets": None, "open_set": None}]
    run(None, resume=stopped, registry=registry, device="cpu", console=lambda _: None)
    assert not (stopped / stop_record.STOPPED).exists()
    lines = status(stopped)
    assert lines[2].startswith("  train  complete in ")
    assert lines[3:] == ["data: SYNTHETIC (not real handwriting)", "results: (no verification metrics)"]
    (finished,) = status_json(stopped)
    assert (finished["stages_left"], finished["running"], finished["stopped_by"], finished["synthetic"],
            finished["results"], finished["identification"], finished["sets"], finished["open_set"]) == (
        0, None, None, True, [], [], [], [])
    (tmp_path / "notes.txt").write_text("a file beside the runs")
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["status", str(early), str(tmp_path / "empty"), str(tmp_path / "notes.txt"),
                                       str(stopped)])  # hvkit status runs/*
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {folder}: not a run directory (no recipe.resolved.yaml)"
                                          for folder in (tmp_path / "empty", tmp_path / "notes.txt")]
    assert result.stdout.splitlines() == status(early) + [""] + lines
    assert status(tmp_path) == status(early) + [""] + lines  # a folder of runs: each run in it


HOLD = """
import sys, time
from pathlib import Path
from hvkit.run_lock import RunLock
lock = RunLock(Path(sys.argv[1]), sys.argv[2])
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_run_directory_in_use_is_refused_and_status_names_who_holds_it(tmp_path, recipe, registry, inject):
    """Another process working in a run directory (here one that holds its lock): ``--resume`` and
    ``hvkit eval`` are refused with one line naming it, ``hvkit status`` says the first unfinished
    stage is running; once that process dies (SIGKILL: the kernel releases its lock) the run is
    stopped and resumes."""
    stopped = tmp_path / "stopped"
    inject["signal_at"] = ("train", 4, [signal.SIGINT])
    with pytest.raises(Interrupted):
        execute(recipe, stopped, registry)
    at_step_5 = status(stopped)[2].strip().removeprefix("train  ")
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(stopped), "hvkit run"], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        holder = json.loads((stopped / ".lock").read_text())
        assert (holder["pid"], holder["command"]) == (other.pid, "hvkit run")
        who = f"hvkit run (pid {other.pid} on {holder['host']}, since {holder['since']})"
        last = read_log(stopped / "stages" / "train" / "log.jsonl")[-1]
        lines = status(stopped)
        left = duration((12 - 5) / last["steps_per_s"])  # at the speed of the last line logged
        assert re.fullmatch(rf"  train  running, at step 5/12, loss {last['loss']:.4g}, about {left} left "
                            rf"\(logged \d+ s ago\)", lines[2]), lines[2]
        assert lines[3:] == [f"running: {who}"]
        assert status_json(stopped)[0]["running"] == holder
        refusal = f"{stopped} is in use by {who}; wait for it to end (kill -INT {other.pid} stops it at the next step)"
        with pytest.raises(HvkitError) as info:
            run(None, resume=stopped, registry=registry, device="cpu", console=lambda _: None)
        assert str(info.value) == refusal
        with pytest.raises(HvkitError) as info:
            reevaluate(stopped, ["train"], [], device="cpu", registry=registry, console=lambda _: None)
        assert str(info.value) == refusal
        assert load_checkpoint(stopped / "stages" / "train" / "last.pt")["step"] == 5
    finally:
        other.kill()
        other.wait()
    interrupted = stop_record.read(stopped)  # the refused resume left the record of the SIGINT
    assert status(stopped)[2:] == [f"  train  {at_step_5}",
                                   f"last run interrupted ({interrupted.time}): {interrupted.error[0]}",
                                   f"stopped, 1 of 2 stages left: hvkit run --resume {stopped} continues"]
    lines: list[str] = []
    run(None, resume=stopped, registry=registry, device="cpu", console=lines.append)
    assert "[train] resumed at step 5" in lines


def test_a_file_system_without_locks_runs_with_a_warning(tmp_path, recipe, registry, monkeypatch, caplog):
    """Some network file systems refuse flock (ENOLCK): the run goes on unguarded and says so once."""
    def no_locks(file, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    execute(recipe, tmp_path / "run", registry)
    assert [r.getMessage() for r in caplog.records if r.name == "hvkit"] == [
        f"{tmp_path / 'run'}: the file system has no file locks; nothing keeps a second hvkit process out of this "
        "run directory"]
    assert run_lock.holder(tmp_path / "run") is None
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_an_exclusive_block_runs_unguarded_without_locks(tmp_path, monkeypatch):
    """Where flock is refused with ENOLCK the block of ``run_lock.exclusive`` runs anyway; any other error
    is raised (its waiting: tests/core/test_run_lock.py)."""
    order = []

    def refuse(error):
        def flock(file, operation):
            raise OSError(error, os.strerror(error))
        return flock

    monkeypatch.setattr(run_lock.fcntl, "flock", refuse(errno.ENOLCK))
    with run_lock.exclusive(tmp_path / "summary.lock"):
        order.append("unguarded")
    monkeypatch.setattr(run_lock.fcntl, "flock", refuse(errno.EBADF))
    with pytest.raises(OSError, match="Bad file descriptor"):
        with run_lock.exclusive(tmp_path / "summary.lock"):
            pytest.fail("the block ran")
    assert order[-1] == "unguarded"


def test_a_check_under_the_lock_refuses_and_lets_go(tmp_path):
    """A new run checks under the lock that no process made a run in its directory meanwhile: the
    refusal is raised and the lock released."""
    (tmp_path / "recipe.resolved.yaml").write_text("name: made meanwhile\n")
    with pytest.raises(RunExists, match="already holds a run"):
        with run_lock.holding(tmp_path, "hvkit run", functools.partial(fresh, tmp_path)):
            pytest.fail("the block ran")
    assert run_lock.holder(tmp_path) is None
    with run_lock.holding(tmp_path, "hvkit eval"):
        assert run_lock.holder(tmp_path).command == "hvkit eval"


def test_a_lock_file_that_cannot_be_opened_is_one_line(tmp_path):
    with pytest.raises(HvkitError) as info:
        run_lock.RunLock(tmp_path / "gone", "hvkit run").acquire()
    assert str(info.value) == (f"{tmp_path / 'gone' / '.lock'}: cannot open the run directory's lock file (No such "
                               "file or directory); hvkit writes in a run directory while it works")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_interrupts_at_once_keeping_the_last_checkpoint(tmp_path, recipe, registry, inject, sig):
    inject["signal_at"] = ("train", 4, [signal.SIGINT, sig])
    registry_module.set_registry(registry)
    result = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 128 + sig.value, result.output
    assert result.stderr == (f"error: {sig.name}: the completed stages and the last checkpoint are kept; "
                             f"hvkit run --resume {tmp_path / 'run'} continues\n")
    assert load_checkpoint(tmp_path / "run" / "stages" / "train" / "last.pt")["step"] == 3
    assert (tmp_path / "run" / "stages" / "pre" / "outputs.json").is_file()


def test_a_sigterm_outside_training_stops_the_run_with_what_it_keeps(tmp_path, recipe, registry, inject):
    before = signal.getsignal(signal.SIGTERM)
    inject["signal_at"] = ("train", "end", [signal.SIGTERM])  # after the loop, before the stage's outputs
    with pytest.raises(Interrupted) as info:
        execute(recipe, tmp_path / "run", registry)
    assert str(info.value) == (f"SIGTERM: the completed stages and the last checkpoint are kept; hvkit run --resume "
                               f"{tmp_path / 'run'} continues")
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before
    assert load_checkpoint(tmp_path / "run" / "stages" / "train" / "last.pt")["step"] == 12
    assert not (tmp_path / "run" / "stages" / "train" / "outputs.json").exists()


def test_a_signal_in_a_reevaluation_says_how_to_finish_it(tmp_path, registry, inject, straight):
    copy = tmp_path / "copy"
    shutil.copytree(straight[0], copy)
    inject["signal_at"] = ("train", "end", [signal.SIGINT])
    with pytest.raises(Interrupted) as info:
        reevaluate(copy, ["train"], [], device="cpu", registry=registry, console=lambda _: None)
    assert str(info.value) == "SIGINT: the completed stages and the last checkpoint are kept; hvkit eval runs them again"
    assert info.value.exit_code == 130


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, recipe, registry, inject):
    inject["nan_at"] = ("train", 8)
    registry_module.set_registry(registry)
    result = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: stage train: loss is nan at step 8; stopped (last good checkpoint ")
    checkpoint = tmp_path / "run" / "stages" / "train" / "last.pt"
    assert checkpoint.read_bytes() == inject["checkpoint_before_nan"]
    assert load_checkpoint(checkpoint)["step"] == 6
    assert not (tmp_path / "run" / "stages" / "train" / "outputs.json").exists()


def test_nan_before_any_checkpoint_says_so(tmp_path, recipe, registry, inject):
    inject["nan_at"] = ("pre", 1)
    with pytest.raises(HvkitError, match="stage pre: loss is nan at step 1; stopped .no checkpoint was written yet"):
        execute(recipe, tmp_path / "run", registry)


def test_run_directory_holds_everything_to_reproduce_the_run(straight):
    run_dir, lines = straight
    assert any("SYNTHETIC DATA (toy_writers)" in line for line in lines)

    resolved = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    train_defaults = {"epochs": 3, "optimizer": {"name": "SGD", "lr": 0.05, "momentum": 0.9},
                      "scheduler": {"name": "CosineAnnealingLR", "warmup_steps": 2}, "loss_lr": None,
                      "grad_clip": None, "amp": True, "amp_dtype": "bfloat16", "channels_last": True,
                      "sync_batchnorm": True, "log_every": 1, "checkpoint_every": 3, "max_steps": None,
                      "weight_decay_end": None, "weight_decay_1d": True,
                      "frozen_epochs": {}, "lr_scale": {}, "ema": None, "ema_warmup": True, "monitor_every": None}
    assert resolved == {
        "name": "tiny", "seed": 5, "device": "auto",
        "data": {"name": "toy_writers", "writers": 4, "per_writer": 4, "size": 4},
        "model": {},
        "stages": {"pre": {"stage": "tiny_train", "train": {**train_defaults, "epochs": 1}, "batch_size": 4,
                           "init_from": None},
                   "train": {"stage": "tiny_train", "init_from": "pre", "train": train_defaults, "batch_size": 4}},
    }

    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["seed"] == 5
    assert environment["versions"]["hvkit"] == hvkit.__version__
    assert environment["versions"]["torch"] == torch.__version__
    assert environment["plugins_used"] == {"hvkit-test": "1.0"}

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["recipe"] == "tiny"
    assert metrics["data"] == {"name": "toy_writers", "synthetic": True, "writers": 4}
    assert metrics["train"]["steps"] == 12 and metrics["pre"]["steps"] == 4
    assert 0 <= metrics["train"]["accuracy"] <= 1

    report = (run_dir / "report.md").read_text()
    assert report.startswith("# tiny\n") and "Synthetic data" in report
    assert "## pre\n\ntrained 4 steps" in report and "## train\n\ntrained 12 steps" in report

    outputs = json.loads((run_dir / "stages" / "train" / "outputs.json").read_text())
    assert outputs["checkpoint"] == "stages/train/last.pt"
    assert outputs["metrics"] == metrics["train"]
    log = read_log(run_dir / "stages" / "train" / "log.jsonl")
    assert [row["step"] for row in log] == list(range(1, 13))
    assert {"epoch", "loss", "lr", "steps_per_s", "accuracy"} <= set(log[0])
    assert [row["epoch"] for row in log] == [0] * 4 + [1] * 4 + [2] * 4


def test_same_recipe_and_seed_give_the_same_weights(tmp_path, recipe, registry, straight):
    execute(recipe, tmp_path / "b", registry)
    a = load_checkpoint(straight[0] / "stages" / "train" / "last.pt")["modules"]["model"]
    b = load_checkpoint(tmp_path / "b" / "stages" / "train" / "last.pt")["modules"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_refuses_an_existing_run_and_overrides_on_resume(tmp_path, recipe, registry):
    execute(recipe, tmp_path / "run", registry, overrides=["stages.train.train.epochs=1"])
    with pytest.raises(HvkitError, match="already holds a run; use --resume"):
        execute(recipe, tmp_path / "run", registry)
    with pytest.raises(HvkitError, match="--set is not allowed"):
        run(None, ["seed=1"], resume=tmp_path / "run", registry=registry, device="cpu")
    with pytest.raises(HvkitError, match="not a run directory"):
        run(None, resume=tmp_path, registry=registry, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tmp_path, recipe, registry):
    registry_module.set_registry(registry)
    result = CliRunner().invoke(main, ["run", str(recipe), "--run-dir", str(tmp_path / "run"), "--device", "cuda"])
    assert result.exit_code == 2
    assert result.stderr == "error: device cuda requested but CUDA is not available; use --device cpu\n"


def test_after_step_follows_each_optimiser_step_and_precedes_its_checkpoint(stage_context):
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(epochs=1, optimizer={"name": "SGD", "lr": 0.1}, amp=False, channels_last=False,
                         checkpoint_every=2)
    seen: list[tuple[int, torch.Tensor]] = []

    def trainer(ctx: StageContext) -> Trainer:
        torch.manual_seed(1)
        model, shadow = nn.Linear(3, 1), nn.Linear(3, 1).requires_grad_(False)  # shadow: checkpointed, not trained
        return Trainer(ctx, {"model": model, "shadow": shadow}, config, steps_per_epoch=5)

    def fit(trainer: Trainer, fail_at: int | None = None) -> None:
        model, shadow = trainer.modules["model"], trainer.modules["shadow"]

        def after_step(done: int) -> None:
            seen.append((done, model.weight.detach().clone()))
            shadow.load_state_dict(model.state_dict())
            if done == fail_at:
                raise RuntimeError("injected failure")

        trainer.fit(lambda epoch: iter(range(5)), lambda batch, g: model(x).pow(2).mean(), after_step)

    first = trainer(stage_context)
    weights = [first.modules["model"].weight.detach().clone()]
    with pytest.raises(RuntimeError, match="injected failure"):
        fit(first, fail_at=3)
    assert [done for done, _ in seen] == [1, 2, 3]
    weights += [w for _, w in seen]
    assert all(not torch.equal(a, b) for a, b in zip(weights, weights[1:]))  # each call follows a new step
    assert first.modules["shadow"].weight.grad is None
    assert {id(p) for g in first.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in first.modules["model"].parameters()}
    state = load_checkpoint(first.checkpoint_path)
    assert state["step"] == 2 and torch.equal(state["modules"]["shadow"]["weight"], weights[2])

    seen.clear()
    resumed = trainer(replace(stage_context, resume=True))
    fit(resumed)
    assert [done for done, _ in seen] == [3, 4, 5]
    final = load_checkpoint(resumed.checkpoint_path)["modules"]
    assert torch.equal(final["shadow"]["weight"], final["model"]["weight"])


def test_the_monitor_runs_after_every_nth_epoch_and_the_last_step_in_eval_mode_without_gradients(stage_context):
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

    def fit(monitor_every: int | None, max_steps: int | None = None) -> tuple[list, list[dict[str, float]], Trainer]:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(3, 1), nn.Dropout(0.5))
        config = TrainConfig(epochs=5, optimizer={"name": "SGD", "lr": 0.1}, amp=False, channels_last=False,
                             log_every=4, monitor_every=monitor_every, max_steps=max_steps)
        trainer = Trainer(replace(stage_context, name=f"fit{monitor_every}{max_steps}"),
                          {"model": model}, config, steps_per_epoch=3)
        calls = []

        def monitor() -> dict[str, float]:
            calls.append((trainer.step, model.training, torch.is_grad_enabled()))
            return {"val_auc": torch.tensor(trainer.step / 100, dtype=torch.float64)}

        trainer.fit(lambda epoch: iter(range(3)), lambda batch, g: model(x).pow(2).mean(),
                    monitor=monitor if monitor_every else None)
        assert model.training  # restored
        return calls, read_log(trainer.log_path), trainer

    calls, rows, _ = fit(2)
    assert calls == [(6, False, False), (12, False, False), (15, False, False)]  # epochs 2 and 4, then the end
    assert [(row["step"], row.get("val_auc")) for row in rows] == [
        (4, None), (6, 0.06), (8, None), (12, 0.12), (15, 0.15)]  # a monitored step is logged as well
    plain = fit(None)[1]
    assert [row["loss"] for row in plain] == [row["loss"] for row in rows if row["step"] % 4 == 0 or row["step"] == 15]
    assert fit(2, max_steps=7)[0] == [(6, False, False), (7, False, False)]
    with pytest.raises(HvkitError, match="train.monitor_every is set but this stage offers no monitor"):
        Trainer(stage_context, {"model": nn.Linear(3, 1)}, TrainConfig(monitor_every=1, amp=False),
                steps_per_epoch=3).fit(lambda epoch: iter(range(3)), lambda batch, g: x.sum())
    with pytest.raises(ValueError, match="train.monitor_every=0 must be >= 1"):
        TrainConfig(monitor_every=0)


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (89, "89 s"), (90, "2 min"), (5369, "89 min"),
                                           (5370, "1 h 30 min"), (7260, "2 h 1 min")])
def test_duration_is_told_in_the_unit_that_matters(seconds, text):
    assert trainer_module.duration(seconds) == text


def test_progress_lines_tell_the_time_per_step_and_the_time_left(monkeypatch):
    clock = iter([100.0, 130.0, 160.0, 190.0])
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(trainer_module.sys.stderr, "isatty", lambda: False)
    lines: list[str] = []
    ctx = SimpleNamespace(name="pre", is_main=True, log=lines.append)
    progress = trainer_module._Progress(ctx, total=400, initial=100)  # resumed at step 100 at t = 100 s
    progress.update(110, 2.5)
    progress.update(200, 1.25)
    progress.update(400, 1.0)
    assert lines == ["step 110/400 loss 2.5000 (3 s/step, 14 min left)",
                     "step 200/400 loss 1.2500 (0.6 s/step, 2 min left)",
                     "step 400/400 loss 1.0000 (0.3 s/step)"]


BUILT: list[str] = []


def counted(root: str = "full") -> WriterDataset:
    """The toy writers, each read recorded in BUILT; a root other than ``full`` holds no images."""
    BUILT.append(root)
    if root != "full":
        raise ValueError(f"no images under {root}")
    return toy_writers()


def own_data_recipe(folder: Path, root: str) -> Path:
    """RECIPE with the second stage reading its own ``counted`` data at ``root``."""
    path = folder / f"{root}.yaml"
    path.write_text(RECIPE.replace("init_from: pre}", f"init_from: pre, data: {{name: counted, root: {root}}}}}"),
                    encoding="utf-8")
    return path


@pytest.fixture
def counted_registry():
    BUILT.clear()
    return make_registry(dataset={"toy_writers": toy_writers, "counted": counted}, stage={"tiny_train": TinyTrain})


def test_every_dataset_is_read_before_the_first_stage_runs(tmp_path, counted_registry):
    with pytest.raises(HvkitError, match=r"^stages\.train\.data \(counted\): no images under empty$"):
        execute(own_data_recipe(tmp_path, "empty"), tmp_path / "broken", counted_registry)
    assert not (tmp_path / "broken").exists()  # nothing to clear away before running the fixed recipe there
    lines = execute(own_data_recipe(tmp_path, "full"), tmp_path / "good", counted_registry)
    banners = [line for line in lines if "SYNTHETIC" in line]
    assert ["set data.root" in line for line in banners] == [True, False]  # each names where the recipe sets it
    assert "set stages.train.data.root" in banners[1]
    assert lines.index("[pre] tiny_train …") > lines.index(banners[1])
    done = [re.fullmatch(r"\[(\w+)\] done in \d+ s", line) for line in lines if " done in " in line]
    assert [match and match[1] for match in done] == ["pre", "train"]
    assert BUILT == ["empty", "full"]
    run(None, resume=tmp_path / "good", registry=counted_registry, device="cpu", console=lines.append)
    assert BUILT == ["empty", "full"]  # a stage complete in the resumed run is not given its data again


def test_every_broken_dataset_is_reported_at_once(tmp_path, counted_registry):
    """The recipe's data and a stage's own, both broken: one line each, through run and validate --data."""
    path = own_data_recipe(tmp_path, "gone")
    path.write_text(path.read_text().replace("data: {name: toy_writers}", "data: {name: counted, root: empty}"))
    expected = ["data (counted): no images under empty", "stages.train.data (counted): no images under gone"]
    with pytest.raises(HvkitError) as info:
        execute(path, tmp_path / "broken", counted_registry)
    assert [str(problem) for problem in problems(info.value)] == expected
    assert not (tmp_path / "broken").exists()
    registry_module.set_registry(counted_registry)
    result = CliRunner().invoke(main, ["validate", "--data", str(path)])
    assert result.exit_code == 2
    assert result.stderr == "".join(f"error: {path}:{line}\n" for line in expected)


def test_validate_reads_the_data_when_asked(tmp_path, counted_registry):
    registry_module.set_registry(counted_registry)
    empty, full = own_data_recipe(tmp_path, "empty"), own_data_recipe(tmp_path, "full")
    assert CliRunner().invoke(main, ["validate", str(empty)]).exit_code == 0
    assert BUILT == []
    result = CliRunner().invoke(main, ["validate", "--data", str(full), str(empty)])
    assert result.exit_code == 2
    assert result.stdout == f"ok: {full}\n"
    assert result.stderr == f"error: {empty}:stages.train.data (counted): no images under empty\n"
    assert BUILT == ["full", "empty"]


@pytest.mark.parametrize("setting, good, message", [
    ("epochs", 1, "train.epochs=0 must be >= 1"), ("log_every", 1, "train.log_every=0 must be >= 1"),
    ("checkpoint_every", 1, "train.checkpoint_every=0 must be >= 1"), ("max_steps", 1, "train.max_steps=0 must be >= 1"),
    ("loss_lr", 0.0, "train.loss_lr=-0.001 must be >= 0"),
    ("weight_decay_end", 0.0, "train.weight_decay_end=-0.001 must be >= 0"),
    ("grad_clip", 1e-3, "train.grad_clip=0 must be > 0"),
])
def test_train_config_refuses_a_setting_no_loop_can_use(setting, good, message):
    bad = 0 if isinstance(good, int) or setting == "grad_clip" else -1e-3
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.")):
        TrainConfig(**{setting: bad})
    assert getattr(TrainConfig(**{setting: good}), setting) == good


def test_frozen_epochs_may_not_be_negative():
    with pytest.raises(ValueError, match=r"^train\.frozen_epochs\['backbone'\]=-1 must be >= 0$"):
        TrainConfig(frozen_epochs={"head": 0, "backbone": -1})
    assert TrainConfig(frozen_epochs={"backbone": 0}).frozen_epochs == {"backbone": 0}


def test_max_steps_limits_training(tmp_path, recipe, registry):
    execute(recipe, tmp_path / "run", registry, overrides=["stages.train.train.max_steps=5"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]["steps"] == 5
    assert [row["step"] for row in read_log(tmp_path / "run" / "stages" / "train" / "log.jsonl")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("choice, world, gpus, expected", [
    ("cuda", (1, 2), 2, "cuda:1"),
    ("auto", (1, 2), 2, "cuda:1"),
    ("cuda:1", (0, 1), 2, "cuda:1"),
    ("cuda", (2, 3), 2, "device cuda:2 does not exist: this machine has 2 GPU(s); run at most 2 processes (--nproc 2)"),
    ("cuda:3", (0, 1), 2, "device cuda:3 does not exist: this machine has 2 GPU(s); name one that exists"),
    ("cuda:0", (1, 2), 2, "device cuda:0 puts all 2 processes on one GPU; use device cuda (each process takes the "
                          "GPU of its LOCAL_RANK)"),
])
def test_each_process_gets_a_gpu_that_exists(monkeypatch, choice, world, gpus, expected):
    local_rank, world_size = world
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    if expected.startswith("cuda"):
        assert select_device(choice) == torch.device(expected)
    else:
        with pytest.raises(HvkitError) as info:
            select_device(choice)
        assert str(info.value) == expected


@pytest.mark.parametrize("device", ["cuda:x", "cuda1", "gpu"])
def test_a_device_name_torch_cannot_read_is_a_recipe_error(tmp_path, recipe, registry, device):
    with pytest.raises(HvkitError, match=f"device: expected auto, cpu, cuda or cuda:N, got '{device}'$"):
        execute(recipe, tmp_path / "run", registry, overrides=[f"device={device}"])
