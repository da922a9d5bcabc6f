"""TiCo: the covariance's trajectory and each step's value and gradient against a float64 loop reference of the
paper's Algorithm 1, a hand-computed first and second step from C = 0, no gradient to C_{t-1}, eval mode, one move of
C per step under multi-crop (in the stage too), checkpoints, conformance, errors; the momentum-encoder variant
against a float64 loop reference over its documented pairs, and in the stage with a teacher and local views."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hvkit.engine import load_checkpoint
from hvkit.errors import HvkitError
from hvkit.testing import check_loss, run_recipe_text, tiny_recipe
from hvkit_plugins.losses.tico import TiCoLoss, covariance_contrast, second_moment
from hvkit_plugins.stages import ssl_pretrain
from hvkit_plugins.stages.ssl_pretrain import multi_view_loss


def _views(n: int, d: int, count: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    """``count`` correlated, uncentred (n, d) views of one batch, requiring gradients."""
    g = torch.Generator().manual_seed(seed * 1000 + n * 10 + d)
    base = 0.5 + torch.randn(n, d, generator=g, dtype=dtype)
    return [(base + 0.6 * torch.randn(n, d, generator=g, dtype=dtype)).requires_grad_() for _ in range(count)]


def _unit(rows: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each row divided by its length, entry by entry in float64."""
    out = []
    for row in rows.double():
        norm = torch.sqrt(sum(row[k] * row[k] for k in range(len(row))))
        out.append([row[k] / norm for k in range(len(row))])
    return out


def _algorithm_1(z_a: torch.Tensor, z_b: torch.Tensor, previous: list[list[float]], beta: float,
                 rho: float) -> tuple[torch.Tensor, list[list[float]]]:
    """One step of the paper's Algorithm 1, entry by entry in float64: z = a / |a|; C = beta C + (1 - beta) z^T z / N;
    loss = -mean_i z_i . z'_i + rho mean_i z_i C z_i^T; C_{t-1} a constant. Returns (loss, C_t as numbers)."""
    n, d = z_a.shape

    za, zb = _unit(z_a), _unit(z_b)
    c = [[beta * previous[p][q] + (1 - beta) * sum(za[i][p] * za[i][q] for i in range(n)) / n for q in range(d)]
         for p in range(d)]
    invariance = sum(sum(za[i][k] * zb[i][k] for k in range(d)) for i in range(n)) / n
    contrast = sum(sum(za[i][p] * c[p][q] * za[i][q] for p in range(d) for q in range(d)) for i in range(n)) / n
    return -invariance + rho * contrast, [[float(x.detach()) for x in row] for row in c]


@pytest.mark.parametrize("n, d, beta, rho", [(6, 3, 0.9, 20.0), (4, 5, 0.5, 8.0), (1, 2, 0.0, 1.0), (9, 2, 0.99, 0.0)])
def test_trajectory_value_and_gradient_over_steps_against_algorithm_1(n, d, beta, rho):
    loss = TiCoLoss(d, beta=beta, rho=rho).double()
    previous = [[0.0] * d for _ in range(d)]
    for step in range(4):
        z_a, z_b = _views(n, d, seed=step)
        value = loss(z_a, z_b)
        expected, previous = _algorithm_1(z_a, z_b, previous, beta, rho)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss.covariance, torch.tensor(previous, dtype=torch.float64), rtol=1e-12,
                                   atol=1e-14)
        for got, want in zip(torch.autograd.grad(value, (z_a, z_b)), torch.autograd.grad(expected, (z_a, z_b))):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_float32_close_to_the_float64_reference():
    loss = TiCoLoss(8)
    previous = [[0.0] * 8 for _ in range(8)]
    for step in range(3):
        z_a, z_b = _views(16, 8, seed=step)
        a32, b32 = z_a.detach().float().requires_grad_(), z_b.detach().float().requires_grad_()
        value = loss(a32, b32)
        expected, previous = _algorithm_1(z_a, z_b, previous, 0.9, 20.0)
        assert value.dtype == torch.float32 and loss.covariance.dtype == torch.float32
        assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
        got, want = torch.autograd.grad(value, a32)[0], torch.autograd.grad(expected, z_a)[0]
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_a_hand_computed_first_and_second_step_from_zero():
    # z_a = (3, 0), (0, 0.5) normalise to e_1, e_2; z_b = (2, 0), (1, 0) to e_1, e_1. Invariance: -(1 + 0) / 2.
    # Step 1: C_1 = 0.1 (e_1 e_1^T + e_2 e_2^T) / 2 = 0.05 I and mean_i z_i C_1 z_i = 0.05: L = -0.5 + 20 * 0.05 = 0.5.
    # Step 2 on the same views: C_2 = 0.9 * 0.05 I + 0.1 * I / 2 = 0.095 I: L = -0.5 + 20 * 0.095 = 1.4.
    z_a = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64, requires_grad=True)
    z_b = torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = TiCoLoss(2).double()
    assert loss(z_a, z_b).item() == pytest.approx(0.5, rel=1e-12)
    torch.testing.assert_close(loss.covariance, 0.05 * torch.eye(2, dtype=torch.float64))
    value = loss(z_a, z_b)
    assert value.item() == pytest.approx(1.4, rel=1e-12)
    torch.testing.assert_close(loss.covariance, 0.095 * torch.eye(2, dtype=torch.float64))
    # d/dz_b of -mean_i z_a,i . z_b,i / |z_b,i|: row 1 (2, 0) is parallel to e_1, so 0; row 2 (1, 0): -(e_2 - 0) / 2
    torch.testing.assert_close(torch.autograd.grad(value, z_b)[0],
                               torch.tensor([[0.0, 0.0], [0.0, -0.5]], dtype=torch.float64))


def test_the_contrast_is_the_papers_mean_of_quadratic_forms():
    z = torch.nn.functional.normalize(_views(7, 4)[0].detach(), dim=1)
    c = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = c + c.T
    torch.testing.assert_close(covariance_contrast(second_moment(z), c), (z @ c * z).sum(dim=1).mean())


def test_no_gradient_reaches_the_previous_covariance_only_this_steps_moment():
    loss = TiCoLoss(3).double()
    loss(*_views(5, 3, seed=1))
    previous = loss.covariance.clone()
    assert not previous.requires_grad
    z_a, z_b = _views(5, 3, seed=2)
    value = loss(z_a, z_b)
    # the same value with C_{t-1} as a constant and C_t built by hand, through this step's Z^T Z / N
    a = torch.nn.functional.normalize(z_a, dim=1)
    c = 0.9 * previous + 0.1 * a.T @ a / 5
    by_hand = -(a * torch.nn.functional.normalize(z_b, dim=1)).sum(1).mean() + 20.0 * (a @ c * a).sum(1).mean()
    frozen = -(a * torch.nn.functional.normalize(z_b, dim=1)).sum(1).mean() + 20.0 * (a @ c.detach() * a).sum(1).mean()
    got = torch.autograd.grad(value, z_a)[0]
    torch.testing.assert_close(got, torch.autograd.grad(by_hand, z_a, retain_graph=True)[0])
    assert not torch.allclose(got, torch.autograd.grad(frozen, z_a)[0])  # the moment's own gradient counts


def test_eval_mode_uses_the_covariance_without_moving_it():
    loss = TiCoLoss(3).double()
    loss(*_views(6, 3, seed=1))
    kept = loss.covariance.clone()
    loss.eval()
    first = loss(*_views(6, 3, seed=2))
    torch.testing.assert_close(loss.covariance, kept)
    torch.testing.assert_close(loss(*_views(6, 3, seed=2)), first)
    loss.train()
    loss(*_views(6, 3, seed=2))
    assert not torch.allclose(loss.covariance, kept)


def test_multi_crop_moves_the_covariance_once_and_averages_the_stages_pairs():
    loss = TiCoLoss(4).double()
    loss(*_views(6, 4, seed=1))
    previous = loss.covariance.clone()
    z_a, z_b, l_1, l_2 = _views(6, 4, count=4, seed=2)
    a = torch.nn.functional.normalize(z_a, dim=1)
    c = 0.9 * previous + 0.1 * a.T @ a / 6

    def pair(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # one (p, q) pair with the step's one C_t
        p, q = torch.nn.functional.normalize(p, dim=1), torch.nn.functional.normalize(q, dim=1)
        return -(p * q).sum(1).mean() + 20.0 * (p @ c * p).sum(1).mean()

    expected = multi_view_loss(pair, [z_a, z_b], [l_1, l_2])
    value = loss(z_a, z_b, l_1, l_2)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(loss.covariance, c.detach())
    for got, want in zip(torch.autograd.grad(value, (z_a, z_b, l_1, l_2)),
                         torch.autograd.grad(expected, (z_a, z_b, l_1, l_2))):
        torch.testing.assert_close(got, want)


def test_gradcheck():
    loss = TiCoLoss(3, rho=5.0).double()
    loss(*_views(5, 3, seed=1))
    loss.eval()  # C_{t-1} fixed between evaluations
    assert torch.autograd.gradcheck(loss, tuple(_views(5, 3, count=3, seed=2)))


def test_the_covariance_is_a_buffer_a_restored_loss_continues_identically():
    loss = TiCoLoss(4)
    for seed in range(3):
        loss(*[z.detach().float() for z in _views(8, 4, seed=seed)])
    assert set(loss.state_dict()) == {"covariance"} and not list(loss.parameters())
    restored = TiCoLoss(4)
    restored.load_state_dict(loss.state_dict())
    probe = [z.detach().float() for z in _views(8, 4, seed=9)]
    torch.testing.assert_close(restored(*probe), loss(*probe))
    torch.testing.assert_close(restored.covariance, loss.covariance)


def test_collapsed_embeddings_score_the_worst_contrast():
    # All embeddings equal to e_1 from the start: C_t -> e_1 e_1^T and L -> -1 + rho, the largest contrast possible.
    loss = TiCoLoss(3).double()
    z = torch.tensor([[2.0, 0.0, 0.0]] * 4, dtype=torch.float64)
    for step in range(1, 40):
        value = loss(z, z.clone())
        assert value.item() == pytest.approx(-1 + 20.0 * (1 - 0.9 ** step), rel=1e-12)


def test_runs_in_float32_under_autocast():
    z_a, z_b = [z.detach().float() for z in _views(16, 32)]
    loss, reference = TiCoLoss(32), TiCoLoss(32)
    expected = reference(z_a, z_b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(z_a, z_b), expected)
        assert loss(z_a.bfloat16(), z_b.bfloat16()).dtype == torch.float32
    assert loss.covariance.dtype == torch.float32


def test_a_linear_encoder_learns_invariance_and_the_loss_falls():
    # Two views of 64 fixed 10-d samples, noisy in six nuisance coordinates, through one linear map to 4 dimensions.
    # C starts at 0, so the loss first rises with it (beta 0.5: C is warm after a few steps); it falls from there.
    torch.manual_seed(0)
    data, noise = torch.randn(64, 10), torch.tensor([0.1] * 4 + [1.0] * 6)
    encoder = torch.nn.Linear(10, 4)
    loss = TiCoLoss(4, beta=0.5, rho=2.0)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=0.05)
    values = []
    for _ in range(40):
        view_a, view_b = data + noise * torch.randn_like(data), data + noise * torch.randn_like(data)
        value = loss(encoder(view_a), encoder(view_b))
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        values.append(value.item())
    assert sum(values[-5:]) < sum(values[5:10]) - 0.4, values  # seed 0: -2.41 against -1.67


@pytest.mark.parametrize("params", [{}, {"teacher": True}, {"teacher": True, "symmetric": True}])
def test_conformance(params: dict) -> None:
    check_loss(TiCoLoss, params)


def test_errors():
    loss = TiCoLoss(4)
    with pytest.raises(ValueError, match="^tico: expected two .* of one shape"):
        loss(torch.randn(8, 4), torch.randn(7, 4))
    with pytest.raises(ValueError, match="^tico: a local view has shape"):
        loss(torch.randn(8, 4), torch.randn(8, 4), torch.randn(6, 4))
    with pytest.raises(ValueError, match="^tico: views have 5 features but the covariance is built for embedding_dim"):
        loss(torch.randn(8, 5), torch.randn(8, 5))
    for kwargs, key in (({"embedding_dim": 0}, "embedding_dim"), ({"beta": 1.0}, "beta"), ({"beta": -0.1}, "beta"),
                        ({"rho": -1.0}, "rho")):
        with pytest.raises(ValueError, match=f"^tico: {key} must"):
            TiCoLoss(**({"embedding_dim": 4} | kwargs))


def test_flags_and_defaults():
    loss = TiCoLoss(8)
    assert TiCoLoss.needs_global_batch and TiCoLoss.takes_local_views and not TiCoLoss.needs_teacher
    assert (loss.beta, loss.rho) == (0.9, 20.0)
    assert torch.equal(loss.covariance, torch.zeros(8, 8))


# --- the momentum-encoder variant (teacher: true) -------------------------------------------------

def _teacher_reference(online: list[torch.Tensor], teacher: list[torch.Tensor], previous: list[list[float]],
                       beta: float, rho: float, symmetric: bool) -> tuple[torch.Tensor, list[list[float]]]:
    """One step of the teacher variant entry by entry in float64: C moved by the first online view's unit rows,
    the mean over the documented pairs (o_1, t_2), [(o_2, t_1) if symmetric], (l_j, t_1), (l_j, t_2) of
    -mean_i o_i . t_i + rho mean_i o_i C o_i^T. Returns (loss, C_t as numbers)."""
    n, d = online[0].shape

    o, t = [_unit(z) for z in online], [_unit(z.detach()) for z in teacher]
    c = [[beta * previous[p][q] + (1 - beta) * sum(o[0][i][p] * o[0][i][q] for i in range(n)) / n for q in range(d)]
         for p in range(d)]
    pairs = [(0, 1)] + ([(1, 0)] if symmetric else []) + [(v, g) for v in range(2, len(online)) for g in (0, 1)]
    total = 0
    for v, g in pairs:
        invariance = sum(sum(o[v][i][k] * t[g][i][k] for k in range(d)) for i in range(n)) / n
        contrast = sum(sum(o[v][i][p] * c[p][q] * o[v][i][q] for p in range(d) for q in range(d))
                       for i in range(n)) / n
        total = total - invariance + rho * contrast
    return total / len(pairs), [[float(x.detach()) for x in row] for row in c]


@pytest.mark.parametrize("local, symmetric, beta, rho", [(0, False, 0.9, 20.0), (0, True, 0.5, 8.0),
                                                         (2, False, 0.9, 20.0), (2, True, 0.0, 3.0)])
def test_the_teacher_variant_against_a_float64_reference_over_its_pairs(local, symmetric, beta, rho):
    loss = TiCoLoss(3, beta=beta, rho=rho, teacher=True, symmetric=symmetric).double()
    previous = [[0.0] * 3 for _ in range(3)]
    for step in range(3):
        *online, t_1, t_2 = _views(5, 3, count=4 + local, seed=step)
        value = loss(*online, teacher=(t_1, t_2))
        expected, previous = _teacher_reference(online, [t_1, t_2], previous, beta, rho, symmetric)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss.covariance, torch.tensor(previous, dtype=torch.float64), rtol=1e-12,
                                   atol=1e-14)
        assert torch.autograd.grad(value, (t_1, t_2), allow_unused=True, retain_graph=True) == (None, None)
        got = torch.autograd.grad(value, online, allow_unused=True)
        want = torch.autograd.grad(expected, online, allow_unused=True)
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            if g is not None:
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
        assert (got[1] is None) != symmetric  # o_2 is a query only in the symmetric form


def test_the_asymmetric_teacher_variant_is_algorithm_1_with_the_teachers_second_view():
    # The references' call: loss(z_0 online, z_1 teacher) once a step; o_2 and t_1 play no part.
    loss, shadow = TiCoLoss(4, teacher=True).double(), TiCoLoss(4, teacher=True).double()
    previous = [[0.0] * 4 for _ in range(4)]
    for step in range(3):
        o_1, o_2, t_1, t_2 = _views(6, 4, count=4, seed=step)
        expected, previous = _algorithm_1(o_1, t_2, previous, 0.9, 20.0)
        torch.testing.assert_close(loss(o_1, o_2, teacher=(t_1, t_2)), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(shadow(o_1, 3 - o_2, teacher=(t_1.flip(0), t_2)), expected, rtol=1e-12,
                                   atol=1e-12)
        torch.testing.assert_close(loss.covariance, torch.tensor(previous, dtype=torch.float64))


def test_the_teacher_variant_moves_the_covariance_once_per_call_by_the_first_online_view_only():
    loss = TiCoLoss(3, teacher=True, symmetric=True).double()
    o_1, o_2, l_1, t_1, t_2 = (z.detach() for z in _views(6, 3, count=5, seed=3))
    loss(o_1, o_2, l_1, teacher=(t_1, t_2))
    unit = torch.nn.functional.normalize(o_1, dim=1)
    torch.testing.assert_close(loss.covariance, 0.1 * unit.T @ unit / 6)
    other = TiCoLoss(3, teacher=True, symmetric=True).double()
    other(o_1, 3 * o_2.flip(0), l_1.flip(1), teacher=(t_2, t_1))  # other views but o_1: the same C
    torch.testing.assert_close(other.covariance, loss.covariance)


def test_the_teacher_variant_runs_in_float32_with_bfloat16_teacher_views_under_autocast():
    o_1, o_2, t_1, t_2 = [z.detach().float() for z in _views(16, 8, count=4)]
    expected = TiCoLoss(8, teacher=True)(o_1, o_2, teacher=(t_1.bfloat16().float(), t_2.bfloat16().float()))
    loss = TiCoLoss(8, teacher=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(o_1, o_2, teacher=(t_1.bfloat16(), t_2.bfloat16()))
    assert value.dtype == torch.float32 and loss.covariance.dtype == torch.float32
    torch.testing.assert_close(value, expected)


def test_teacher_variant_errors_and_flags():
    loss = TiCoLoss(4, teacher=True)
    assert loss.needs_teacher and not loss.symmetric and not TiCoLoss.needs_teacher
    assert not TiCoLoss(4).needs_teacher and TiCoLoss(4, teacher=True, symmetric=True).symmetric
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"^tico: built with teacher: true, it needs the momentum teacher's views"):
        loss(z, z)
    with pytest.raises(ValueError, match="^tico: got teacher views but was built without teacher: true"):
        TiCoLoss(4)(z, z, teacher=(z, z))
    with pytest.raises(ValueError, match=r"^tico: teacher needs the two global views' outputs of shape \(8, 4\), "
                                         r"got \[\(8, 4\)\]"):
        loss(z, z, teacher=(z,))
    with pytest.raises(ValueError, match=r"^tico: teacher needs .* got \[\(8, 4\), \(7, 4\)\]"):
        loss(z, z, teacher=(z, z[:7]))
    with pytest.raises(ValueError, match="^tico: symmetric applies to the momentum-teacher variant only"):
        TiCoLoss(4, symmetric=True)
    assert torch.equal(loss.covariance, torch.zeros(4, 4))  # no failed call moved it


# --- in the ssl_pretrain stage ------------------------------------------------------------------

TICO = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    loss: tico
    head: {name: mlp, dims: [16, 8]}
    batch_size: 8
    local_views: 2
    local_size: 16
    train: {epochs: 1, max_steps: 3, log_every: 1}
""", name="tico")


def test_with_multi_crop_the_stage_calls_the_loss_and_moves_the_covariance_once_per_step(tmp_path: Path,
                                                                                         monkeypatch) -> None:
    forward, calls = TiCoLoss.forward, []

    def spy(self, *views):
        calls.append(([v.detach().clone() for v in views], self.covariance.clone(), self.training))
        return forward(self, *views)

    monkeypatch.setattr(TiCoLoss, "forward", spy)
    run_dir = run_recipe_text(TICO, tmp_path)
    assert [len(views) for views, _, _ in calls] == [4, 4, 4] and all(training for *_, training in calls)
    covariance = torch.zeros(8, 8)
    for views, before, _ in calls:  # C_t = 0.9 C_{t-1} + 0.1 Z_a^T Z_a / B, once per step, from the first view
        torch.testing.assert_close(before, covariance)
        a = torch.nn.functional.normalize(views[0], dim=1)
        covariance = 0.9 * covariance + 0.1 * a.T @ a / a.shape[0]
    saved = load_checkpoint(run_dir / "stages" / "pretrain" / "last.pt")["modules"]["loss"]["covariance"]
    torch.testing.assert_close(saved, covariance)
    assert math.isclose(float(saved.trace()), 1 - 0.9 ** 3, rel_tol=1e-5)  # unit rows: trace(Z^T Z / B) = 1


TICO_MOMENTUM = TICO.replace("loss: tico", "loss: {name: tico, teacher: true}\n    teacher_momentum: 0.9")


def test_with_a_teacher_and_multi_crop_the_stage_calls_the_loss_and_moves_the_covariance_once_per_step(
        tmp_path: Path, monkeypatch) -> None:
    forward, calls = TiCoLoss.forward, []

    def spy(self, *views, teacher=None):
        value = forward(self, *views, teacher=teacher)
        calls.append(([v.detach().clone() for v in views], teacher, self.covariance.clone(), value.detach()))
        return value

    def no_pairs(*args, **kwargs):
        raise AssertionError("teacher_view_loss was called: the loss takes every view in one call")

    monkeypatch.setattr(TiCoLoss, "forward", spy)
    monkeypatch.setattr(ssl_pretrain, "teacher_view_loss", no_pairs)
    run_dir = run_recipe_text(TICO_MOMENTUM, tmp_path)
    assert [(len(views), len(teacher)) for views, teacher, _, _ in calls] == [(4, 2)] * 3
    covariance = torch.zeros(8, 8)
    for views, teacher, after, value in calls:  # once per step, from the first online view
        assert not any(t.requires_grad for t in teacher)
        expected, moved = _teacher_reference(views, list(teacher), covariance.tolist(), 0.9, 20.0, False)
        assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
        a = torch.nn.functional.normalize(views[0], dim=1)
        covariance = 0.9 * covariance + 0.1 * a.T @ a / a.shape[0]
        torch.testing.assert_close(after, covariance)
        torch.testing.assert_close(torch.tensor(moved, dtype=torch.float32), covariance)
    saved = load_checkpoint(run_dir / "stages" / "pretrain" / "last.pt")["modules"]
    torch.testing.assert_close(saved["loss"]["covariance"], covariance)
    assert "teacher" in saved
    assert math.isclose(float(saved["loss"]["covariance"].trace()), 1 - 0.9 ** 3, rel_tol=1e-5)


@pytest.mark.parametrize("edit, message", [
    (("\n    teacher_momentum: 0.9", ""),
     "stage 'pretrain': loss tico needs a momentum teacher; set teacher_momentum"),
    (("{name: tico, teacher: true}", "tico"),
     r"stage 'pretrain': teacher_momentum is set but loss tico uses no teacher; remove teacher_momentum or use a "
     r"loss that needs one \(byol, dino, moco_v2, moco_v3, tico with teacher: true\)"),
    (("{name: tico, teacher: true}", "{name: tico, symmetric: true}"),
     r"recipe\.yaml:stages\.pretrain\.loss: tico: symmetric applies to the momentum-teacher variant only; set teacher: "
     r"true or remove symmetric"),  # the loss refuses the value itself: hvkit validate reports it at its key
])
def test_a_teacher_setting_without_its_counterpart_is_refused_before_training(tmp_path: Path, edit: tuple[str, str],
                                                                             message: str) -> None:
    with pytest.raises(HvkitError, match=message) as raised:
        run_recipe_text(TICO_MOMENTUM.replace(*edit), tmp_path)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "recipe" / "stages" / "pretrain" / "last.pt").exists()
