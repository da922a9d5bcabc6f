"""``hvkit errors``: the most confident false accepts and rejects of a run's verifier, checked against the saved
pair scores, and the pair index kept beside them: the rows reproduce the pairs' digest."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hvkit.cli import main
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.stages.evaluate import load_pair_scores, load_pairs_digest, pairs_digest
from hvkit_plugins.stages.pair_files import load_pair_index, pair_index


def test_the_saved_pair_index_names_the_split_rows_of_each_pair(fitted_run):
    test = cedar_and(synthetic_writers=16, synthetic_samples_per_writer=4, image_size=32).splits["test"]
    for stage in ("evaluate", "hog", "fused"):
        path = fitted_run / "stages" / stage / "test_pair_scores.npz"
        index = load_pair_index(path)
        assert pairs_digest(test, index.first, index.second) == load_pairs_digest(path)
        assert list(index.files) == test.paths
        pairs = next(iter(load_pair_scores(path).values()))[0]
        np.testing.assert_array_equal(pairs.same, test.labels[index.first] == test.labels[index.second])


@pytest.mark.parametrize("stage, verifier", [("evaluate", "cosine_pair"), ("fused", "fused")])
def test_errors_are_the_pairs_on_the_wrong_side_of_the_threshold_most_confident_first(fitted_run, stage, verifier):
    result = CliRunner().invoke(main, ["errors", str(fitted_run), "--stage", stage, "--verifier", verifier, "-k", "3"])
    assert result.exit_code == 0, result.output
    path = fitted_run / "stages" / stage / "test_pair_scores.npz"
    pairs, threshold = load_pair_scores(path)[verifier]
    index = load_pair_index(path)
    accepts = np.flatnonzero(~pairs.same & (pairs.scores >= threshold))
    rejects = np.flatnonzero(pairs.same & (pairs.scores < threshold))
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{stage}/{verifier} on {len(pairs.scores)} test pairs at threshold {threshold:.4f}: "
                               f"{len(accepts)} false accepts (")
    assert f"), {len(rejects)} false rejects (" in lines[0]
    assert accepts.size and rejects.size  # two training steps leave errors of both kinds to list
    listed = {"accepts": [], "rejects": []}
    kind = None
    for line in lines[1:]:
        if line.endswith("false accepts:") or line.endswith("false rejects:"):
            kind = line.split()[-1].rstrip(":")
            continue
        score, first, second = re.fullmatch(r"  score (\S+)  (\S+)  (\S+)", line).groups()
        listed[kind].append((float(score), first, second))
    for kind, rows, order in (("accepts", accepts, -1), ("rejects", rejects, 1)):
        best = rows[np.argsort(order * pairs.scores[rows], kind="stable")][:3]
        assert listed[kind] == [(pytest.approx(float(pairs.scores[r]), abs=6e-5), str(index.files[index.first[r]]),
                                 str(index.files[index.second[r]])) for r in best]


def test_a_dataset_on_disk_is_named_by_absolute_paths(tmp_path, monkeypatch):
    class Data:
        synthetic, info = False, {"source": str(tmp_path)}

    (tmp_path / "w1").mkdir()
    (tmp_path / "w1" / "a.png").write_bytes(b"")
    split = type("S", (), {"paths": ["w1/a.png", "gone.png"]})()
    index = pair_index(Data(), split, np.array([0]), np.array([1]))
    assert list(index.files) == [str((tmp_path / "w1" / "a.png").resolve()), "gone.png"]
    Data.info = {}  # a dataset that names no source: its names as they are, never looked up in the working folder
    monkeypatch.chdir(tmp_path)
    assert list(pair_index(Data(), split, np.array([0]), np.array([1])).files) == ["w1/a.png", "gone.png"]


def test_scores_saved_before_the_index_ask_for_a_re_run_naming_every_stage(fitted_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(fitted_run, old)
    for stage in ("evaluate", "hog", "fused"):
        path = old / "stages" / stage / "test_pair_scores.npz"
        with np.load(path) as saved:
            kept = {k: saved[k] for k in saved.files if k not in ("first", "second", "files")}
        np.savez(path, **kept)
    result = CliRunner().invoke(main, ["errors", str(old), "--stage", "fused"])
    assert result.exit_code != 0
    assert result.output.strip() == (
        f"error: {old / 'stages' / 'fused' / 'test_pair_scores.npz'} holds no record of which images make each pair "
        f"(saved before hvkit kept it, or without validation writers); re-run: hvkit eval {old} --stage evaluate "
        "--stage hog --stage fused")


def test_the_listing_offers_hvkit_explain_where_the_files_exist_and_a_gradient_leads_to_them(fitted_run, tmp_path,
                                                                                           monkeypatch):
    index = load_pair_index(fitted_run / "stages" / "evaluate" / "test_pair_scores.npz")
    monkeypatch.chdir(tmp_path)
    for stage in ("evaluate", "fused_net", "hog", "fused"):
        said = CliRunner().invoke(main, ["errors", str(fitted_run), "--stage", stage]).output
        assert "explain one:" not in said  # the files are not on disk
    assert not Path(str(index.files[0])).is_absolute()  # a synthetic image's name, made a file here
    first = tmp_path / str(index.files[0])
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_bytes(b"")
    for stage, offered in (("evaluate", True), ("fused_net", True), ("hog", False), ("fused", False)):
        said = CliRunner().invoke(main, ["errors", str(fitted_run), "--stage", stage]).output
        assert ("explain one: hvkit explain" in said) == offered, stage
