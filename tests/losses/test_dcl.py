"""DCL and DCLW: value and gradient against float64 loops of the paper's formula, hand-computed cases, NT-Xent
(pytorch-metric-learning's, per anchor) with its positive share removed, gradcheck, autocast, training, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.reducers import DoNothingReducer

from hvkit.testing import check_loss
from hvkit_plugins.losses.dcl import DCLLoss, negative_von_mises_fisher_weights
from hvkit_plugins.losses.ntxent import NTXentLoss

from .pair_batch import assert_full_precision_under_autocast


def _views(n: int, d: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 100 + n * 10 + d)
    z_a = torch.randn(n, d, generator=g, dtype=dtype)
    z_b = z_a + 0.8 * torch.randn(n, d, generator=g, dtype=dtype)
    return z_a.requires_grad_(), z_b.requires_grad_()


def _loops(z_a: torch.Tensor, z_b: torch.Tensor, tau: float, sigma: float | None = None) -> torch.Tensor:
    """The paper's L_i in float64 loops of scalars, averaged over the 2B anchors; DCLW's weights as plain floats."""
    n = z_a.shape[0]
    rows = [z_a[i].double() for i in range(n)] + [z_b[i].double() for i in range(n)]
    unit = [row / torch.sqrt(sum(x * x for x in row)) for row in rows]

    def cos(i: int, k: int) -> torch.Tensor:
        return sum(a * b for a, b in zip(unit[i], unit[k]))

    weights = [1.0] * n
    if sigma is not None:
        potentials = [math.exp(cos(i, i + n).item() / sigma) for i in range(n)]
        weights = [2 - p / (sum(potentials) / n) for p in potentials]
    total = 0
    for i in range(2 * n):
        twin = (i + n) % (2 * n)
        denominator = sum(torch.exp(cos(i, k) / tau) for k in range(2 * n) if k not in (i, twin))
        total = total - weights[i % n] * cos(i, twin) / tau + torch.log(denominator)
    return total / (2 * n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, d, tau, sigma", [(6, 4, 0.1, None), (5, 7, 0.5, None), (2, 3, 0.2, None),
                                              (6, 4, 0.1, 0.5), (7, 3, 0.3, 0.2), (2, 5, 1.0, 2.0)])
def test_value_and_gradient_against_the_papers_formula_in_loops(dtype, n, d, tau, sigma):
    z_a, z_b = _views(n, d, dtype)
    value = DCLLoss(tau, sigma)(z_a, z_b)
    assert value.dtype == dtype
    expected = _loops(z_a, z_b, tau, sigma)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(value.double(), expected, **tol)
    for got, want in zip(torch.autograd.grad(value, (z_a, z_b)), torch.autograd.grad(expected, (z_a, z_b))):
        torch.testing.assert_close(got, want.to(dtype), **tol)


def test_a_hand_computed_case():
    # a_0 = (1, 0), a_1 = (0, 1), b_0 = (0.6, 0.8), b_1 = (0.8, 0.6), tau 1: both positives have cosine 0.6;
    # a_0 meets a_1 (0) and b_1 (0.8), a_1 meets a_0 (0) and b_0 (0.8), b_0 meets a_1 (0.8) and b_1 (0.96),
    # b_1 meets a_0 (0.8) and b_0 (0.96).
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_b = torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    expected = -0.6 + (math.log(1 + math.exp(0.8)) + math.log(math.exp(0.8) + math.exp(0.96))) / 2
    assert DCLLoss(1.0)(z_a, z_b).item() == pytest.approx(expected, rel=1e-14)
    # equal positive cosines give every DCLW weight 1
    assert DCLLoss(1.0, 0.5)(z_a, z_b).item() == pytest.approx(expected, rel=1e-14)


def test_a_hand_computed_dclw_case():
    # a_0 = b_0 = e_1 (cosine 1), a_1 = e_2, b_1 = e_3 (cosine 0), every other pair orthogonal. With sigma = 1 / ln 3
    # the potentials are 3 and 1, mean 2: w_0 = 2 - 3/2 = 1/2, w_1 = 2 - 1/2 = 3/2. Each anchor's two negatives
    # have cosine 0 (log 2); the pulls are w_0 * 1 for a_0 and b_0, w_1 * 0 for a_1 and b_1: L = log 2 - 1/4.
    z_a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    z_b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    sigma = 1 / math.log(3)
    weights = negative_von_mises_fisher_weights(torch.tensor([1.0, 0.0], dtype=torch.float64), sigma)
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert DCLLoss(1.0, sigma)(z_a, z_b).item() == pytest.approx(math.log(2) - 0.25, rel=1e-14)
    assert DCLLoss(1.0)(z_a, z_b).item() == pytest.approx(math.log(2) - 0.5, rel=1e-14)


def test_weights_average_one_favour_hard_positives_and_carry_no_gradient():
    positive = torch.tensor([0.9, 0.1, -0.3, 0.5], dtype=torch.float64, requires_grad=True)
    weights = negative_von_mises_fisher_weights(positive, 0.5)
    assert not weights.requires_grad
    assert weights.mean().item() == pytest.approx(1.0, rel=1e-14)
    assert weights.argsort().tolist() == [0, 3, 1, 2]  # lower similarity, more weight
    torch.testing.assert_close(negative_von_mises_fisher_weights(positive, 1e12), torch.ones(4, dtype=torch.float64))


def _pml_per_anchor(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> torch.Tensor:
    """PML's NT-Xent of each of the 2B anchors (labels [0..B-1, 0..B-1], one positive each), not reduced."""
    instance = torch.arange(z_a.shape[0])
    loss = pml_losses.NTXentLoss(temperature=tau, reducer=DoNothingReducer())
    return loss(torch.cat([z_a, z_b]), torch.cat([instance, instance]))["loss"]["losses"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_equals_pml_ntxent_per_anchor_with_the_positives_share_removed(dtype, tau):
    # NT-Xent_i = -log(p_i), p_i = e^{s+} / (e^{s+} + N_i); DCL_i = -s+ + log N_i = NT-Xent_i + log(1 - p_i).
    z_a, z_b = _views(10, 6, dtype)
    ntxent = _pml_per_anchor(z_a, z_b, tau)
    assert ntxent.shape == (20,)
    expected = (ntxent + torch.log(-torch.expm1(-ntxent))).mean()
    ours = DCLLoss(tau)(z_a, z_b)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(ours, expected, **tol)
    for got, want in zip(torch.autograd.grad(ours, (z_a, z_b)), torch.autograd.grad(expected, (z_a, z_b))):
        torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(ntxent.mean(), NTXentLoss(tau)(z_a, z_b), **tol)


def test_dcl_is_below_ntxent_by_the_mean_coupling_term():
    z_a, z_b = _views(8, 5)
    tau = 0.2
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]).detach(), dim=1)
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    p = torch.softmax(logits, dim=1)[torch.arange(16), torch.arange(16).roll(8)]
    gap = NTXentLoss(tau)(z_a, z_b) - DCLLoss(tau)(z_a, z_b)
    torch.testing.assert_close(gap, -torch.log1p(-p).mean())
    assert gap > 0


def test_all_equal_embeddings_give_the_log_of_the_number_of_negatives():
    z = torch.ones(5, 3, dtype=torch.float64, requires_grad=True)
    value = DCLLoss(0.1)(z, z)
    assert value.item() == pytest.approx(math.log(8), rel=1e-12)  # -1 / tau + log(8 e^{1 / tau})
    value.backward()
    assert torch.isfinite(z.grad).all()


def test_symmetric_in_the_views_and_the_batch_order():
    z_a, z_b = _views(7, 4)
    for sigma in (None, 0.5):
        loss = DCLLoss(0.3, sigma)
        value = loss(z_a, z_b)
        torch.testing.assert_close(loss(z_b, z_a), value)
        order = torch.randperm(7, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(loss(z_a[order], z_b[order]), value)


def test_gradcheck():
    # DCL only: DCLW's weights are constants, so its gradient is not the finite difference of its value
    # (the loop reference above checks it, with the weights as plain floats).
    z_a, z_b = _views(4, 3)
    assert torch.autograd.gradcheck(DCLLoss(0.5), (z_a, z_b))


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_runs_in_float32_under_autocast(sigma):
    z_a, z_b = _views(16, 32, torch.float32)
    assert_full_precision_under_autocast(DCLLoss(0.1, sigma), z_a, z_b)


def _noisy_views(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy views of 32 random points in 10 dimensions, noisy enough that half the twins are not nearest."""
    x = torch.randn(32, 10, generator=generator)
    return x + 0.7 * torch.randn(32, 10, generator=generator), x + 0.7 * torch.randn(32, 10, generator=generator)


def _twins_found(model: torch.nn.Module) -> float:
    """The fraction of held-out first views whose nearest second view (cosine) is their twin."""
    with torch.no_grad():
        a, b = (torch.nn.functional.normalize(model(v), dim=1) for v in _noisy_views(torch.Generator().manual_seed(5)))
    return (a @ b.T).argmax(dim=1).eq(torch.arange(32)).float().mean().item()


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_training_lowers_the_loss_and_finds_more_twins(sigma):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    loss = DCLLoss(0.2, sigma)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    before = _twins_found(model)
    values = []
    for _ in range(60):
        optimiser.zero_grad()
        value = loss(*[model(v) for v in _noisy_views(g)])
        value.backward()
        optimiser.step()
        values.append(value.item())
    # torch seeds 0-3: the mean of the last five steps falls by 0.36-0.79, the twins found rise from 0.34-0.53
    # to 0.53-0.69 (seed 0: 0.41 to 0.66 for DCL, 0.69 for DCLW)
    assert sum(values[-5:]) / 5 < sum(values[:5]) / 5 - 0.25, values
    assert _twins_found(model) > before + 0.15


def test_conformance():
    check_loss(DCLLoss)
    check_loss(DCLLoss, {"weight_sigma": 0.5})


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature must be > 0, got 0.0; the paper uses 0.1"),
    ({"weight_sigma": -0.5}, "weight_sigma must be > 0 or null"),
    ({"weight_sigma": 0.0}, "weight_sigma must be > 0 or null"),
])
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=f"^dcl: {match}"):
        DCLLoss(**kwargs)


def test_invalid_views_raise():
    with pytest.raises(ValueError, match="dcl: needs a batch of at least 2"):
        DCLLoss()(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="dcl: expected two"):
        DCLLoss()(torch.randn(4, 4), torch.randn(4, 5))
