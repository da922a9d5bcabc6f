"""``hvkit verify --known … --questioned …``: k images against k, scored as the stage's set_verification did."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hvkit.cli import main
from hvkit.evaluation import Calibration
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.evaluators.set_verification import SET_SCORES, set_trials

STAGES = """
  pixels:
    stage: evaluate
    features: pixels
    label_fraction: 0.5
    verifiers: [cosine_pair]
    evaluators: [verification, {name: set_verification, sizes: [1, 2], bootstrap: 0}]
  whitened:
    stage: evaluate
    features: pixels
    label_fraction: 0.5
    verifiers: [cosine_pair, wccn_pair]
    space: wccn_pair
    evaluators: [{name: set_verification, sizes: [2], aggregate: mean, bootstrap: 0}]
  plain:
    stage: evaluate
    features: pixels
    label_fraction: 0.5
    verifiers: [cosine_pair]
    evaluators: [verification]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[Path], np.ndarray]:
    """The run, the test split's images written as scans (dark ink on white), and its labels."""
    root = tmp_path_factory.mktemp("verify_sets")
    run_dir = run_recipe_text(tiny_recipe(STAGES, writers=24, samples_per_writer=6), root)
    test = cedar_and(synthetic_writers=24, synthetic_samples_per_writer=6, image_size=32, seed=0).splits["test"]
    files = []
    for k in range(len(test)):
        files.append(root / f"word{k}.png")
        Image.fromarray(255 - test.images[k, 0].numpy()).save(files[-1])
    return run_dir, files, np.asarray(test.labels)


def verify(*args) -> object:
    return CliRunner().invoke(main, ["verify", *map(str, args)])


def test_two_against_two_is_scored_and_decided_as_the_stage_scored_its_trials(run) -> None:
    run_dir, files, labels = run
    stage_dir = run_dir / "stages" / "pixels"
    embeddings = np.load(stage_dir / "test_embeddings.npy").astype(np.float64)
    centre = np.load(stage_dir / SET_SCORES)["centre"]
    found = json.loads((run_dir / "metrics.json").read_text())["pixels"]["set_verification"]["k2"]
    first, second = np.flatnonzero(labels == labels[0])[:4], np.flatnonzero(labels != labels[0])[:2]
    for known, questioned in ((first[:2], first[2:]), (first[:2], second)):
        args = [a for i in known for a in ("--known", files[i])] + [a for i in questioned
                                                                    for a in ("--questioned", files[i])]
        result = verify(run_dir, "--stage", "pixels", *args)
        assert result.exit_code == 0, result.output
        unit = (embeddings - centre) / np.linalg.norm(embeddings - centre, axis=1, keepdims=True)
        a, b = unit[known].sum(axis=0), unit[questioned].sum(axis=0)
        expected = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        score, limit = map(float, re.match(r"score (\S+)  threshold (\S+)  \(2 against 2\) → ", result.output).groups())
        assert score == pytest.approx(expected, abs=6e-5) and limit == pytest.approx(found["threshold"], abs=6e-5)
        decision = "same writer" if expected >= found["threshold"] else "different writers"
        assert result.output.splitlines()[0].endswith(decision)
        log10 = float(re.search(r"^LR \S+ \(log10 (\S+)\)", result.output, re.M).group(1))
        assert log10 == pytest.approx(float(Calibration(**found["calibration"]).log_lr(expected)) / math.log(10),
                                      abs=0.006)


def test_a_stage_scored_in_a_verifier_s_space_gives_its_own_trials_scores_from_the_files(run) -> None:
    run_dir, files, labels = run
    with np.load(run_dir / "stages" / "whitened" / SET_SCORES) as saved:
        scores, same = saved["k2:scores"], saved["k2:same"]
    trials = set_trials(labels, None, 2, 4, np.random.default_rng([0, 2, 0]))  # the evaluator's test draw
    assert [t[2] for t in trials] == list(same)
    for (known, questioned, _), expected in list(zip(trials, scores))[:4]:
        args = [a for i in known for a in ("--known", files[i])] + [a for i in questioned
                                                                    for a in ("--questioned", files[i])]
        result = verify(run_dir, "--stage", "whitened", *args)
        assert result.exit_code == 0, result.output
        score = float(re.match(r"score (\S+)  threshold", result.output).group(1))
        assert score == pytest.approx(expected, abs=6e-5)
    raw = json.loads((run_dir / "metrics.json").read_text())
    assert raw["whitened"]["space"] == "wccn_pair"


@pytest.mark.parametrize("extra, message", [
    (["--known", 0, "--questioned", 1, "--questioned", 2], "give as many --questioned as --known images, a number "
                                                           "stage 'pixels' validated: 1, 2 (got 1 and 2)"),
    (["--known", 0, "--known", 1, "--known", 2, "--questioned", 3, "--questioned", 4, "--questioned", 5],
     "validated: 1, 2 (got 3 and 3)"),
    (["--stage", "plain", "--known", 0, "--questioned", 1], "stage 'plain' of"),
    ([0, "--known", 1, "--questioned", 2], "not both"),
])
def test_unvalidated_sizes_and_stages_are_one_line_errors(run, extra, message) -> None:
    run_dir, files, _ = run
    args = [files[a] if isinstance(a, int) else a for a in extra]
    result = verify(run_dir, *(["--stage", "pixels"] if "--stage" not in extra else []), *args)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
