"""The gather policy: 2 gloo processes, each with half a batch, give 1 process's gradients.

For every loss plugin that declares ``needs_global_batch`` (and a classifier loss that does
not, whose weights must be averaged), parameter gradients after DDP averaging must equal
those of one process on the whole batch — two well-known libraries were off by the
world size here for years.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hvkit.registry import get_registry, set_registry

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def global_batch_losses() -> list[str]:
    set_registry(None)
    registry = get_registry()
    names = [n for n, e in registry.entries.get("loss", {}).items()
             if getattr(e.factory, "needs_global_batch", False) and "loss" not in
             __import__("inspect").signature(e.factory).parameters]
    return sorted(names)


@pytest.fixture(scope="module")
def ddp_gradients(tmp_path_factory, torchrun) -> dict[str, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("ddp") / "grads.pt"
    torchrun(HERE / "ddp_worker.py", str(out), *global_batch_losses(), "arcface")
    return torch.load(out, weights_only=True)


def test_every_global_batch_loss_is_covered():
    assert {"vicreg", "supcon", "ntxent", "nbc_softmax"} <= set(global_batch_losses())


@pytest.mark.parametrize("name", global_batch_losses() + ["arcface"])
def test_two_processes_give_the_single_process_gradient(name, ddp_gradients, monkeypatch):
    monkeypatch.delenv("HVKIT_PLUGINS", raising=False)
    set_registry(None)
    expected = ddp_worker.gradients(name, rank=0, world_size=1)
    got = ddp_gradients[name]
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-9, atol=1e-12, msg=f"{name}: {key}")
