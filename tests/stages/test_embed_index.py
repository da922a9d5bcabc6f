"""``hvkit embed`` and ``hvkit index build|search``: the files' embeddings, the index's neighbours, test-time views."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from hvkit.cli import main
from hvkit.engine import load_checkpoint
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.stages.encoder import embed, load_encoder
from hvkit_plugins.stages.handcrafted import hog
from hvkit_plugins.stages.test_views import TestViews

from .test_evaluate import RECIPE
from .test_score_fusion import fused_scores, verifier_cosines

PICKED = [0, 3, 7, 12, 20, 31]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[Path], torch.Tensor]:
    """A tiny run, six test images written as scans (dark ink on white), and those images as the dataset holds them."""
    tmp = tmp_path_factory.mktemp("embed_index")
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["evaluate"]["verifiers"] = ["cosine_pair", {"name": "wccn_pair", "shrinkage": 0.2}, "sslhv_pair"]
    recipe["stages"]["fused"] = {"stage": "score_fusion", "fit": "mean", "plots": False,
                                 "members": ["evaluate/cosine_pair", "evaluate/wccn_pair"]}
    recipe["stages"]["nested"] = {"stage": "score_fusion", "fit": "mean", "plots": False,
                                  "members": ["fused/fused", "evaluate/wccn_pair"]}
    recipe["stages"]["train"]["head"] = {"name": "linear", "out_dim": 8}  # signed features: cosines spread out
    recipe["stages"]["train"]["train"] |= {"epochs": 30, "max_steps": None, "optimizer": {"name": "AdamW", "lr": 3e-3}}
    run_dir = run_recipe_text(yaml.safe_dump(recipe, sort_keys=False), tmp)
    images = cedar_and(synthetic_writers=40, synthetic_samples_per_writer=6, seed=RECIPE["seed"]).splits["test"].images
    return run_dir, scans(images, tmp), images[PICKED]


def scans(images: torch.Tensor, folder: Path) -> list[Path]:
    """The ``PICKED`` images written under ``folder/words`` as scans: dark ink on white."""
    (folder / "words").mkdir()
    files = [folder / "words" / f"word{k:02d}.png" for k in PICKED]
    for k, file in zip(PICKED, files):
        Image.fromarray(255 - images[k, 0].numpy()).save(file)
    return files


def reference(run_dir: Path, images: torch.Tensor, views: TestViews | None, features: str = "backbone") -> np.ndarray:
    encoder, _ = load_encoder(run_dir / "stages" / "train" / "encoder.pt", get_registry(), torch.device("cpu"))
    return embed(encoder, images, torch.device("cpu"), features, views=views).numpy()


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("options, views", [([], None),
                                            (["--tta-shifts", 2, "--tta-zoom", 1.2], TestViews(shifts=2, zooms=[1.2]))])
def test_embed_writes_each_files_embedding_in_order(trained, tmp_path, options, views) -> None:
    run_dir, files, images = trained
    out = tmp_path / "emb.npy"
    result = invoke("embed", run_dir, files[0].parent, "--out", out, *options)
    assert result.exit_code == 0, result.output
    assert f"{len(files)} embeddings of dimension 16" in result.output
    assert out.with_suffix(".txt").read_text().split() == [str(f) for f in files]
    expected = reference(run_dir, images, views)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-4, atol=1e-5)
    if views is not None:
        assert np.abs(reference(run_dir, images, None) - expected).max() > 1e-3


def neighbours(output: str) -> dict[str, list[tuple[float, str]]]:
    """``index search``'s printout: each query's (score, file) lines."""
    found: dict[str, list[tuple[float, str]]] = {}
    hits: list[tuple[float, str]] = []
    for line in output.splitlines():
        hit = re.match(r"^  (\S+)  (.+)$", line)
        if hit:
            hits.append((float(hit.group(1)), hit.group(2)))
        else:
            hits = found[line] = []
    return found


def assert_ranked(output: str, files: list[Path], queries: tuple[int, ...], scores: np.ndarray, k: int) -> None:
    """Each query's printed hits are the files of its ``k`` best ``scores`` (a row per file), best first."""
    for row in queries:
        hits = neighbours(output)[str(files[row])]
        order = np.argsort(-scores[row])[:k]
        assert [name for _, name in hits] == [str(files[j]) for j in order]
        np.testing.assert_allclose([score for score, _ in hits], scores[row, order], atol=1e-4)


@pytest.mark.parametrize("options, views", [([], None), (["--tta-shifts", 1], TestViews(shifts=1))])
def test_index_ranks_by_the_cosine_of_the_embeddings_and_embeds_queries_as_it_was_built(trained, tmp_path, options,
                                                                                        views) -> None:
    run_dir, files, images = trained
    built = invoke("index", "build", run_dir, *files, "--out", tmp_path / "index", "--features", "head", *options)
    assert built.exit_code == 0, built.output
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    assert meta["tta"] == {"shifts": views.shifts if views else 0, "zooms": []}
    result = invoke("index", "search", tmp_path / "index", files[1], files[4], "-k", 3)
    assert result.exit_code == 0, result.output
    emb = reference(run_dir, images, views, "head")
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cosines = unit @ unit.T
    assert_ranked(result.output, files, (1, 4), cosines, 3)


def test_bad_test_time_views_are_one_line_errors(trained, tmp_path) -> None:
    run_dir, files, _ = trained
    result = invoke("embed", run_dir, files[0], "--out", tmp_path / "emb.npy", "--tta-zoom", 0)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: tta.zooms=[0.0] must all be > 0 (1.1 magnifies by 10%)"]
    assert not (tmp_path / "emb.npy").exists()
    result = invoke("index", "build", run_dir, files[0], "--out", tmp_path / "index", "--tta-shifts", -1)
    assert result.exit_code == 2 and "--tta-shifts" in result.stderr


@pytest.fixture(scope="module")
def hog_run(tmp_path_factory) -> tuple[Path, list[Path], torch.Tensor]:
    """A run whose only stage scores HOG features (no encoder), and six test images written as scans."""
    tmp = tmp_path_factory.mktemp("hog_index")
    run_dir = run_recipe_text(tiny_recipe("""
      hog:
        stage: evaluate
        features: hog
        label_fraction: 0.5
        verifiers: [cosine_pair, {name: wccn_pair, shrinkage: 0.2}]
        evaluators: [verification]
        plots: false
    """, name="hog_index", writers=40, samples_per_writer=6), tmp)
    images = cedar_and(synthetic_writers=40, synthetic_samples_per_writer=6, image_size=32, seed=0).splits["test"].images
    return run_dir, scans(images, tmp), images[PICKED]


@pytest.mark.parametrize("source, stage, verifier", [("trained", "evaluate", "wccn_pair"),
                                                     ("trained", "evaluate", None),
                                                     ("trained", "fused", None),
                                                     ("trained", "nested", None),
                                                     ("hog_run", "hog", "wccn_pair")])
def test_an_index_by_a_verifier_or_a_fusion_ranks_neighbours_by_its_score(request, tmp_path, source, stage,
                                                                          verifier) -> None:
    run_dir, files, images = request.getfixturevalue(source)
    options = ["--verifier", verifier] if verifier else []
    built = invoke("index", "build", run_dir, *files, "--out", tmp_path / "index", "--stage", stage, *options)
    assert built.exit_code == 0, built.output
    result = invoke("index", "search", tmp_path / "index", files[2], files[5], "-k", 4)
    assert result.exit_code == 0, result.output
    features = hog(images).numpy() if stage == "hog" else reference(run_dir, images, None)
    if stage in ("fused", "nested"):  # the mean of the members' z-scores: a weighted sum of their scores + an offset
        metrics = json.loads((run_dir / "metrics.json").read_text())
        weights = metrics[stage]["fusion"]["weights"]
        assert len(weights) == 2 and min(weights.values()) > 0 and max(weights.values()) != min(weights.values())
        scores = fused_scores(run_dir, metrics, stage, lambda _: features)
        threshold, name = metrics[stage]["verification"]["fused"]["threshold"], "fused"
    else:
        name = verifier or "cosine_pair"
        threshold = load_checkpoint(run_dir / "stages" / stage / "verifiers.pt")[name]["threshold"]
        scores = verifier_cosines(run_dir, stage, name, features)
        if verifier:  # the whitened cosine ranks otherwise than the raw one: the index sees the verifier's space
            assert not np.allclose(scores, verifier_cosines(run_dir, stage, "cosine_pair", features), atol=1e-3)
    assert result.output.splitlines()[0] == f"scores: {name} of stage {stage}; same writer at >= {threshold:.4f}"
    assert_ranked(result.output, files, (2, 5), scores, 4)


def test_a_fusion_with_a_negative_weight_has_no_index(trained, tmp_path) -> None:
    run_dir, files, _ = trained
    copy_dir = tmp_path / "run"
    shutil.copytree(run_dir, copy_dir)
    outputs = copy_dir / "stages" / "fused" / "outputs.json"
    recorded = json.loads(outputs.read_text())
    recorded["metrics"]["fusion"]["weights"]["evaluate/wccn_pair"] = -0.5
    outputs.write_text(json.dumps(recorded))
    result = invoke("index", "build", copy_dir, *files, "--out", tmp_path / "index", "--stage", "fused")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {copy_dir}: stage 'fused' weighs evaluate/wccn_pair by -0.5 < 0: a negative "
                             "weight has no space of inner products (fit: mean weighs every member > 0)\n")


@pytest.mark.parametrize("options, message", [
    (["--stage", "evaluate", "--verifier", "sslhv_pair"],
     "verifier 'sslhv_pair' of stage 'evaluate' scores pairs without an embedding space; an index needs one "
     "(cosine_pair, wccn_pair, pcaw_pair, correlation_pair)"),
    (["--stage", "evaluate", "--verifier", "wccn"],
     "stage 'evaluate' has no verifier 'wccn'; have cosine_pair, wccn_pair, sslhv_pair"),
    (["--stage", "fused", "--verifier", "wccn_pair"],
     "stage 'fused' fuses its members into one verifier, 'fused'; drop --verifier wccn_pair"),
    (["--stage", "evaluate", "--features", "head"],
     "stage 'evaluate' scores pairs by its own features and test-time views; drop --features/--tta-shifts/--tta-zoom"),
    (["--verifier", "wccn_pair"], "--verifier needs --stage naming an evaluation or score_fusion stage of a run"),
])
def test_index_options_that_do_not_fit_the_stage_are_one_line_errors(trained, tmp_path, options, message) -> None:
    run_dir, files, _ = trained
    result = invoke("index", "build", run_dir, *files, "--out", tmp_path / "index", *options)
    assert result.exit_code == 2
    assert result.stderr == f"error: {message}\n"
    assert not (tmp_path / "index").exists()


def _refit_verifier(run_dir: Path) -> None:
    """Stage ``evaluate`` evaluated again with another fit: its WCCN mean moved."""
    path = run_dir / "stages" / "evaluate" / "verifiers.pt"
    fitted = torch.load(path, weights_only=False)
    fitted["wccn_pair"]["state"]["mean"] += 0.1
    torch.save(fitted, path)


def _reweigh_fusion(run_dir: Path) -> None:
    outputs = run_dir / "stages" / "fused" / "outputs.json"
    recorded = json.loads(outputs.read_text())
    recorded["metrics"]["fusion"]["weights"]["evaluate/wccn_pair"] *= 2
    outputs.write_text(json.dumps(recorded))


def _retrain_encoder(run_dir: Path) -> None:
    path = run_dir / "stages" / "train" / "encoder.pt"
    saved = torch.load(path, weights_only=False)
    next(iter(saved["backbone"].values())).add_(0.1)
    torch.save(saved, path)


@pytest.mark.parametrize("options, change, source", [
    (["--stage", "evaluate", "--verifier", "wccn_pair"], _refit_verifier, "stage evaluate of {run}"),
    (["--stage", "fused"], _refit_verifier, "stage fused of {run}"),
    (["--stage", "fused"], _reweigh_fusion, "stage fused of {run}"),
    ([], _retrain_encoder, "encoder {run}/stages/train/encoder.pt"),
])
def test_searching_an_index_whose_run_has_changed_since_is_a_one_line_error(trained, tmp_path, options, change,
                                                                            source) -> None:
    run_dir, files, _ = trained
    copy_dir = tmp_path / "run"
    shutil.copytree(run_dir, copy_dir)
    built = invoke("index", "build", copy_dir, *files, "--out", tmp_path / "index", *options)
    assert built.exit_code == 0, built.output
    assert invoke("index", "search", tmp_path / "index", files[0]).exit_code == 0
    change(copy_dir)
    result = invoke("index", "search", tmp_path / "index", files[0])
    assert result.exit_code == 2
    assert result.stderr == (f"error: {tmp_path / 'index'}: {source.format(run=copy_dir.resolve())} has changed since "
                             "the index was built (trained or evaluated again); build the index again\n")
