"""Every registered loss on each device and precision the engine trains in.

On CUDA (skipped without it) the float64 value and every gradient (inputs and the loss's own
parameters, e.g. proxies) must equal the CPU's to rounding, random draws included (they are
taken on the CPU for both). Under bf16 autocast, on the CPU and on CUDA, the value must stay
finite and within 2% of float32's. A loss with a momentum teacher also sees
``observe_teacher`` once, and its next value must agree too (DINO's centre). A loss that takes
feature maps (VICRegL) also gets two 5 x 5 maps and their cells' positions. A loss that is
neither a metric nor a view loss takes the inputs ``OWN_INPUTS`` makes for it (the VAE's ELBO).
"""

from __future__ import annotations

import pytest
import torch

from hvkit.api import MetricLoss, ViewLoss
from hvkit.engine.context import build
from hvkit.registry import get_registry

DIM, CLASSES, BATCH = 16, 4, 32
WRAPPED = {"dense_anchor": {"name": "dense_anchor", "loss": "multi_similarity"},
           "xbm": {"name": "xbm", "loss": "contrastive"},
           "weighted_sum": {"name": "weighted_sum", "losses": ["tuplet_margin", "intra_pair_variance"]},
           "regularized": {"name": "regularized", "loss": "arcface", "weight_regularizer": "regular_face",
                           "embedding_regularizer": "lp"},
           "self_supervised": {"name": "self_supervised", "loss": "triplet"}}
LOSSES = sorted(get_registry().names("loss"))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def draws_on_cpu(monkeypatch):
    """``torch.rand`` draws from the CPU generator and moves the result, so devices draw alike."""
    draw = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *size, device=None, **kw: draw(*size, **kw).to(device))


def _vae_inputs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(x, recon, mu, logvar) of a VAE from the two input draws: images in [0, 1], latents."""
    x = torch.sigmoid(b.detach()).view(BATCH, 1, 4, 4)
    return x, torch.sigmoid(a).view(BATCH, 1, 4, 4), a, b


OWN_INPUTS = {"vae_elbo": _vae_inputs}


def _built(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    loss = build(get_registry(), "loss", WRAPPED.get(name, name), embedding_dim=DIM, num_classes=CLASSES,
                 map_channels=DIM)
    if not isinstance(loss, (MetricLoss, ViewLoss)) and name not in OWN_INPUTS:
        pytest.fail(f"{name} is neither a MetricLoss nor a ViewLoss: give its inputs in OWN_INPUTS")
    return loss.to(device)


def _run(name: str, device: str, dtype: torch.dtype, autocast: bool = False) -> list[torch.Tensor]:
    """[value, gradients of the inputs and parameters …, value after observe_teacher], moved to the CPU."""
    loss = _built(name, device).to(dtype)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
    b = a + 0.3 * torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
    a = a.to(device, dtype).requires_grad_()
    teacher = getattr(loss, "needs_teacher", False)
    b = b.to(device, dtype).requires_grad_(not teacher)
    maps = {}
    if getattr(loss, "takes_feature_maps", False):
        m_a = torch.randn(BATCH, DIM, 5, 5, generator=g, dtype=torch.float64)
        m_b = m_a + 0.3 * torch.randn(m_a.shape, generator=g, dtype=torch.float64)
        cells = torch.linspace(-0.8, 0.8, 5, dtype=torch.float64)
        p_a = torch.stack(torch.meshgrid(cells, cells, indexing="xy"), -1).expand(BATCH, 5, 5, 2)
        maps = {"maps": tuple(m.to(device, dtype).requires_grad_() for m in (m_a, m_b)),
                "positions": (p_a.to(device, dtype), (0.7 * p_a + 0.1).to(device, dtype))}
    leaves = [a] + ([] if teacher else [b]) + list(maps.get("maps", ())) + [
        p for p in loss.parameters() if p.requires_grad]
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        if isinstance(loss, MetricLoss):
            value = loss(a, (torch.arange(BATCH) % CLASSES).to(device))
        elif isinstance(loss, ViewLoss):
            value = loss(a, b, **maps)
        else:
            value = loss(*OWN_INPUTS[name](a, b))
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    out = [value.detach()] + [torch.zeros_like(x) if d is None else d for x, d in zip(leaves, grads)]
    if teacher:
        with torch.no_grad():
            loss.observe_teacher([b.detach(), a.detach()])
            out.append(loss(a, b).detach())
    return [t.cpu() for t in out]


@needs_cuda
@pytest.mark.parametrize("name", LOSSES)
def test_loss_on_cuda_equals_cpu(name, draws_on_cpu):
    cpu = _run(name, "cpu", torch.float64)
    gpu = _run(name, "cuda", torch.float64)
    assert len(cpu) == len(gpu)
    for i, (c, d) in enumerate(zip(cpu, gpu)):
        torch.testing.assert_close(d, c, rtol=1e-7, atol=1e-9, msg=lambda m: f"{name} output {i}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", LOSSES)
def test_loss_under_bf16_autocast_stays_near_float32(name, device):
    full = _run(name, device, torch.float32)[0]
    mixed = _run(name, device, torch.float32, autocast=True)[0]
    assert torch.isfinite(mixed)
    torch.testing.assert_close(mixed.float(), full, rtol=2e-2, atol=1e-3)
