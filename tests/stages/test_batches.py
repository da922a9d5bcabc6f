"""The batches every training stage draws: its images by split, its sampler, the sampler's order per epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvkit.errors import HvkitError
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.stages.batches import epoch_batches

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
