"""Manifold loss: value and gradients against PML ManifoldLoss given the same proxies and meta-classes, the paper's
random-walk similarities in float64, a hand case, the meta-class draw, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.manifold import ManifoldLoss

from .pair_batch import (CLASSES, LABELS, assert_full_precision_under_autocast, assert_proxies_stay_float32, batch,
                         training_values)

SETTINGS = [{}, {"num_proxies": 3, "lambda_c": 0.5, "alpha": 0.6, "margin": 0.01}]


def _pair(dtype: torch.dtype, settings: dict) -> tuple[ManifoldLoss, torch.nn.Module]:
    """Our loss and PML's with the same proxies."""
    torch.manual_seed(0)
    ours = ManifoldLoss(embedding_dim=6, num_classes=CLASSES, **settings).to(dtype)
    names = {"lambda_c": "lambdaC"}
    pml = pml_losses.ManifoldLoss(l=6, K=ours.num_proxies, **{
        names.get(k, k): v for k, v in settings.items() if k != "num_proxies"}).to(dtype)
    pml.proxies.data.copy_(ours.proxies.data)
    return ours, pml


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradients_equal_pml_given_the_meta_classes(dtype, settings, seed):
    ours, pml = _pair(dtype, settings)
    x = batch(dtype=dtype, seed=seed)
    value = ours(x, LABELS)
    expected = pml(x, None, ours.meta_classes[LABELS])  # PML takes the meta-classes in place of indices_tuple
    assert value.dtype == dtype and value.item() > 0
    # PML inverts in float32 whatever the input: in float64 it agrees to float32's precision only
    tolerance = {} if dtype == torch.float32 else {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(value, expected, **tolerance)
    got = torch.autograd.grad(value, [x, ours.proxies])
    for g, want in zip(got, torch.autograd.grad(expected, [x, pml.proxies])):
        torch.testing.assert_close(g, want, **tolerance)


def _inverse(m: list[list[float]]) -> list[list[float]]:
    """Gauss-Jordan inverse with partial pivoting."""
    n = len(m)
    a = [row[:] + [float(i == j) for j in range(n)] for i, row in enumerate(m)]
    for c in range(n):
        pivot = max(range(c, n), key=lambda r: abs(a[r][c]))
        a[c], a[pivot] = a[pivot], a[c]
        a[c] = [v / a[c][c] for v in a[c]]
        for r in range(n):
            if r != c:
                a[r] = [v - a[r][c] * w for v, w in zip(a[r], a[c])]
    return [row[n:] for row in a]


def _paper_reference(x: list[list[float]], proxies: list[list[float]], own: list[int], alpha: float, margin: float,
                     lambda_c: float) -> float:
    """Aziere & Todorovic 2019 in float64 with loops: the random walk's closed form M = (1 - α)(I - α S)^-1 on the
    graph of the samples and proxies, then the intrinsic and context N-pair terms with their margin."""
    nodes = [[a / math.sqrt(sum(b * b for b in v)) for a in v] for v in x + proxies]
    size, n = len(nodes), len(x)
    w = [[0.0 if i == j else math.exp(max(sum(a * b for a, b in zip(nodes[i], nodes[j])), 0.0) / 0.5)
          for j in range(size)] for i in range(size)]
    degree = [sum(row) for row in w]
    walk = [[float(i == j) - alpha * w[i][j] / math.sqrt(degree[i] * degree[j]) for j in range(size)]
            for i in range(size)]
    m = [[(1 - alpha) * v for v in row] for row in _inverse(walk)]

    def cosine(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    def term(scores: list[float], k_own: int) -> float:
        gaps = [s - scores[k_own] + margin for k, s in enumerate(scores) if k != k_own]
        return math.log(1 + sum(math.exp(z) for z in gaps if z >= 0))

    intrinsic = sum(term(m[i][n:], own[i]) for i in range(n)) / n
    context = sum(term([cosine(m[i], m[n + k]) for k in range(len(proxies))], own[i]) for i in range(n)) / n
    return intrinsic + lambda_c * context


@pytest.mark.parametrize("settings", SETTINGS)
def test_equals_the_papers_random_walk(settings):
    loss = ManifoldLoss(embedding_dim=6, num_classes=CLASSES, **settings).double()
    x = batch()
    full = {"alpha": 0.8, "margin": 5e-4, "lambda_c": 1.0, **settings}
    expected = _paper_reference(x.tolist(), loss.proxies.tolist(), loss.meta_classes[LABELS].tolist(),
                                full["alpha"], full["margin"], full["lambda_c"])
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_hand_computed_case():
    # x0 on proxy 0, x1 on proxy 1, the two pairs orthogonal: edge weights e^2 within a pair, e^0 = 1 across, so
    # every degree is e^2 + 2 and S = a P + b (J - I - P), a = e^2 / (e^2 + 2), b = 1 / (e^2 + 2), P swapping each
    # pair. In the order (x0, p0, x1, p1) S has the eigenvectors v1 = (1, 1, 1, 1), v2 = (1, 1, -1, -1) (eigenvalues
    # 1 and a - 2b) and v3 = (1, -1, 1, -1), v4 = (1, -1, -1, 1) (both -a); with c_k = 1 / (1 - α λ_k),
    # M = (1 - α) / 4 sum_k c_k v_k v_k^T.
    alpha, margin = 0.5, 1.5  # a margin that keeps every term
    loss = ManifoldLoss(embedding_dim=2, num_classes=2, alpha=alpha, margin=margin).double()
    loss.proxies.data = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    a, b = math.e ** 2 / (math.e ** 2 + 2), 1 / (math.e ** 2 + 2)
    c1, c2, c3 = 1 / (1 - alpha), 1 / (1 - alpha * (a - 2 * b)), 1 / (1 + alpha * a)
    own, other = (1 - alpha) / 4 * (c1 + c2 - 2 * c3), (1 - alpha) / 4 * (c1 - c2)  # M[x0, p0], M[x0, p1]
    norm = c1 ** 2 + c2 ** 2 + 2 * c3 ** 2  # rows of M as sums of the orthogonal v_k: cosines from the c_k
    cos_own, cos_other = (c1 ** 2 + c2 ** 2 - 2 * c3 ** 2) / norm, (c1 ** 2 - c2 ** 2) / norm
    expected = math.log(1 + math.exp(other - own + margin)) + math.log(1 + math.exp(cos_other - cos_own + margin))
    assert loss(x, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-12)  # both samples alike
    loss.margin = 0.0  # the own proxy wins both ways: every term dropped
    assert loss(x, torch.tensor([0, 1])).item() == 0.0


def test_meta_classes_split_the_classes_evenly_at_random_and_follow_the_seed():
    torch.manual_seed(3)
    first = ManifoldLoss(embedding_dim=6, num_classes=10, num_proxies=3)
    assert sorted(torch.bincount(first.meta_classes).tolist()) == [3, 3, 4]
    torch.manual_seed(3)
    again = ManifoldLoss(embedding_dim=6, num_classes=10, num_proxies=3)
    assert torch.equal(first.meta_classes, again.meta_classes) and torch.equal(first.proxies, again.proxies)
    assert "meta_classes" in first.state_dict()
    assert ManifoldLoss(embedding_dim=6, num_classes=5).meta_classes.tolist() == [0, 1, 2, 3, 4]


def test_a_batch_of_one_writer_is_finite():
    ours, pml = _pair(torch.float32, {})
    x, labels = batch(dtype=torch.float32), torch.full((12,), 3)
    value = ours(x, labels)
    torch.testing.assert_close(value, pml(x, None, ours.meta_classes[labels]))
    value.backward()
    assert torch.isfinite(x.grad).all() and ours.proxies.grad.abs().sum() > 0


def test_gradcheck():
    loss = ManifoldLoss(embedding_dim=6, num_classes=CLASSES, **SETTINGS[1]).double()
    proxies = loss.proxies.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: torch.func.functional_call(loss, {"proxies": p}, (x, LABELS)),
                                    (batch(), proxies))


def test_full_precision_under_autocast_and_float32_proxies():
    loss = ManifoldLoss(embedding_dim=6, num_classes=CLASSES)
    assert_full_precision_under_autocast(loss, batch(dtype=torch.float32).detach(), LABELS)
    assert_proxies_stay_float32(loss, batch(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(ManifoldLoss(embedding_dim=6, num_classes=8))
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(ManifoldLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_proxies": 1}, "num_proxies"), ({"num_proxies": CLASSES + 1}, "num_proxies"),
    ({"lambda_c": -1.0}, "lambda_c"), ({"lambda_c": math.inf}, "lambda_c"), ({"alpha": 1.0}, "alpha"),
    ({"alpha": 0.0}, "alpha"), ({"margin": -0.1}, "margin"), ({"num_classes": 1}, "num_classes")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^manifold: {message}"):
        ManifoldLoss(**{"embedding_dim": 6, "num_classes": CLASSES, **kwargs})


def test_a_miner_is_refused():
    with pytest.raises(ValueError, match="^manifold: .*remove the miner"):
        ManifoldLoss(embedding_dim=6, num_classes=CLASSES)(batch(), LABELS, (torch.tensor([0]),) * 3)
