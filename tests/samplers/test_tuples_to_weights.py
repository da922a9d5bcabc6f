"""TuplesToWeightsSampler: images drawn as often as a miner picks them, weights checked against PML's sampler."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning.miners import MultiSimilarityMiner as PMLMultiSimilarity
from pytorch_metric_learning.samplers import TuplesToWeightsSampler as PMLSampler

from hvkit.api import BatchSampler
from hvkit.engine import load_checkpoint
from hvkit.testing import check_sampler, run_recipe_text, tiny_recipe
from hvkit_plugins.miners.batch_hard import BatchHardMiner
from hvkit_plugins.miners.multi_similarity import MultiSimilarityMiner
from hvkit_plugins.samplers.tuples_to_weights import TuplesToWeightsSampler

LABELS = np.repeat(np.arange(10), 6)


def embeddings(seed: int = 0, spread: float = 0.8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(LABELS), 8)) + spread * rng.normal(size=(10, 8))[LABELS]
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


class _Rows(torch.utils.data.Dataset):
    """Precomputed embeddings as a dataset, for PML's sampler with an identity model."""

    def __init__(self, emb: np.ndarray):
        self.emb = emb

    def __len__(self) -> int:
        return len(self.emb)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.emb[i]), int(LABELS[i])


def pml_weights(emb: np.ndarray, miner) -> np.ndarray:
    sampler = PMLSampler(torch.nn.Identity(), miner, _Rows(emb), dataloader_num_workers=0,
                         data_device=torch.device("cpu"))
    iter(sampler)  # PML computes the weights when an epoch starts
    return sampler.weights.numpy()


def epoch(sampler: TuplesToWeightsSampler, e: int = 0) -> list[list[int]]:
    sampler.set_epoch(e)
    return list(sampler)


@pytest.mark.parametrize("seed", range(3))
def test_weights_equal_pytorch_metric_learnings_sampler(seed):
    emb = embeddings(seed)
    sampler = TuplesToWeightsSampler(LABELS, batch_size=12, miner=MultiSimilarityMiner(0.1))
    sampler.observe_embeddings(emb)
    reference = pml_weights(emb, PMLMultiSimilarity(0.1))
    np.testing.assert_allclose(sampler.weights, reference, rtol=1e-6, atol=1e-7)
    assert 0 < sampler.weights.min() and sampler.weights.max() == 1  # multi-similarity picks every image here


def test_each_image_weighs_its_count_in_the_mined_triplets():
    emb = embeddings(1)
    sampler = TuplesToWeightsSampler(LABELS, batch_size=12, miner=BatchHardMiner())
    sampler.observe_embeddings(emb)
    anchors, positives, negatives = BatchHardMiner()(torch.from_numpy(emb), torch.from_numpy(LABELS))
    counts = np.bincount(torch.cat([anchors, positives, negatives]).numpy(), minlength=len(LABELS))
    np.testing.assert_array_equal(sampler.weights, counts / counts.max())


def test_a_miner_that_finds_nothing_leaves_every_image_weight_one():
    sampler = TuplesToWeightsSampler(LABELS, batch_size=12, miner=lambda emb, labels: tuple(
        torch.empty(0, dtype=torch.long) for _ in range(3)))
    sampler.observe_embeddings(embeddings())
    np.testing.assert_array_equal(sampler.weights, np.ones(len(LABELS)))


def test_a_subset_is_mined_and_only_its_images_are_drawn():
    sampler = TuplesToWeightsSampler(LABELS, batch_size=6, miner=MultiSimilarityMiner(), subset_size=20)
    assert len(sampler) == 4  # ceil(20 / 6): PML's epoch of subset_size draws
    sampler.observe_embeddings(embeddings())
    subset = np.flatnonzero(sampler.weights)
    assert len(subset) <= 20 and set(np.concatenate(epoch(sampler))) <= set(subset.tolist())
    first = sampler.weights.copy()
    sampler.observe_embeddings(embeddings())
    assert not np.array_equal(first > 0, sampler.weights > 0)  # a fresh subset at each observation


def test_draws_follow_the_weights():
    # weights 1 for images 0-9, 0.25 for 10-19, 0 for the rest: with replacement, draws in proportion 4:1:0
    sampler = TuplesToWeightsSampler(LABELS, batch_size=10, replacement=True, batches_per_epoch=2000)
    sampler.load_state_dict({"weights": np.r_[np.ones(10), np.full(10, 0.25), np.zeros(40)],
                             "observations": np.array(1)})
    counts = np.bincount(np.concatenate(epoch(sampler)), minlength=len(LABELS))
    assert counts[20:].sum() == 0
    assert counts[:10].sum() / counts.sum() == pytest.approx(0.8, abs=0.01)
    assert any(len(set(b)) < len(b) for b in epoch(sampler))  # repeats inside a batch, as PML's


def test_without_replacement_batches_hold_distinct_images_weighted_first():
    sampler = TuplesToWeightsSampler(LABELS, batch_size=12, batches_per_epoch=50)
    weights = np.zeros(len(LABELS))
    weights[:8] = 1.0  # fewer weighted images than a batch: all of them, then 4 of the others
    sampler.load_state_dict({"weights": weights, "observations": np.array(1)})
    for batch in epoch(sampler):
        assert len(set(batch)) == 12 and set(range(8)) <= set(batch)
    weights[:30] = np.linspace(0.1, 1.0, 30)
    sampler.load_state_dict({"weights": weights, "observations": np.array(1)})
    drawn = np.concatenate(epoch(sampler))
    assert drawn.max() < 30 and all(len(set(b)) == 12 for b in epoch(sampler))
    counts = np.bincount(drawn, minlength=30)
    assert counts[20:30].sum() > counts[:10].sum()  # heavier images more often


def test_state_dict_restores_the_batches():
    sampler = TuplesToWeightsSampler(LABELS, batch_size=12, miner=MultiSimilarityMiner(), subset_size=30)
    sampler.observe_embeddings(embeddings(2))
    restored = TuplesToWeightsSampler(LABELS, batch_size=12, miner=MultiSimilarityMiner(), subset_size=30)
    restored.load_state_dict(sampler.state_dict())
    assert epoch(restored, 3) == epoch(sampler, 3) != epoch(TuplesToWeightsSampler(LABELS, batch_size=12), 3)
    assert restored.observations == 1
    with pytest.raises(ValueError, match="60 non-negative finite weights, not all 0"):
        restored.load_state_dict({"weights": np.zeros(60), "observations": np.array(0)})


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 61}, "batch_size 61 exceeds the 60 examples"),
    ({"subset_size": 1}, "subset_size must be between 2 and the 60 examples, got 1"),
    ({"subset_size": 61}, "subset_size must be between 2 and the 60 examples, got 61"),
    ({"refresh_every": 0}, "refresh_every must be at least 1"),
    ({"batches_per_epoch": 0}, "batches_per_epoch must be at least 1"),
    ({"miner": "multi_similarity"}, "miner must be a built miner"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TuplesToWeightsSampler(LABELS, **{"batch_size": 12, **kwargs})


@pytest.mark.parametrize("shape", [(59, 8), (60, 0), (60,)])
def test_embeddings_of_the_wrong_shape_raise(shape):
    with pytest.raises(ValueError, match=r"embeddings must have shape \(60, D\)"):
        TuplesToWeightsSampler(LABELS, batch_size=12).observe_embeddings(np.zeros(shape))


class _Observed(TuplesToWeightsSampler):
    """Observed at construction, for the contract check."""

    def __init__(self, labels: list[int], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 replacement: bool = False):
        super().__init__(labels, batch_size, seed, rank, world_size, miner=MultiSimilarityMiner(),
                         replacement=replacement)
        rng = np.random.default_rng(0)
        emb = rng.normal(size=(int(self.labels.max()) + 1, 8))[self.labels] + rng.normal(size=(len(self.labels), 8))
        self.observe_embeddings(emb / np.linalg.norm(emb, axis=1, keepdims=True))


@pytest.mark.parametrize("factory, params, repeats", [
    (TuplesToWeightsSampler, {"miner": MultiSimilarityMiner()}, False),
    (_Observed, {}, False),
    (_Observed, {"replacement": True}, True),
])
def test_conforms_to_the_sampler_contract(factory, params, repeats):
    check_sampler(factory, params, allow_repeats=repeats)
    assert isinstance(factory(LABELS, 12, **params), BatchSampler)


def test_a_recipe_trains_with_it_and_the_sampler_observes_each_epoch(tmp_path: Path):
    text = tiny_recipe("""
      train:
        stage: metric_train
        label_fraction: 1.0
        batch_size: 12
        sampler: {name: tuples_to_weights, miner: batch_hard}
        train: {epochs: 2, log_every: 1, amp: false}
    """, name="tuples_to_weights", writers=12, samples_per_writer=4)
    run_dir = run_recipe_text(text, tmp_path)
    rows = [json.loads(line) for line in (run_dir / "stages" / "train" / "log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(row["loss"]) for row in rows)
    state = load_checkpoint(run_dir / "stages" / "train" / "last.pt")["modules"]["sampler"]["_extra_state"]
    assert state["epoch"] == 1 and int(state["state"]["observations"]) == 2  # before epochs 0 and 1
    weights = state["state"]["weights"].numpy()
    assert weights.max() == 1 and weights.min() < 1  # batch-hard picked some images more than others
