"""``hvkit explain``: integrated gradients of a run's fitted verifier, checked against ``hvkit verify``'s score and
the completeness of the attributions; a fusion's map is its members' as it weighs them; stages without a gradient
are refused in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hvkit.cli import main
from hvkit_plugins.commands.explain import thirds
from hvkit_plugins.datasets.cedar_and import cedar_and


@pytest.fixture(scope="module")
def run_and_words(fitted_run, tmp_path_factory) -> tuple[Path, list[Path]]:
    """The tiny fitted run and three test words saved as scanned (dark ink on white): two of one writer, one of
    another."""
    directory = tmp_path_factory.mktemp("words")
    test = cedar_and(synthetic_writers=16, synthetic_samples_per_writer=4, image_size=32).splits["test"]
    labels = np.asarray(test.labels)
    rows = [0, int(np.flatnonzero(labels == labels[0])[1]), int(np.flatnonzero(labels != labels[0])[0])]
    words = []
    for k in rows:
        words.append(directory / f"word{k}.png")
        Image.fromarray(255 - test.images[k, 0].numpy()).save(words[-1])
    return fitted_run, words


def _score(output: str) -> float:
    return float(re.search(r"score (\S+)", output).group(1))


@pytest.mark.parametrize("verifier", ["sslhv_pair", "wccn_pair"])
@pytest.mark.parametrize("pair", [(0, 1), (0, 2)], ids=["same writer", "two writers"])
def test_attributions_add_up_to_the_score_verify_prints(run_and_words, tmp_path, verifier, pair):
    run_dir, words = run_and_words
    files = [str(words[k]) for k in pair]
    out = tmp_path / "explain.png"
    result = CliRunner().invoke(main, ["explain", str(run_dir), *files, "--verifier", verifier, "--steps", "256",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    verified = CliRunner().invoke(main, ["verify", str(run_dir), *files, "--stage", "evaluate", "--verifier", verifier])
    assert verified.exit_code == 0, verified.output
    saved = np.load(out.with_suffix(".npz"))
    assert float(saved["score"]) == pytest.approx(_score(verified.output), abs=6e-5)  # verify prints 4 places
    assert result.output.startswith(f"evaluate/{verifier}: score {float(saved['score']):.4f}  threshold ")
    assert out.is_file()
    for side, blank in zip(("attribution_a", "attribution_b"), saved["blank_scores"]):
        change = float(saved["score"]) - float(blank)
        assert abs(saved[side].sum() - change) <= 0.01 * max(abs(change), 0.05)  # completeness, 256 steps
    for line, side in zip(result.output.splitlines()[1:3], ("attribution_a", "attribution_b")):
        total, parts = re.search(r"attributions sum to (\S+); left / middle / right third of the ink (.+)$", line).groups()
        assert sum(map(float, parts.split(" / "))) == pytest.approx(float(total), abs=2e-4)
        assert float(total) == pytest.approx(float(saved[side].sum()), abs=6e-5)
    images = saved["images"]
    for k, side in enumerate(("attribution_a", "attribution_b")):
        paper = images[k] == 0
        assert paper.any() and (saved[side][paper] == 0).all()  # blank paper gets nothing
        assert (saved[side][~paper] != 0).any()


def test_stages_without_a_gradient_are_refused_in_one_line(run_and_words):
    run_dir, words = run_and_words
    files = [str(w) for w in words[:2]]
    kind = "an evaluation of features computed without a network"
    for stage, what in (("hog", f"is {kind}"), ("fused", f"fuses hog/cosine_pair, {kind}")):
        result = CliRunner().invoke(main, ["explain", str(run_dir), *files, "--stage", stage])
        assert result.exit_code != 0
        assert result.output.strip().splitlines() == [
            f"error: stage {stage!r} of {run_dir} {what}: there is no gradient to follow; explain a stage whose "
            "verifiers all embed with an encoder: evaluate, fused_net"]
    result = CliRunner().invoke(main, ["explain", str(run_dir), *files, "--verifier", "nope"])
    assert result.exit_code != 0 and "has no verifier 'nope'" in result.output


def test_a_fusion_of_network_verifiers_is_explained_by_its_members_maps_as_it_weighs_their_scores(run_and_words,
                                                                                                  tmp_path):
    run_dir, words = run_and_words
    files = [str(words[k]) for k in (0, 2)]
    saved = {}
    for stage, verifier in (("fused_net", "fused"), ("evaluate", "sslhv_pair"), ("evaluate", "wccn_pair")):
        out = tmp_path / f"{verifier}.png"
        result = CliRunner().invoke(main, ["explain", str(run_dir), *files, "--stage", stage, "--verifier", verifier,
                                           "--steps", "256", "--out", str(out)])
        assert result.exit_code == 0, result.output
        saved[verifier] = np.load(out.with_suffix(".npz"))
    fused = saved["fused"]
    verified = CliRunner().invoke(main, ["verify", str(run_dir), *files, "--stage", "fused_net"])
    assert float(fused["score"]) == pytest.approx(_score(verified.output), abs=6e-5)
    fusion = json.loads((run_dir / "metrics.json").read_text())["fused_net"]["fusion"]
    w = [fusion["weights"][f"evaluate/{v}"] for v in ("sslhv_pair", "wccn_pair")]
    def weighed(key: str) -> np.ndarray:  # in float64: the fitted weights are large and the terms cancel
        return sum(wk * saved[v][key].astype(np.float64) for wk, v in zip(w, ("sslhv_pair", "wccn_pair")))

    for side in ("attribution_a", "attribution_b"):
        np.testing.assert_allclose(fused[side], weighed(side), rtol=1e-4, atol=1e-6)
        assert np.abs(fused[side]).max() > 0
    np.testing.assert_allclose(fused["blank_scores"], weighed("blank_scores") + fusion["offset"], rtol=1e-5, atol=1e-6)
    for side, blank in zip(("attribution_a", "attribution_b"), fused["blank_scores"]):
        change = float(fused["score"]) - float(blank)
        assert abs(fused[side].sum() - change) <= 0.01 * max(abs(change), 0.05)  # completeness, 256 steps


def test_an_encoder_checkpoint_explains_the_plain_cosine_verify_prints(run_and_words, tmp_path):
    run_dir, words = run_and_words
    checkpoint, files = str(run_dir / "stages" / "train" / "encoder.pt"), [str(w) for w in words[::2]]
    out = tmp_path / "plain.png"
    result = CliRunner().invoke(main, ["explain", checkpoint, *files, "--steps", "256", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert re.match(r"cosine: score \S+\n", result.output)  # no threshold, no decision
    verified = CliRunner().invoke(main, ["verify", checkpoint, *files, "--threshold", "0.5"])
    saved = np.load(out.with_suffix(".npz"))
    assert float(saved["score"]) == pytest.approx(_score(verified.output), abs=6e-5)
    assert np.isnan(saved["threshold"])
    for side, blank in zip(("attribution_a", "attribution_b"), saved["blank_scores"]):
        change = float(saved["score"]) - float(blank)
        assert abs(saved[side].sum() - change) <= 0.01 * max(abs(change), 0.05)
    decided = CliRunner().invoke(main, ["explain", checkpoint, *files, "--threshold", "2", "--out", str(out)])
    assert decided.output.startswith(f"cosine: score {float(saved['score']):.4f}  threshold 2.0000  → different writers")


def test_thirds_split_the_inked_columns_and_keep_the_whole():
    image = np.zeros((3, 10))
    image[1, 2:8] = 1.0  # ink in columns 2-7: thirds of two columns each, cut at 4 and 6
    share = np.arange(30, dtype=float).reshape(3, 10)
    assert thirds(share, image) == [share[:, :4].sum(), share[:, 4:6].sum(), share[:, 6:].sum()]
    assert thirds(share, np.zeros((3, 10))) == [0.0, share.sum(), 0.0]
