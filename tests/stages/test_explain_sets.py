"""``hvkit explain --known … --questioned …``: each image of two sets explained with the others held fixed; the
score is ``hvkit verify``'s for the same sets, each image's attributions add up to what its strokes add, and the
differentiable set score equals the evaluator's for every aggregate, in a verifier's space or as it is."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hvkit.cli import main
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.commands.explain import Network, SetExplainer
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.evaluators.directions import directions
from hvkit_plugins.evaluators.set_verification import AGGREGATES, set_scores
from hvkit_plugins.heads.cosine_pair import CosinePair

from .conftest import TRAINED

STAGES = TRAINED + """
sets:
  stage: evaluate
  model_from: train
  label_fraction: 0.5
  tta: {shifts: 1}
  verifiers: [cosine_pair, wccn_pair]
  space: wccn_pair
  evaluators: [{name: set_verification, sizes: [2], bootstrap: 0}]
sets_mean:
  stage: evaluate
  model_from: train
  label_fraction: 0.5
  verifiers: [cosine_pair]
  evaluators: [{name: set_verification, sizes: [2], aggregate: mean, bootstrap: 0}]
pixels:
  stage: evaluate
  features: pixels
  label_fraction: 0.5
  verifiers: [cosine_pair]
  evaluators: [{name: set_verification, sizes: [2], bootstrap: 0}]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[Path], np.ndarray]:
    """The run, the test split's images written as scans (dark ink on white), and its labels."""
    root = tmp_path_factory.mktemp("explain_sets")
    run_dir = run_recipe_text(tiny_recipe(STAGES, writers=24, samples_per_writer=6,
                                          backbone="{name: small_cnn, width: 8, depth: 2}"), root)
    test = cedar_and(synthetic_writers=24, synthetic_samples_per_writer=6, image_size=32).splits["test"]
    files = []
    for k in range(len(test)):
        files.append(root / f"word{k}.png")
        Image.fromarray(255 - test.images[k, 0].numpy()).save(files[-1])
    return run_dir, files, np.asarray(test.labels)


def sets(files: list[Path], known: list[int], questioned: list[int]) -> list[str]:
    return [a for i in known for a in ("--known", str(files[i]))] + [
        a for i in questioned for a in ("--questioned", str(files[i]))]


@pytest.mark.parametrize("stage", ["sets", "sets_mean"])
@pytest.mark.parametrize("writers", ["same", "different"])
def test_each_image_s_attributions_add_up_to_its_share_of_the_score_verify_prints(run, tmp_path, stage, writers):
    run_dir, files, labels = run
    first, other = np.flatnonzero(labels == labels[0]), np.flatnonzero(labels != labels[0])
    args = sets(files, list(first[:2]), list(first[2:4] if writers == "same" else other[:2]))
    out = tmp_path / "sets.png"
    result = CliRunner().invoke(main, ["explain", str(run_dir), "--stage", stage, *args, "--steps", "256",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    verified = CliRunner().invoke(main, ["verify", str(run_dir), "--stage", stage, *args])
    assert verified.exit_code == 0, verified.output
    score, limit = map(float, re.match(r"score (\S+)  threshold (\S+)", verified.output).groups())
    saved = np.load(out.with_suffix(".npz"))
    assert float(saved["score"]) == pytest.approx(score, abs=6e-5)
    assert float(saved["threshold"]) == pytest.approx(limit, abs=6e-5)
    limit = float(saved["threshold"])
    decision = "same writer" if float(saved["score"]) >= limit else "different writers"
    assert result.output.splitlines()[0].endswith(f"score {float(saved['score']):.4f}  threshold {limit:.4f}  → "
                                                  f"{decision}")
    assert out.is_file() and int(saved["known"]) == 2 and saved["attributions"].shape == (4, 32, 32)
    lines = result.output.splitlines()[1:5]
    for i, (line, share, blank, image) in enumerate(zip(lines, saved["attributions"], saved["blank_scores"],
                                                        saved["images"])):
        assert line.startswith(f"{'known' if i < 2 else 'questioned'} {i % 2 + 1} (")
        change = float(saved["score"]) - float(blank)
        assert abs(share.sum() - change) <= 0.01 * max(abs(change), 0.05)  # completeness, 256 steps
        assert float(re.search(r"strokes add (\S+)", line).group(1)) == pytest.approx(change, abs=6e-5)
        paper = image == 0
        assert paper.any() and (share[paper] == 0).all() and (share[~paper] != 0).any()


@pytest.mark.parametrize("aggregate", AGGREGATES)
@pytest.mark.parametrize("whitened", [False, True])
def test_the_differentiable_score_is_the_evaluator_s(aggregate, whitened):
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(3, 6, 5, generator=g)  # three trials of 3 against 3
    space = None
    if whitened:
        space = CosinePair(5, whiten="within_class")
        space.fit(torch.randn(40, 5, generator=g), torch.arange(40) // 4)
    seen = embeddings if space is None else space.embed(embeddings.flatten(0, 1)).view(3, 6, 5)
    centre = np.random.default_rng(1).normal(size=5)
    explainer = SetExplainer(Network(torch.nn.Identity(), "backbone", None, {}), space, centre, aggregate)
    got = explainer.score(embeddings)
    rows = np.arange(3)
    for trial, score in zip(seen.detach().double().numpy(), got):
        expected = set_scores(directions(trial, centre), np.zeros(6, np.int64), [(rows, rows + 3, True)], aggregate)
        assert float(score) == pytest.approx(float(expected.scores[0]), abs=1e-12)


def test_sets_without_a_network_or_of_another_size_are_one_line_errors(run):
    run_dir, files, _ = run
    for extra, message in (
            (["--stage", "pixels", *sets(files, [0, 1], [2, 3])],
             "stage 'pixels' of " + str(run_dir) + " is an evaluation of features computed without a network"),
            (["--stage", "sets", *sets(files, [0], [2])], "a number stage 'sets' validated: 2 (got 1 and 1)"),
            ([str(files[0]), *sets(files, [1, 2], [3, 4])], "give IMAGE_A IMAGE_B or --known … --questioned …, not "
                                                            "both"),
            ([str(files[0])], "give two images, IMAGE_A IMAGE_B, or --known … --questioned …")):
        result = CliRunner().invoke(main, ["explain", str(run_dir), *extra])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
