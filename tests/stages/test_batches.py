"""The batches every training stage draws: its images by split, its sampler, the sampler's order per epoch."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hvkit.errors import HvkitError, RecipeError
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.stages.batches import epoch_batches, image_sampler, sampler_batches

PRETRAIN = """
  pretrain:
    stage: {stage}
    splits: [train, nowhere]
    batch_size: 8
    train: {{epochs: 1, max_steps: 1}}
"""


@pytest.mark.parametrize("stage, backbone", [("ssl_pretrain", "small_cnn"), ("vae_pretrain", "small_cnn"),
                                             ("mae_pretrain", "{name: vit, image_size: 32, layers: 1}")])
def test_a_pretraining_split_the_dataset_lacks_is_a_one_line_error(tmp_path: Path, stage: str, backbone: str) -> None:
    text = tiny_recipe(PRETRAIN.format(stage=stage), name="missing_split", backbone=backbone)
    if stage == "vae_pretrain":
        text = text.replace("    batch_size: 8\n", "    backbone: {name: resnet_vae, image_size: 32}\n    batch_size: 8\n")
    with pytest.raises(HvkitError, match=r"stage .pretrain.: dataset has no split .nowhere. \(has test, val, train\)"):
        run_recipe_text(text, tmp_path)


@pytest.mark.parametrize("stage, backbone", [("ssl_pretrain", "small_cnn"), ("vae_pretrain", "small_cnn"),
                                             ("mae_pretrain", "{name: vit, image_size: 32, layers: 1}")])
def test_an_unlabelled_stage_refuses_a_sampler_that_needs_embeddings_at_validation(tmp_path: Path, stage: str,
                                                                                   backbone: str) -> None:
    text = tiny_recipe(PRETRAIN.format(stage=stage).replace("[train, nowhere]", "[train]")
                       + "    sampler: {name: hard_class, samples_per_class: 2}\n", name="hard_unlabelled", backbone=backbone)
    if stage == "vae_pretrain":
        text = text.replace("    batch_size: 8\n", "    backbone: {name: resnet_vae, image_size: 32}\n    batch_size: 8\n")
    with pytest.raises(RecipeError, match=r"recipe\.yaml:stages\.pretrain\.sampler: sampler hard_class learns from "
                                          r"the embeddings of labelled writers \(needs_embeddings\), which only "
                                          r"metric_train gives it; use random or pk for unlabelled images$"):
        run_recipe_text(text, tmp_path)
    assert not (tmp_path / "recipe").exists()


def test_image_sampler_refuses_a_sampler_that_says_it_needs_embeddings_only_once_built() -> None:
    built = SimpleNamespace(needs_embeddings=True)  # declared by the instance: validation cannot see it
    ctx = SimpleNamespace(build=lambda kind, spec, **context: built, seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"^sampler mine learns from the embeddings of labelled writers"):
        image_sampler(ctx, {"name": "mine"}, 10, 2)


class _Sampler:
    """Batches of one index each, in an order that names the epoch it was set to."""

    def __init__(self) -> None:
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter([[self.epoch], [self.epoch + 10]])

    def __len__(self) -> int:
        return 2


def test_epoch_batches_sets_the_epoch_before_each_pass() -> None:
    batches = epoch_batches(_Sampler())
    assert list(batches(3)) == [[3], [13]]
    assert list(batches(0)) == [[0], [10]]


CTX = SimpleNamespace(is_main=True, log=lambda message: None)


class _Observing(_Sampler):
    """Records the epochs and the embeddings it observes; its state is the number of observations."""

    needs_embeddings = True
    refresh_every = 3

    def __init__(self) -> None:
        super().__init__()
        self.observed: list[tuple[int, np.ndarray]] = []

    def observe_embeddings(self, embeddings: np.ndarray) -> None:
        self.observed.append((self.epoch, embeddings))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"count": np.array(len(self.observed))}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.observed = [(-1, np.empty(0))] * int(state["count"])


def test_sampler_batches_leave_a_sampler_without_needs_embeddings_alone() -> None:
    batches, modules = sampler_batches(CTX, _Sampler(), lambda: pytest.fail("embedded for a plain sampler"))
    assert modules == {}
    assert list(batches(3)) == [[3], [13]]


def test_a_sampler_that_needs_embeddings_observes_them_normalised_every_refresh_once() -> None:
    sampler, calls = _Observing(), []

    def embed() -> torch.Tensor:
        calls.append(1)
        return torch.tensor([[3.0, 4.0], [0.0, -2.0]]) * len(calls)

    batches, modules = sampler_batches(CTX, sampler, embed)
    for epoch in [0, 1, 2, 3, 3, 4, 5, 6]:  # epoch 3 twice: asked again, as a resumed run does
        assert list(batches(epoch)) == [[epoch], [epoch + 10]]
    assert [epoch for epoch, _ in sampler.observed] == [-1, 2, 5]  # before set_epoch(0), (3), (6)
    np.testing.assert_allclose(sampler.observed[0][1], [[0.6, 0.8], [0.0, -1.0]])
    assert len(calls) == 3

    resumed = _Observing()  # a run resumed inside epoch 6 restores the state and does not observe again
    again, resumed_modules = sampler_batches(CTX, resumed, lambda: pytest.fail("embedded again"))
    resumed_modules["sampler"].load_state_dict(modules["sampler"].state_dict())
    assert list(again(6)) == [[6], [16]] and len(resumed.observed) == 3
