"""Alignment and uniformity: value and gradient against float64 loops of the paper's definitions and its code's
pdist formula, a hand-computed case, the terms and their logging by ssl_pretrain, gradcheck, autocast, training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hvkit.engine.trainer import read_log
from hvkit.testing import check_loss, run_recipe_text, tiny_recipe
from hvkit_plugins.losses.align_uniform import AlignUniformLoss, alignment, uniformity

from .pair_batch import assert_full_precision_under_autocast


def _views(n: int, d: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 100 + n * 10 + d)
    z_a = torch.randn(n, d, generator=g, dtype=dtype)
    z_b = z_a + 0.8 * torch.randn(n, d, generator=g, dtype=dtype)
    return z_a.requires_grad_(), z_b.requires_grad_()


def _loops(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float, t: float,
           lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, L_align, mean L_uniform) in float64 loops of scalars, straight from the paper's definitions."""
    n, d = z_a.shape

    def unit(z: torch.Tensor) -> list[list[torch.Tensor]]:
        rows = [[z[i, k].double() for k in range(d)] for i in range(n)]
        return [[x / torch.sqrt(sum(v * v for v in row)) for x in row] for row in rows]

    def squared(u: list[torch.Tensor], v: list[torch.Tensor]) -> torch.Tensor:
        return sum((a - b) ** 2 for a, b in zip(u, v))

    x, y = unit(z_a), unit(z_b)
    aligned = sum(squared(x[i], y[i]) ** (alpha / 2) for i in range(n)) / n
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    uniform = [torch.log(sum(torch.exp(-t * squared(z[i], z[j])) for i, j in pairs) / len(pairs)) for z in (x, y)]
    mean_uniform = (uniform[0] + uniform[1]) / 2
    return aligned + lam * mean_uniform, aligned, mean_uniform


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, d, alpha, t, lam", [(6, 4, 2.0, 2.0, 1.0), (5, 7, 1.0, 3.0, 0.5),
                                                 (2, 3, 3.0, 1.0, 2.0), (8, 3, 0.5, 2.0, 0.0)])
def test_value_gradient_and_terms_against_the_papers_definitions_in_loops(dtype, n, d, alpha, t, lam):
    z_a, z_b = _views(n, d, dtype)
    loss = AlignUniformLoss(alpha, t, lam)
    value = loss(z_a, z_b)
    assert value.dtype == dtype
    expected, aligned, uniform = _loops(z_a, z_b, alpha, t, lam)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(value.double(), expected, **tol)
    terms = loss.terms()
    assert set(terms) == {"alignment", "uniformity"} and not any(v.requires_grad for v in terms.values())
    torch.testing.assert_close(terms["alignment"].double(), aligned.detach(), **tol)
    torch.testing.assert_close(terms["uniformity"].double(), uniform.detach(), **tol)
    for got, want in zip(torch.autograd.grad(value, (z_a, z_b)), torch.autograd.grad(expected, (z_a, z_b))):
        torch.testing.assert_close(got, want.to(dtype), **tol)


@pytest.mark.parametrize("alpha, t", [(2.0, 2.0), (1.0, 5.0)])
def test_terms_equal_the_official_codes_pdist_formulas(alpha, t):
    # the paper's code: (x - y).norm(dim=1).pow(alpha).mean() and torch.pdist(x).pow(2).mul(-t).exp().mean().log()
    x, y = (F.normalize(z.detach(), dim=1) for z in _views(9, 5))
    torch.testing.assert_close(alignment(x, y, alpha), (x - y).norm(dim=1).pow(alpha).mean())
    torch.testing.assert_close(uniformity(x, t), torch.pdist(x).pow(2).mul(-t).exp().mean().log())


def test_a_hand_computed_case():
    # x = (e1, e2, -e1), y = (e1, -e2, e2): the pairs' squared distances 0, 4, 2 (alignment 2 for alpha 2,
    # (2 + sqrt 2) / 3 for alpha 1); within each view two pairs at squared distance 2 and one at 4, so
    # each uniformity is log((2 e^{-2t} + e^{-4t}) / 3).
    e = torch.eye(2, dtype=torch.float64)
    x, y = torch.stack([e[0], e[1], -e[0]]), torch.stack([e[0], -e[1], e[1]])
    uniform = math.log((2 * math.exp(-4) + math.exp(-8)) / 3)
    assert AlignUniformLoss()(x, y).item() == pytest.approx(2 + uniform, rel=1e-14)
    loss = AlignUniformLoss(alpha=1.0, uniformity_weight=0.5)
    assert loss(3 * x, y).item() == pytest.approx((2 + math.sqrt(2)) / 3 + 0.5 * uniform, rel=1e-14)
    assert loss.terms()["uniformity"].item() == pytest.approx(uniform, rel=1e-14)


def test_antipodal_pair_reaches_the_uniformity_minimum_and_a_collapse_zero():
    z = torch.tensor([[0.0, 2.0], [0.0, -3.0]], dtype=torch.float64)
    assert uniformity(F.normalize(z, dim=1), 1.5).item() == pytest.approx(-6.0, rel=1e-14)  # -t * 4
    collapsed = F.normalize(torch.ones(5, 3, dtype=torch.float64), dim=1)
    assert uniformity(collapsed, 2.0).item() == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_identical_views_have_zero_alignment_and_a_finite_gradient(alpha):
    z = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    loss = AlignUniformLoss(alpha=alpha)
    value = loss(z, z.detach().clone())
    assert loss.terms()["alignment"].item() == 0.0
    value.backward()
    assert torch.isfinite(z.grad).all()
    same = torch.ones(5, 3, dtype=torch.float64, requires_grad=True)
    AlignUniformLoss(alpha=alpha)(same, same).backward()
    assert torch.isfinite(same.grad).all()


def test_invariant_to_scale_batch_order_and_view_order():
    z_a, z_b = _views(7, 4)
    loss = AlignUniformLoss()
    value = loss(z_a, z_b)
    torch.testing.assert_close(loss(2.5 * z_a, 0.1 * z_b), value)
    torch.testing.assert_close(loss(z_b, z_a), value)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss(z_a[order], z_b[order]), value)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_gradcheck(alpha):
    z_a, z_b = _views(4, 3)
    assert torch.autograd.gradcheck(AlignUniformLoss(alpha=alpha, t=1.5, uniformity_weight=0.7), (z_a, z_b))


def test_runs_in_float32_under_autocast():
    z_a, z_b = _views(16, 32, torch.float32)
    assert_full_precision_under_autocast(AlignUniformLoss(), z_a, z_b)


def _noisy_views(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy views of 32 points drawn around 4 centres in 10 dimensions (a crowded start)."""
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))[torch.randint(0, 4, (32,), generator=generator)]
    x = x + 0.5 * torch.randn(32, 10, generator=generator)
    return x + 0.3 * torch.randn(32, 10, generator=generator), x + 0.3 * torch.randn(32, 10, generator=generator)


def test_training_lowers_the_loss_and_spreads_the_embeddings():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    loss = AlignUniformLoss()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    values, uniform = [], []
    for _ in range(60):
        optimiser.zero_grad()
        value = loss(*[model(v) for v in _noisy_views(g)])
        value.backward()
        optimiser.step()
        values.append(value.item())
        uniform.append(loss.terms()["uniformity"].item())
    assert sum(values[-5:]) / 5 < sum(values[:5]) / 5 - 0.5, values
    assert sum(uniform[-5:]) / 5 < sum(uniform[:5]) / 5 - 0.5, uniform


def test_conformance():
    check_loss(AlignUniformLoss)
    check_loss(AlignUniformLoss, {"alpha": 1.0, "t": 3.0, "uniformity_weight": 0.5})


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 0.0}, "alpha must be > 0, got 0.0; the paper uses 2"),
    ({"t": -1.0}, "t must be > 0, got -1.0; the paper uses 2"),
    ({"uniformity_weight": -0.5}, "uniformity_weight must be >= 0, got -0.5; the paper uses 1"),
])
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=f"^align_uniform: {match}"):
        AlignUniformLoss(**kwargs)


def test_invalid_views_raise():
    with pytest.raises(ValueError, match="align_uniform: needs a batch of at least 2"):
        AlignUniformLoss()(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="align_uniform: expected two"):
        AlignUniformLoss()(torch.randn(4, 4), torch.randn(3, 4))


RECIPE = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    loss: align_uniform
    head: {name: mlp, dims: [16, 16]}
    batch_size: 8
    train: {epochs: 1, max_steps: 3, log_every: 1}
""", name="align_uniform")


def test_ssl_pretrain_logs_the_terms_of_each_step(tmp_path: Path) -> None:
    run_dir = run_recipe_text(RECIPE, tmp_path, "run")
    log = read_log(run_dir / "stages" / "pretrain" / "log.jsonl")
    assert [row["step"] for row in log] == [1, 2, 3]
    for row in log:
        assert row["loss"] == pytest.approx(row["alignment"] + row["uniformity"], rel=1e-5, abs=1e-6)
        assert 0 <= row["alignment"] <= 4 and -4 <= row["uniformity"] <= 0  # squared distances of unit vectors
