"""``hvkit curves``: each stage's log summarised (steps, speed, loss first to last and lowest, the parts at the end,
a collapse warning), several runs side by side, the moving average, one-line errors; a real tiny run's VICReg parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner

from hvkit.cli import main
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.commands.curves import smoothed


def _run(root: Path, logs: dict[str, list[dict]], order: list[str] | None = None) -> Path:
    """A run folder holding ``logs`` as its stages' log.jsonl, its recipe listing the stages in ``order``."""
    root.mkdir(parents=True)
    stages = {s: {} for s in order or logs}
    (root / "recipe.resolved.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    for stage, rows in logs.items():
        (root / "stages" / stage).mkdir(parents=True)
        (root / "stages" / stage / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _rows(losses: list[float], **parts: list[float]) -> list[dict]:
    total = 10 * len(losses)
    return [{"step": 10 * (i + 1), "total_steps": total, "epoch": i, "loss": loss, "lr": 1e-3,
             "steps_per_s": 2.0 + i, "time": 1000.0 + 100 * i, **{k: v[i] for k, v in parts.items()}}
            for i, loss in enumerate(losses)]


def _curves(*args: str) -> str:
    result = CliRunner().invoke(main, ["curves", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_each_stage_is_summarised_in_the_recipes_order(tmp_path: Path):
    run = _run(tmp_path / "run", {
        "finetune": _rows([0.9, 0.5, 0.6]),
        "pretrain": _rows([22.0, 20.0, 21.0, 19.5], invariance=[1, 2, 3, 0.25], output_std=[0.9, 0.8, 0.7, 0.6],
                          val_auc=[0.7, 0.8, 0.9, 0.85]),
    }, order=["pretrain", "evaluate", "finetune"])
    out = tmp_path / "c.png"
    lines = _curves(str(run), "--out", str(out)).splitlines()
    assert lines == [
        "pretrain: step 40/40, 5 min from the first logged step, 3.5 steps/s, loss 22 → 19.5 "
        "(lowest 19.5 at step 40); at the end invariance 0.25, output_std 0.6, val_auc 0.85; "
        "val_auc highest 0.9 at step 30",
        "finetune: step 30/30, 3 min from the first logged step, 3 steps/s, loss 0.9 → 0.6 (lowest 0.5 at step 20)",
        f"wrote {out}",
    ]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_near_one_direction_are_called_a_collapse(tmp_path: Path):
    run = _run(tmp_path / "run", {"pretrain": _rows([5.0, 4.0], output_std=[0.5, 0.05])})
    said = _curves(str(run), "--out", str(tmp_path / "c.png"))
    assert "output_std 0.05 < 0.1: the outputs are collapsing" in said
    healthy = _run(tmp_path / "healthy", {"pretrain": _rows([5.0, 4.0], output_std=[0.05, 0.5])})
    assert "collapsing" not in _curves(str(healthy), "--out", str(tmp_path / "h.png"))


def test_a_folder_of_runs_puts_each_runs_name_before_its_stages_and_json_gives_the_rows(tmp_path: Path):
    rows_a, rows_b = _rows([3.0, 2.0]), _rows([4.0, 1.0])
    _run(tmp_path / "sweep" / "a", {"train": rows_a})
    _run(tmp_path / "sweep" / "b", {"train": rows_b})
    lines = _curves(str(tmp_path / "sweep"), "--out", str(tmp_path / "c.png")).splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["a/train", "b/train"]
    assert json.loads(_curves(str(tmp_path / "sweep"), "--json")) == {"a/train": rows_a, "b/train": rows_b}


def test_stage_selects_and_a_torn_last_line_is_left_out(tmp_path: Path):
    run = _run(tmp_path / "run", {"pretrain": _rows([2.0, 1.0]), "train": _rows([7.0, 6.0])})
    with open(run / "stages" / "train" / "log.jsonl", "a") as f:
        f.write('{"step": 30, "tot')  # a write the process did not finish
    lines = _curves(str(run), "--stage", "train", "--out", str(tmp_path / "c.png")).splitlines()
    assert lines[0].startswith("train: step 20/20,") and len(lines) == 2


def test_unknown_stages_missing_logs_and_broken_lines_are_one_line_errors(tmp_path: Path):
    run = _run(tmp_path / "run", {"pretrain": _rows([2.0, 1.0])}, order=["pretrain", "evaluate"])
    for args, said in ((["--stage", "nope"], "no stage 'nope' in"), (["--stage", "evaluate"], "no training step")):
        result = CliRunner().invoke(main, ["curves", str(run), *args])
        assert result.exit_code != 0 and said in result.output and len(result.output.strip().splitlines()) == 1
    log = run / "stages" / "pretrain" / "log.jsonl"
    log.write_text('{"step": 1\n' + log.read_text())
    result = CliRunner().invoke(main, ["curves", str(run)])
    assert result.exit_code != 0 and f"{log}:1: not a log line" in result.output


def test_smoothing_is_a_trailing_mean_over_the_points_there_are():
    np.testing.assert_allclose(smoothed(np.array([1.0, 3.0, 5.0, 7.0]), 3), [1.0, 2.0, 3.0, 5.0])
    np.testing.assert_array_equal(smoothed(np.array([4.0, 2.0]), 1), [4.0, 2.0])


def test_a_vicreg_pretraining_logs_its_parts_for_the_curves(tmp_path: Path):
    run = run_recipe_text(tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    head: {name: mlp, dims: [16, 16]}
    batch_size: 8
    train: {epochs: 1, max_steps: 2, log_every: 1}
""", name="curves"), tmp_path)
    said = _curves(str(run), "--out", str(tmp_path / "c.png"))
    assert said.startswith("pretrain: step 2/2,")
    for part in ("invariance", "variance", "covariance", "output_std"):
        assert f" {part} " in said
    assert (tmp_path / "c.png").stat().st_size > 10_000
