"""``hvkit sweep``: every combination of the varied settings one run, validated first, resumable, with each
verifier's mean ± sample standard deviation over the seed axes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from hvkit.cli import main
from hvkit.engine.trainer import read_log
from hvkit.errors import HvkitError, Interrupted
from hvkit.pipeline import run
from hvkit.run_lock import exclusive
from hvkit_plugins.commands.sweep import SUMMARY_LOCK, _summarise, grid, parse_axes

TRAIN = {"stage": "metric_train", "loss": "multi_similarity", "head": None, "transform": None, "batch_size": 24,
         "label_fraction": 0.5, "train": {"epochs": 1, "amp": False}}
EVAL = {"stage": "evaluate", "model_from": "first", "label_fraction": 0.5, "plots": False,
        "verifiers": ["cosine_pair", "wccn_pair"],
        "evaluators": [{"name": "verification", "all_pairs": False}, {"name": "retrieval", "clustering": False},
                       "knn_probe", "linear_probe", "open_set",
                       {"name": "set_verification", "sizes": [1, 2], "bootstrap": 0}]}
RECIPE = {"name": "tiny_sweep", "seed": 4, "device": "cpu",
          "data": {"name": "cedar_and", "synthetic_writers": 30, "synthetic_samples_per_writer": 6},
          "model": {"backbone": {"name": "small_cnn", "width": 8, "depth": 2, "embedding_dim": 12}},
          "stages": {"first": TRAIN, "eval_first": EVAL}}
AXES = ["--vary", "stages.first.train.epochs=[1, 3]", "--vary", "seed=[0, 1]", "--set", "data.seed=0"]
NAMES = ["epochs=1,seed=0", "epochs=1,seed=1", "epochs=3,seed=0", "epochs=3,seed=1"]


def sweep(*args: object):
    return CliRunner().invoke(main, ["sweep", *map(str, args)])


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def swept(recipe, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("sweep") / "out"
    result = sweep(recipe, *AXES, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.stdout


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_each_combination_is_a_run_with_its_values(swept):
    out, stdout = swept
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES + ["summary.json", "summary.md", "sweep.json",
                                                                    ".summary.lock"])
    for name in NAMES:
        resolved = yaml.safe_load((out / name / "recipe.resolved.yaml").read_text())
        epochs, seed = (int(part.split("=")[1]) for part in name.split(","))
        assert (resolved["stages"]["first"]["train"]["epochs"], resolved["seed"], resolved["data"]["seed"]) == \
            (epochs, seed, 0)
        assert metrics(out / name)["first"]["steps"] == epochs
        probe = metrics(out / name)["eval_first"]["linear_probe"]  # the evaluate stage has no reference set
        assert (probe["split"], probe["train_size"] + probe["test_size"]) == \
            (True, len(np.load(out / name / "stages" / "eval_first" / "test_labels.npy")))
    assert [line for line in stdout.splitlines() if line.startswith("sweep")] == \
        [f"sweep {i}/4: {name}" for i, name in enumerate(NAMES, 1)] + \
        [f"sweep: 4 of 4 runs complete ({out / 'summary.md'})"]


def test_the_summary_is_the_mean_and_sample_deviation_over_seeds(swept, recipe):
    out, stdout = swept
    summary = json.loads((out / "summary.json").read_text())
    assert [group["values"] for group in summary["groups"]] == [{"stages.first.train.epochs": 1},
                                                               {"stages.first.train.epochs": 3}]
    tables = {"verification": [], "retrieval": [], "knn_probe": [], "linear_probe": [], "open_set": [],
              "set_verification": []}
    rows = [("verification", f"eval_first/{verifier}", ("accuracy", "roc_auc", "eer"),
             lambda m, verifier=verifier: m["eval_first"]["verification"][verifier])
            for verifier in ("cosine_pair", "wccn_pair")]
    rows.append(("retrieval", "eval_first", ("precision_at_1", "r_precision", "map_at_r"),
                 lambda m: m["eval_first"]["retrieval"]))
    rows += [(probe, "eval_first", ("accuracy",), lambda m, probe=probe: m["eval_first"][probe])
             for probe in ("knn_probe", "linear_probe")]
    rows.append(("open_set", "eval_first", ("rank1", "dir_at_far_0.01", "detection_auc"),
                 lambda m: m["eval_first"]["open_set"]))
    rows += [("set_verification", f"eval_first/k={k}", ("accuracy", "roc_auc", "eer"),
              lambda m, k=k: m["eval_first"]["set_verification"][f"k{k}"]) for k in (1, 2)]
    for group, names in zip(summary["groups"], (NAMES[:2], NAMES[2:])):
        assert group["runs"] == names
        for kind, row, measures, pick in rows:
            found = group["results"][kind][row]
            cells = []
            for measure in measures:
                values = [pick(metrics(out / name))[measure] for name in names]
                expected_sd = float(np.sqrt(sum((v - sum(values) / 2) ** 2 for v in values)))  # n - 1 = 1
                assert found[measure]["values"] == values and found[measure]["n"] == 2
                assert found[measure]["mean"] == pytest.approx(sum(values) / 2, abs=1e-15)
                assert found[measure]["sd"] == pytest.approx(expected_sd, abs=1e-15)
                cells.append(f"{sum(values) / 2:.4f} ± {expected_sd:.4f}")
            tables[kind].append(f"| {group['values']['stages.first.train.epochs']} | {row} | {' | '.join(cells)} | 2 |")
    shown = "\n\n".join([
        "\n".join(["## verification", "", "| stages.first.train.epochs | stage/verifier | accuracy | ROC AUC | EER "
                   "| runs |", "|---|---|---|---|---|---|", *tables["verification"]]),
        "\n".join(["## retrieval", "", "| stages.first.train.epochs | stage | P@1 | R-precision | MAP@R | runs |",
                   "|---|---|---|---|---|---|", *tables["retrieval"]]),
        *("\n".join([f"## {probe}", "", "| stages.first.train.epochs | stage | accuracy | runs |", "|---|---|---|---|",
                     *tables[probe]]) for probe in ("knn_probe", "linear_probe")),
        "\n".join(["## open_set", "", "| stages.first.train.epochs | stage | rank 1 | DIR at 1% false alarms | "
                   "detection AUC | runs |", "|---|---|---|---|---|---|", *tables["open_set"]]),
        "\n".join(["## set_verification", "", "| stages.first.train.epochs | stage/images a side | accuracy | ROC AUC "
                   "| EER | runs |", "|---|---|---|---|---|---|", *tables["set_verification"]])])
    assert (out / "summary.md").read_text() == f"# sweep of {recipe}\n\n{shown}\n"
    assert stdout.endswith(shown + "\n")
    assert summary["failed"] == summary["running"] == summary["stopped"] == []


def test_the_same_command_continues_a_sweep(swept, recipe, tmp_path):
    """A complete run is kept, an interrupted one (its last stage without outputs) resumes, a missing one runs:
    the summary equals the uninterrupted sweep's."""
    first, _ = swept
    out = tmp_path / "out"
    shutil.copytree(first, out)
    (out / NAMES[2] / "metrics.json").unlink()
    shutil.rmtree(out / NAMES[2] / "stages" / "eval_first")
    shutil.rmtree(out / NAMES[3])
    kept = (out / NAMES[0] / "metrics.json").stat().st_mtime_ns
    result = sweep(recipe, *AXES, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"  {out / NAMES[0]} is complete, kept" in result.stdout
    assert "[first] complete, skipped" in result.stdout  # the interrupted run resumed after its first stage
    assert (out / NAMES[0] / "metrics.json").stat().st_mtime_ns == kept
    for name in NAMES:
        assert metrics(out / name) == metrics(first / name)
    assert (out / "summary.json").read_text() == (first / "summary.json").read_text()


def test_a_folder_holding_another_sweep_or_other_files_is_refused(swept, recipe, tmp_path):
    out, _ = swept
    result = sweep(recipe, "--vary", "seed=[0, 1]", "--out", out)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {out} holds another sweep ({out / 'sweep.json'}: recipe {recipe.resolve()}, "
                             "vary stages.first.train.epochs, seed); give another --out, or the same recipe, --set "
                             "and --vary to continue it\n")
    (tmp_path / "keep.txt").write_text("mine")
    result = sweep(recipe, "--vary", "seed=[0, 1]", "--out", tmp_path)
    assert (result.exit_code, result.stderr) == (2, f"error: {tmp_path} is not empty and holds no sweep; give "
                                                    "another --out\n")


def test_every_combination_is_validated_before_any_run(recipe, tmp_path):
    result = sweep(recipe, "--vary", "stages.first.loss=[multi_similarity, nosuch]", "--vary", "seed=[0, x]",
                   "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [  # each once, though two combinations meet each
        f"error: {recipe}:seed: expected an int, got 'x'",
        f"error: {recipe}:stages.first.loss.name: unknown loss 'nosuch'; did you mean 'supcon'?"]
    assert not (tmp_path / "out").exists()


def test_a_failed_run_is_reported_at_the_end_and_the_others_go_on(recipe, tmp_path):
    out = tmp_path / "out"
    result = sweep(recipe, "--vary", "stages.first.label_fraction=[0.01, 0.5]", "--out", out)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: sweep run label_fraction=0.01: stage 'first': labelled_writers: fraction=0.01")
    summary = json.loads((out / "summary.json").read_text())
    assert [group["runs"] for group in summary["groups"]] == [["label_fraction=0.5"]]
    assert summary["failed"] == [line.removeprefix("error: ")] and summary["stopped"] == ["label_fraction=0.01"]
    assert (out / "summary.md").read_text().endswith(f"\n## failed\n\n- {line.removeprefix('error: ')}\n")
    assert "sweep: 1 of 2 runs complete; 1 stopped or failed, which the same command resumes" in result.stdout
    vary = parse_axes(("stages.first.label_fraction=[0.01, 0.5]",))
    _summarise(recipe, out, vary, grid(vary), {})  # another sweep process ending, with no failure of its own
    assert json.loads((out / "summary.json").read_text())["failed"] == summary["failed"]  # from the run's record


@pytest.mark.parametrize("args, message", [
    (["--vary", "seed=3"], "--vary seed=3: the values must be a non-empty YAML list, e.g. seed=[1, 2]"),
    (["--vary", "seed=[]"], "--vary seed=[]: the values must be a non-empty YAML list, e.g. seed=[1, 2]"),
    (["--vary", "seed=[1, 1]"], "--vary seed=[1, 1]: a value is listed twice"),
    (["--vary", "seed=[1]", "--vary", "seed=[2]"], "--vary seed is given twice; list every value in one --vary"),
    (["--vary", "seed=[1, 2]", "--set", "seed=3"], "seed is both set (--set) and varied (--vary); keep one"),
    (["--vary", "seed,data.seed=[[1, 2], [3]]"],
     "--vary seed,data.seed=[[1, 2], [3]]: 2 keys vary together, so each value must be a list of 2, one for each "
     "key in order"),
    (["--vary", "seed=[1]", "--vary", "data.seed,seed=[[1, 2]]"],
     "--vary seed is given twice; list every value in one --vary"),
    (["--vary", "seed,=[[1, 2]]"], "--vary seed,=[[1, 2]]: an empty key; keys that vary together read "
                                   "K1,K2=[[A1, A2], …]"),
    (["--vary", "seed,data.seed=[[1, 2]]", "--set", "data.seed=0"],
     "data.seed is both set (--set) and varied (--vary); keep one"),
])
def test_a_malformed_axis_is_one_line(recipe, tmp_path, args, message):
    result = sweep(recipe, *args, "--out", tmp_path / "out")
    assert (result.exit_code, result.stderr) == (2, f"error: {message}\n")


def test_run_names_keep_each_key_s_last_part_unless_two_share_it():
    points = grid(parse_axes(("stages.a.lr=[0.1, 1e-3]", "stages.b.lr=[1]", "data.seed=[0]",
                              "stages.a.loss=[{name: triplet, margin: 0.2}]")))
    assert [p.name for p in points] == [
        "stages.a.lr=0.1,stages.b.lr=1,seed=0,loss=margin-0.2+name-triplet",
        "stages.a.lr=0.001,stages.b.lr=1,seed=0,loss=margin-0.2+name-triplet"]
    assert points[1].overrides() == ["stages.a.lr=0.001", "stages.b.lr=1", "data.seed=0",
                                     'stages.a.loss={"name": "triplet", "margin": 0.2}']
    together = grid(parse_axes(("stages.a.lr,stages.a.batch_size=[[0.1, 64], [0.2, 128]]", "seed=[0, 1]")))
    assert [(p.name, p.values) for p in together] == [
        ("lr=0.1,batch_size=64,seed=0", {"stages.a.lr": 0.1, "stages.a.batch_size": 64, "seed": 0}),
        ("lr=0.1,batch_size=64,seed=1", {"stages.a.lr": 0.1, "stages.a.batch_size": 64, "seed": 1}),
        ("lr=0.2,batch_size=128,seed=0", {"stages.a.lr": 0.2, "stages.a.batch_size": 128, "seed": 0}),
        ("lr=0.2,batch_size=128,seed=1", {"stages.a.lr": 0.2, "stages.a.batch_size": 128, "seed": 1})]
    with pytest.raises(HvkitError, match="share the run directory 'x=a_b'"):
        grid(parse_axes(("x=[a/b, a b]",)))


def test_a_name_too_long_for_a_folder_is_cut_and_ended_by_a_hash_of_the_whole(tmp_path):
    """Six zipped keys sharing their last part gave 240 characters; longer values go past a file name's 255
    bytes, which no folder can hold: such a name keeps its start and ends with ``~`` and its SHA-1's start."""
    keys = ",".join(f"stages.stage_number_{i}.train.optimizer.weight_decay" for i in range(6))
    points = grid(parse_axes((f"{keys}=[[0.5, 0.5, 0.5, 0.5, 0.5, 0.25], [0.5, 0.5, 0.5, 0.5, 0.5, 0.125]]",
                              "seed=[0]", "x=[é]")))
    whole = [",".join(f"{key}={value}" for key, value in zip(keys.split(","), values)) + ",seed=0,x=é"
             for values in (["0.5"] * 5 + ["0.25"], ["0.5"] * 5 + ["0.125"])]
    assert all(len(name.encode()) > 255 for name in whole)
    for point, name in zip(points, whole):
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        assert point.name == name.encode()[:242].decode() + "~" + digest
        assert len(point.name.encode()) == 255
        (tmp_path / point.name).mkdir()
    assert points[0].name[:-12] == points[1].name[:-12] and points[0].name != points[1].name
    short = grid(parse_axes((keys.replace("stage_number_", "s") + "=[[1, 2, 3, 4, 5, 6]]",)))
    assert short[0].name == ",".join(f"stages.s{i}.train.optimizer.weight_decay={i + 1}" for i in range(6))


def test_a_stopped_run_stops_the_sweep_with_how_to_continue(recipe, tmp_path, monkeypatch):
    from hvkit_plugins.commands import sweep as sweep_module
    started = []

    def stopped_second(recipe_path, overrides=(), run_dir=None, **kwargs):
        started.append(run_dir.name)
        if len(started) == 2:
            raise Interrupted(f"stage first: SIGTERM at step 1/3, checkpoint saved there; hvkit run --resume {run_dir} "
                              "continues to the uninterrupted result", 143)
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text("{}")

    monkeypatch.setattr(sweep_module, "run", stopped_second)
    out = tmp_path / "out"
    result = sweep(recipe, "--vary", "seed=[0, 1, 2]", "--out", out)
    assert started == ["seed=0", "seed=1"]
    assert (result.exit_code, result.stderr) == (143, (
        f"error: sweep 2/3 (seed=1): stage first: SIGTERM at step 1/3, checkpoint saved there; hvkit run --resume "
        f"{out / 'seed=1'} continues to the uninterrupted result; the same hvkit sweep command continues the sweep\n"))
    assert not (out / "summary.json").exists()


def test_two_sweep_processes_share_the_runs(recipe, tmp_path):
    """The same sweep started twice side by side (one process a GPU): a run one of them works in is skipped by
    the other, so each runs once; every run completes, and the process that ends last summarises them all."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HVKIT_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "hvkit", "sweep", str(recipe), *AXES, "--out", str(out)]
    both = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in both]
    assert [process.returncode for process in both] == [0, 0], [err[-2000:] for _, err in outputs]
    trained = [said.split("\n[first] metric_train …\n")[:-1] for said, _ in outputs]  # the text before each
    assert sorted(before.rsplit("run directory: ", 1)[1].strip() for each in trained for before in each) == \
        sorted(str(out / name) for name in NAMES)
    for name in NAMES:
        steps = [row["step"] for row in read_log(out / name / "stages" / "first" / "log.jsonl")]
        assert steps == sorted(set(steps)) and metrics(out / name)["first"]["steps"] == steps[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert [group["runs"] for group in summary["groups"]] == [NAMES[:2], NAMES[2:]]
    assert summary["running"] == summary["failed"] == summary["stopped"] == []


def test_a_run_of_a_sweep_is_the_run_on_its_own(swept, recipe, tmp_path):
    """Runs one after another in one process share nothing: the last run of the sweep equals the same
    settings run alone."""
    out, _ = swept
    alone = run(recipe, ["data.seed=0", "stages.first.train.epochs=3", "seed=1"], run_dir=tmp_path / "alone",
                device="cpu", console=lambda _: None)
    assert metrics(alone) == metrics(out / NAMES[3])


def test_one_process_at_a_time_reads_the_runs_and_writes_the_summary(swept, recipe, tmp_path):
    """A sweep process that ends while another writes the summary waits for it, then reads the runs as they are:
    a run the other process completed meanwhile is in the summary written last."""
    first, _ = swept
    out = tmp_path / "out"
    shutil.copytree(first, out)
    (out / "summary.json").unlink()
    last = out / NAMES[3] / "metrics.json"
    last.rename(tmp_path / "metrics.json")
    vary = parse_axes(tuple(AXES[1::2][:2]))
    with exclusive(out / SUMMARY_LOCK):  # another process holds it
        ending = threading.Thread(target=_summarise, args=(recipe, out, vary, grid(vary), {}))
        ending.start()
        ending.join(0.5)
        assert ending.is_alive() and not (out / "summary.json").exists()
        (tmp_path / "metrics.json").rename(last)  # the other process's run completes
    ending.join(30)
    assert (out / "summary.json").read_text() == (first / "summary.json").read_text()


def test_runs_in_several_processes_stop_on_a_signal_and_give_way_to_another_sweep(recipe, tmp_path, monkeypatch):
    """``--nproc``: a signal that stopped a run's ranks stops the sweep with their exit code; a run whose ranks
    failed because another sweep process took and completed it meanwhile is kept, not reported."""
    from hvkit_plugins.commands import sweep as sweep_module
    launches = []

    def stopped(nproc, args, run_dir):
        launches.append((nproc, args))
        return 130

    monkeypatch.setattr(sweep_module, "launched", stopped)
    out = tmp_path / "out"
    result = sweep(recipe, "--vary", "seed=[0, 1]", "--nproc", 3, "--out", out)
    assert (result.exit_code, result.stderr) == (130, "error: sweep 1/2 (seed=0): its 3 processes stopped on SIGINT "
                                                      "(each rank said where above); the same hvkit sweep command "
                                                      "continues the sweep\n")
    assert launches == [(3, ["run", str(recipe), "--set=seed=0", "--run-dir", str(out / "seed=0")])]

    def taken_meanwhile(nproc, args, run_dir):
        launches.append((nproc, args))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.resolved.yaml").write_text("name: x\n")
        (run_dir / "metrics.json").write_text("{}")
        return 2

    monkeypatch.setattr(sweep_module, "launched", taken_meanwhile)
    result = sweep(recipe, "--vary", "seed=[0, 1]", "--nproc", 3, "--out", out)
    assert result.exit_code == 0, result.output
    assert [line for line in result.stdout.splitlines() if "kept" in line] == [
        f"  {out / name} was completed by another process, kept" for name in ("seed=0", "seed=1")]
