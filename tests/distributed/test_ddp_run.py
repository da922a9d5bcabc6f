"""A recipe under 2 gloo processes on CPU: same metrics as 1 process, and resumable.

The global batch is the same in both runs (each rank takes half of every batch and the
global-batch loss gathers it back), and the backbone uses GroupNorm (BatchNorm statistics
would be per rank: SyncBatchNorm needs CUDA), so the runs compute the same steps: they
agree to float32 reduction order (relative 1e-4 on the loss, 1e-3 on the AUC).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hvkit.engine import load_checkpoint

RECIPE = Path(__file__).with_name("tiny_ddp.yaml")


def hvkit(args: list[str], nproc: int, tmp_path: Path, extra_env: dict[str, str] | None = None,
          check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HVKIT_PLUGINS"}
    env.update({"OMP_NUM_THREADS": "1", "HVKIT_CACHE": str(tmp_path / "cache"), **(extra_env or {})})
    launcher = [sys.executable, "-m", "hvkit"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "hvkit"]
    done = subprocess.run(launcher + args, env=env, capture_output=True, text=True, timeout=400)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
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


CRASH_PLUGIN = '''
"""An identity transform that raises once, at its N-th call, to interrupt a run."""
from pathlib import Path
from hvkit.api import hookimpl


class CrashOnce:
    """Identity transform raising RuntimeError at call ``at`` unless ``marker`` exists (then creates it)."""

    def __init__(self, at: int, marker: str):
        self.at, self.marker, self.calls = at, Path(marker), 0

    def __call__(self, images, generator):
        self.calls += 1
        if self.calls == self.at and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("simulated crash")
        return images


@hookimpl
def register_transforms(register):
    register("crash_once", CrashOnce)
'''


def install_crash_plugin(site: Path) -> None:
    """A throwaway distribution on ``site``: module, METADATA and an ``hvkit`` entry point."""
    site.mkdir(parents=True)
    (site / "hvkit_crash_plugin.py").write_text(CRASH_PLUGIN)
    info = site / "hvkit_crash_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hvkit-crash-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hvkit]\ncrash = hvkit_crash_plugin\n")


def test_two_processes_resume_to_the_same_result(single, tmp_path):
    site = tmp_path / "site"
    install_crash_plugin(site)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    hvkit(["run", str(RECIPE), "--run-dir", str(reference)], 2, tmp_path)
    crash = ["--set", "stages.train.transform.name=crash_once", "--set", "stages.train.transform.at=5",
             "--set", f"stages.train.transform.marker={tmp_path / 'crashed.marker'}"]
    done = hvkit(["run", str(RECIPE), "--run-dir", str(crashed), *crash], 2, tmp_path, env, check=False)
    assert done.returncode != 0 and "simulated crash" in done.stderr
    assert (crashed / "stages" / "train" / "last.pt").is_file()
    assert not (crashed / "stages" / "train" / "outputs.json").exists()
    hvkit(["run", "--resume", str(crashed)], 2, tmp_path, env)
    assert metrics(crashed)["train"]["final_loss"] == metrics(reference)["train"]["final_loss"]
    assert metrics(crashed)["evaluate"]["verification"] == metrics(reference)["evaluate"]["verification"]
