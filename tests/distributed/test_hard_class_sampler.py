"""A sampler that observes embeddings draws the same global batches on 2 gloo processes as on 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.nn.functional as F

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import hard_class_worker as worker  # noqa: E402


def single_process_batches(rank_embeddings: int) -> list[list[list[int]]]:
    sampler = worker.sampler()
    sampler.observe_embeddings(F.normalize(worker.embeddings(rank_embeddings), dim=1).numpy())
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    return epochs


def test_rank_0_embeds_and_every_rank_observes_its_embeddings(tmp_path, torchrun):
    out = tmp_path / "batches.json"
    torchrun(HERE / "hard_class_worker.py", str(out))
    ranks = json.loads(out.read_text())
    assert [r["calls"] for r in ranks] == [[0, 0], []]  # before epochs 0 and 1, on rank 0 alone
    expected = single_process_batches(0)
    assert expected != single_process_batches(1)  # rank 1's own embeddings would give other batches
    for epoch, batches in enumerate(expected):
        assert len(ranks[0]["shares"][epoch]) == len(ranks[1]["shares"][epoch]) == len(batches)
        for step, batch in enumerate(batches):
            assert ranks[0]["shares"][epoch][step] + ranks[1]["shares"][epoch][step] == batch
