"""A recipe under 2 gloo processes on CPU: same metrics as 1 process, and resumable.

The global batch is the same in both runs (each rank takes half of every batch and the
global-batch loss gathers it back), and the backbone uses GroupNorm, per sample, so the runs
compute the same steps without resting on hvkit.sync_batchnorm (test_sync_batchnorm.py checks
that on its own): they agree to float32 reduction order (relative 1e-4 on the loss, 1e-3 on the AUC).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from hvkit import stop_record
from hvkit.engine import load_checkpoint
from hvkit.run_lock import RunLock

RECIPE = Path(__file__).with_name("tiny_ddp.yaml")


def hvkit(args: list[str], nproc: int, tmp_path: Path, extra_env: dict[str, str | None] | None = None,
          check: bool = True) -> subprocess.CompletedProcess:
    """``hvkit ARGS --nproc N`` with a temporary directory of its own, where it must leave nothing but torch's
    compile cache (``torchinductor_USER``, shared by every run): torchrun's log folder is removed whether the
    ranks succeed, fail or are killed."""
    temporary = Path(tempfile.mkdtemp(dir=tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "HVKIT_PLUGINS"}
    env.update({"OMP_NUM_THREADS": "1", "HVKIT_CACHE": str(tmp_path / "cache"), "TMPDIR": str(temporary),
                **(extra_env or {})})
    env = {k: v for k, v in env.items() if v is not None}  # None in extra_env: the variable unset
    done = subprocess.run([sys.executable, "-m", "hvkit", *args, "--nproc", str(nproc)], env=env,
                          capture_output=True, text=True, timeout=400)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert [p.name for p in temporary.iterdir() if not p.name.startswith("torchinductor_")] == []
    return done


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("single")
    hvkit(["run", str(RECIPE), "--run-dir", str(tmp / "run")], 1, tmp)
    return tmp / "run"


def test_two_processes_match_one(single, tmp_path):
    hvkit(["run", str(RECIPE), "--run-dir", str(tmp_path / "run")], 2, tmp_path)
    one, two = metrics(single), metrics(tmp_path / "run")
    assert two["train"]["steps"] == one["train"]["steps"] == 6
    assert two["train"]["final_loss"] == pytest.approx(one["train"]["final_loss"], rel=1e-4)
    auc_one = one["evaluate"]["verification"]["cosine_pair"]["roc_auc"]
    auc_two = two["evaluate"]["verification"]["cosine_pair"]["roc_auc"]
    assert abs(auc_one - auc_two) < 1e-3
    assert sorted(p.name for p in (tmp_path / "run" / "stages" / "train").iterdir()) == \
        ["encoder.pt", "last.pt", "log.jsonl", "outputs.json"]


def test_two_processes_average_the_weights_as_one(tmp_path):
    """``train.ema``: every rank averages the same weights, and the saved encoder is the average."""
    ema = ["--set", "stages.train.train.ema=0.5"]
    for name, nproc in (("one", 1), ("two", 2)):
        hvkit(["run", str(RECIPE), "--run-dir", str(tmp_path / name), *ema], nproc, tmp_path)
    one, two = (load_checkpoint(tmp_path / name / "stages" / "train" / "encoder.pt")["backbone"]
                for name in ("one", "two"))
    average = load_checkpoint(tmp_path / "two" / "stages" / "train" / "last.pt")["ema"]["shadow"]["encoder"]
    raw = load_checkpoint(tmp_path / "two" / "stages" / "train" / "last.pt")["modules"]["encoder"]
    for key, value in two.items():
        torch.testing.assert_close(value, one[key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(value, average[f"backbone.{key}"], rtol=0, atol=0)
    assert any(not torch.allclose(value, raw[f"backbone.{key}"]) for key, value in two.items())


PLUGIN = '''
"""Identity transforms that, once, at their N-th call, interrupt a run (on a given rank, or on each)."""
import os
import signal
import time
from pathlib import Path

from hvkit.api import hookimpl
from hvkit.errors import HvkitError


class Once:
    """Identity transform calling ``act`` at call ``at`` on ``rank`` (every rank if None) unless ``marker``
    exists (each rank then creates its own)."""

    def __init__(self, at: int, marker: str, rank: int | None = None):
        self.at, self.rank, self.calls = at, rank, 0
        self.marker = Path(f"{marker}.{os.environ.get('RANK', '0')}")

    def __call__(self, images, generator):
        self.calls += 1
        if (self.calls == self.at and not self.marker.exists()
                and self.rank in (None, int(os.environ.get("RANK", 0)))):
            self.marker.touch()
            self.act()
        return images


class CrashOnce(Once):
    def act(self):
        raise RuntimeError("simulated crash")


class FailOnce(Once):
    def act(self):
        raise HvkitError(f"simulated failure at call {self.at}")


class SignalOnce(Once):
    """Sends ``signal`` to the launcher (the torchrun agent, this process's parent), as Ctrl-C would,
    then waits long enough for the agent to forward it to every rank; or to this rank alone."""

    def __init__(self, at: int, marker: str, signal: str, to: str, rank: int | None = 0):
        super().__init__(at, marker, rank)
        self.signal, self.to = signal, to

    def act(self):
        os.kill(os.getppid() if self.to == "launcher" else os.getpid(), getattr(signal, self.signal))
        time.sleep(2 if self.to == "launcher" else 0)


@hookimpl
def register_transforms(register):
    register("crash_once", CrashOnce)
    register("fail_once", FailOnce)
    register("signal_once", SignalOnce)
'''


def install_plugin(site: Path) -> None:
    """A throwaway distribution on ``site``: module, METADATA and an ``hvkit`` entry point."""
    site.mkdir(parents=True)
    (site / "hvkit_once_plugin.py").write_text(PLUGIN)
    info = site / "hvkit_once_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hvkit-once-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hvkit]\nonce = hvkit_once_plugin\n")


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("plugin") / "site"
    install_plugin(site)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> subprocess.CompletedProcess:
    """An uninterrupted run in two processes (``run_dir`` is added to the result)."""
    tmp = tmp_path_factory.mktemp("reference")
    done = hvkit(["run", str(RECIPE), "--run-dir", str(tmp / "run")], 2, tmp)
    done.run_dir = tmp / "run"
    return done


def transform(name: str, tmp_path: Path, **settings: object) -> list[str]:
    values = {"name": name, "marker": tmp_path / "marker", **settings}
    return [arg for key, value in values.items() for arg in ("--set", f"stages.train.transform.{key}={value}")]


def test_two_processes_resume_to_the_same_result(reference, plugin_env, tmp_path):
    crashed = tmp_path / "crashed"
    crash = transform("crash_once", tmp_path, at=5)
    done = hvkit(["run", str(RECIPE), "--run-dir", str(crashed), *crash], 2, tmp_path, plugin_env, check=False)
    assert done.returncode != 0 and "simulated crash" in done.stderr
    assert (crashed / "stages" / "train" / "last.pt").is_file()
    assert not (crashed / "stages" / "train" / "outputs.json").exists()
    hvkit(["run", "--resume", str(crashed)], 2, tmp_path, plugin_env)
    assert metrics(crashed)["train"]["final_loss"] == metrics(reference.run_dir)["train"]["final_loss"]
    assert metrics(crashed)["evaluate"]["verification"] == metrics(reference.run_dir)["evaluate"]["verification"]


def test_two_processes_say_things_once(reference):
    """Rank 0 speaks for every rank: each console line and each warning once. And torch has nothing to say
    (the model went channels-last before DDP built its gradient buckets)."""
    out, err = reference.stdout, reference.stderr
    assert out.count("run directory:") == out.count("results:") == out.count("[train] step 6/6") == 1
    assert err.count("cedar_and has no root") == 1
    assert "Warning" not in err, err


def test_without_a_thread_count_torchrun_has_nothing_to_say(tmp_path):
    """hvkit gives the ranks their share of the cores itself, so torchrun does not warn that it set one thread."""
    done = hvkit(["run", str(RECIPE), "--run-dir", str(tmp_path / "run")], 2, tmp_path, {"OMP_NUM_THREADS": None})
    assert "OMP_NUM_THREADS" not in done.stderr and "torch/distributed/run.py" not in done.stderr, done.stderr


@pytest.mark.parametrize("sig, to", [("SIGINT", "launcher"), ("SIGTERM", "rank")])
def test_a_signal_stops_every_rank_at_one_step(reference, plugin_env, tmp_path, sig, to):
    """A signal to the launcher reaches each rank at its own moment, one to rank 0 only reaches no other;
    the ranks agree on one step, save one checkpoint there, exit 128 + the signal's number with one
    line, and resume to the uninterrupted result."""
    stopped = tmp_path / "stopped"
    signal_at_3 = transform("signal_once", tmp_path, at=3, signal=sig, to=to)
    done = hvkit(["run", str(RECIPE), "--run-dir", str(stopped), *signal_at_3], 2, tmp_path, plugin_env, check=False)
    number = 2 if sig == "SIGINT" else 15
    assert done.returncode == 128 + number, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: stage train: {sig} at step 3/6, checkpoint saved there; hvkit run --resume "
                      f"{stopped} continues to the uninterrupted result"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert load_checkpoint(stopped / "stages" / "train" / "last.pt")["step"] == 3
    assert not (stopped / "stages" / "train" / "outputs.json").exists()
    hvkit(["run", "--resume", str(stopped)], 2, tmp_path, plugin_env)
    assert metrics(stopped)["train"]["final_loss"] == metrics(reference.run_dir)["train"]["final_loss"]
    assert metrics(stopped)["evaluate"]["verification"] == metrics(reference.run_dir)["evaluate"]["verification"]


@pytest.mark.parametrize("rank", [1, None])
def test_an_error_is_said_once(plugin_env, tmp_path, rank):
    """An error on one rank, or the same on every rank: one line and its exit code, no traceback from
    the rank whose collective then fails."""
    fail = transform("fail_once", tmp_path, at=3, rank="null" if rank is None else rank)
    done = hvkit(["run", str(RECIPE), "--run-dir", str(tmp_path / "run"), *fail], 2, tmp_path, plugin_env,
                 check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: simulated failure at call 3"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "exitcode" not in done.stderr  # nor torchrun's own line
    stop = stop_record.read(tmp_path / "run")  # by the rank that met it, not rank 0's failed collective
    assert (stop.error, stop.interrupted) == (["simulated failure at call 3"], False)


def test_a_broken_recipe_is_said_once_before_any_process_starts(tmp_path):
    done = hvkit(["run", str(RECIPE), "--run-dir", str(tmp_path / "run"), "--set", "seed=abc",
                  "--set", "stages.train.loss=nosuch"], 2, tmp_path, check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {RECIPE}:seed: expected an int, got 'abc'",
        f"error: {RECIPE}:stages.train.loss.name: unknown loss 'nosuch'; did you mean 'supcon'?"]
    assert not (tmp_path / "run").exists()


def test_a_rank_killed_is_said_by_the_launcher(plugin_env, tmp_path):
    """A rank that dies without a word (SIGKILL, as the kernel's out-of-memory killer sends): the launcher
    names it, what is kept and how to continue, with exit code 128 + 9."""
    run_dir = tmp_path / "run"
    kill = transform("signal_once", tmp_path, at=3, signal="SIGKILL", to="rank", rank=1)
    done = hvkit(["run", str(RECIPE), "--run-dir", str(run_dir), *kill], 2, tmp_path, plugin_env, check=False)
    assert done.returncode == 137, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (
        f"error: rank 1 of 2 was killed by SIGKILL (out of memory?); the completed stages and the last checkpoint "
        f"are kept; hvkit run --resume {run_dir} continues")
    assert "exitcode" not in done.stderr
    assert (run_dir / "stages" / "train" / "last.pt").is_file()


def test_a_run_directory_in_use_is_refused_by_every_rank_once(reference, tmp_path):
    """Rank 0 tries the run directory's lock and tells the others: one line naming the holder, exit 2."""
    busy = tmp_path / "busy"
    shutil.copytree(reference.run_dir, busy)
    lock = RunLock(busy, "hvkit eval")
    lock.acquire()
    try:
        done = hvkit(["run", "--resume", str(busy)], 2, tmp_path, check=False)
    finally:
        lock.release()
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {busy} is in use by hvkit eval (pid {os.getpid()} on ")
    assert "Traceback" not in done.stderr


def test_a_sweep_runs_each_run_in_several_processes(reference, tmp_path):
    """``hvkit sweep --nproc 2``: a run is the two-process run of its settings; one that fails is said once by
    its ranks and reported at the end while the other completes; the same command again keeps the complete
    run and resumes the failed one."""
    out = tmp_path / "out"
    sweep = ["sweep", str(RECIPE), "--vary", "stages.train.label_fraction=[0.01, 1.0]", "--out", str(out)]
    for again in (False, True):
        done = hvkit(sweep, 2, tmp_path, check=False)
        assert done.returncode == 2, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 2 and errors[0].startswith("error: stage 'train': labelled_writers: fraction=0.01")
        assert errors[1] == "error: sweep run label_fraction=0.01: failed in 2 processes with exit code 2 (the " \
                            "error above)"
        assert "Traceback" not in done.stderr
        assert (f"  {out / 'label_fraction=1.0'} is complete, kept" in done.stdout) == again
    alone = metrics(out / "label_fraction=1.0")
    assert alone["train"]["final_loss"] == metrics(reference.run_dir)["train"]["final_loss"]
    assert alone["evaluate"]["verification"] == metrics(reference.run_dir)["evaluate"]["verification"]
    summary = json.loads((out / "summary.json").read_text())
    assert [group["runs"] for group in summary["groups"]] == [["label_fraction=1.0"]]
    assert summary["failed"] == [f"sweep run label_fraction=0.01: {errors[0].removeprefix('error: ')}"]
