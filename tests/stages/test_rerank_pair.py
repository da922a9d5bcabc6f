"""Re-ranking in a run: each split's pairs scored within that split, fused, refused by ``hvkit verify``; retrieval."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from hvkit.cli import main
from hvkit.engine import load_checkpoint
from hvkit.engine.context import build
from hvkit.errors import HvkitError
from hvkit.evaluation import EvalData, evaluate
from hvkit.index.rerank import k_reciprocal_scores
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.pairs import sslhv_pairs
from hvkit_plugins.evaluators.retrieval import Rerank, Retrieval
from hvkit_plugins.stages.encoder import embed, load_encoder
from hvkit_plugins.stages.evaluate import load_pair_scores

from .test_evaluate import RECIPE as EVALUATE

SEED = EVALUATE["seed"]
RECIPE = copy.deepcopy(EVALUATE)
RECIPE["stages"]["evaluate"].update(
    verifiers=["wccn_pair", {"name": "rerank_pair", "k1": 6, "k2": 2}], space="wccn_pair",
    evaluators=["verification", {"name": "retrieval", "clustering": False, "rerank": {"pool": 20, "k1": 6, "k2": 2}}])
RECIPE["stages"]["fusion"] = {"stage": "score_fusion", "fit": "mean", "plots": False,
                              "members": ["evaluate/wccn_pair", "evaluate/rerank_pair"]}


def test_each_splits_pairs_are_re_ranked_within_that_split(tmp_path: Path) -> None:
    run_dir = run_recipe_text(yaml.safe_dump(RECIPE, sort_keys=False), tmp_path)
    stage_dir = run_dir / "stages" / "evaluate"
    fitted = load_checkpoint(stage_dir / "verifiers.pt")
    head = build(get_registry(), "head", fitted["rerank_pair"]["spec"], in_dim=16)
    head.load_state_dict(fitted["rerank_pair"]["state"])
    torch.testing.assert_close(head.base.transform, fitted["wccn_pair"]["state"]["transform"])
    encoder, _ = load_encoder(run_dir / "stages" / "train" / "encoder.pt", get_registry(), torch.device("cpu"))
    data = cedar_and(synthetic_writers=40, synthetic_samples_per_writer=6, seed=SEED)
    for part, file in (("val", "val_pair_scores.npz"), ("test", "test_pair_scores.npz")):
        split = data.splits[part]
        i, j, _ = sslhv_pairs(np.asarray(split.labels), seed=SEED)
        space = head.base.embed(embed(encoder, split.images, torch.device("cpu")))
        expected = k_reciprocal_scores(space, np.stack([i, j], 1), k1=6, k2=2, weight=0.3)
        saved = load_pair_scores(stage_dir / file)["rerank_pair"][0].scores
        np.testing.assert_allclose(saved, expected, rtol=1e-5, atol=1e-5)
    metrics = yaml.safe_load((run_dir / "metrics.json").read_text())
    retrieval = evaluate([Retrieval(clustering=False, rerank=Rerank(pool=20, k1=6, k2=2))],
                         EvalData(space.numpy(), np.asarray(split.labels)))["retrieval"]  # the test split, last
    for key in ("precision_at_1", "map_at_r", "rerank"):
        assert metrics["evaluate"]["retrieval"][key] == pytest.approx(retrieval[key], abs=1e-6)
    assert (f"Retrieval among the test writers in the wccn_pair space, k-reciprocal re-ranked: precision@1 "
            f"{retrieval['precision_at_1']:.4f}") in (run_dir / "report.md").read_text()
    assert metrics["evaluate"]["verification"]["rerank_pair"]["threshold"] == fitted["rerank_pair"]["threshold"]
    assert 0.0 < metrics["fusion"]["verification"]["fused"]["roc_auc"] <= 1.0

    test = data.splits["test"]
    files = []
    for k in (0, 5):
        files.append(tmp_path / f"word{k}.png")
        Image.fromarray(255 - test.images[k, 0].numpy()).save(files[-1])
    result = CliRunner().invoke(main, ["verify", str(run_dir), *map(str, files), "--verifier", "rerank_pair"])
    assert result.exit_code != 0
    assert ("verifier 'rerank_pair' of stage 'evaluate' scores a pair among the other images of its set; two files "
            "alone are none: choose a verifier that scores a pair by itself (wccn_pair)") in result.output


def test_it_has_no_space_of_its_own(tmp_path: Path) -> None:
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["evaluate"]["space"] = "rerank_pair"
    del recipe["stages"]["fusion"]
    with pytest.raises(HvkitError, match="verifier 'rerank_pair' scores pairs without an embedding space"):
        run_recipe_text(yaml.safe_dump(recipe, sort_keys=False), tmp_path)
