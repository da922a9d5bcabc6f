"""BatchNorm over the global batch: 2 gloo processes, each with half a batch, train as 1 process does.

Plain per-rank BatchNorm normalises each half by its own statistics, so its gradients, running
statistics and weights differ from one process's; :mod:`hvkit.sync_batchnorm` (which
``distributed.wrap`` puts in place) must give them to float64 precision.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hvkit import sync_batchnorm

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import sync_bn_worker  # noqa: E402


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, torchrun) -> dict[str, dict[str, torch.Tensor]]:
    found = {}
    for mode in ("synced", "per_rank"):
        out = tmp_path_factory.mktemp("sync_bn") / f"{mode}.pt"
        torchrun(HERE / "sync_bn_worker.py", str(out), mode)
        found[mode] = torch.load(out, weights_only=True)
    return found


def test_two_processes_train_as_one(two_processes):
    one = sync_bn_worker.train(rank=0, world_size=1)
    assert set(two_processes["synced"]) == set(one)
    for key, expected in one.items():
        torch.testing.assert_close(two_processes["synced"][key], expected, rtol=1e-10, atol=1e-12, msg=key)


def test_per_rank_statistics_train_otherwise(two_processes):
    """The check above can fail: each half normalised by its own statistics gives other gradients,
    running statistics and weights."""
    one = sync_bn_worker.train(rank=0, world_size=1)
    differ = [key for key, expected in one.items() if not torch.allclose(two_processes["per_rank"][key], expected)]
    assert {"grad.0.weight", "after.1.running_mean", "after.1.running_var", "after.4.weight", "eval_output"} <= set(differ)


def test_conversion_keeps_parameters_buffers_and_mode():
    net = sync_bn_worker.model()
    net[1].running_mean.fill_(0.5)
    net.eval()
    weight, mean = net[1].weight, net[1].running_mean
    converted = sync_batchnorm.convert(net)
    assert converted is net
    assert [type(m).__name__ for m in net if isinstance(m, nn.modules.batchnorm._BatchNorm)] == ["SyncBatchNorm"] * 3
    assert net[1].weight is weight and net[1].running_mean is mean and not net[1].training
    assert net[6].weight is None and net[6].momentum is None and net[5].momentum == 0.3
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    reference = sync_bn_worker.model()
    reference[1].running_mean.fill_(0.5)
    reference.eval()
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)  # a single process: plain BatchNorm


def test_a_bfloat16_input_is_normalised_in_float32_and_gets_a_bfloat16_gradient(tmp_path):
    """Under autocast a convolution hands BatchNorm bfloat16; it normalises in float32, as autocast's
    BatchNorm does, and returns the input's gradient in the input's dtype."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)).bfloat16().requires_grad_()
        weight, bias = torch.rand(3, requires_grad=True), torch.rand(3, requires_grad=True)
        y, mean, var = sync_batchnorm._GlobalBatchNorm.apply(x, weight, bias, 1e-5)
        (y * torch.arange(75.0).view(1, 3, 5, 5)).sum().backward()
        reference = x.detach().float().requires_grad_()
        expected = nn.functional.batch_norm(reference, None, None, weight.detach(), bias.detach(), True, 0.1, 1e-5)
        (expected * torch.arange(75.0).view(1, 3, 5, 5)).sum().backward()
    finally:
        dist.destroy_process_group()
    assert (y.dtype, x.grad.dtype, weight.grad.dtype) == (torch.float32, torch.bfloat16, torch.float32)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, reference.grad.bfloat16())
    torch.testing.assert_close(var, reference.detach().var((0, 2, 3)).double(), rtol=1e-6, atol=1e-6)
