"""DINO: value against a float64 cross-entropy written out, the closed-form gradient, the centre's EMA, contract."""

from __future__ import annotations

import math

import pytest
import torch

from hvkit.testing import check_loss
from hvkit_plugins.losses.dino import DINOLoss


def _views(n: int, k: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 100 + k)
    student = torch.randn(n, k, generator=g, dtype=dtype)
    teacher = 0.5 * student + 0.5 * torch.randn(n, k, generator=g, dtype=dtype)
    return student.requires_grad_(), teacher.requires_grad_()


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _cross_entropy(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, tau_s: float,
                   tau_t: float) -> float:
    """mean_i -sum_k softmax((t_i - c)/tau_t)_k log softmax(s_i/tau_s)_k, one sample at a time."""
    c = center.tolist()
    total = 0.0
    for s, t in zip(student.tolist(), teacher.tolist()):
        target = _softmax([(tk - ck) / tau_t for tk, ck in zip(t, c)])
        log_z = math.log(sum(math.exp(v / tau_s) for v in s))
        total += -sum(p * (v / tau_s - log_z) for p, v in zip(target, s))
    return total / len(student)


@pytest.mark.parametrize("n, k, tau_s, tau_t", [(8, 5, 0.1, 0.04), (3, 16, 0.5, 0.2), (6, 4, 1.0, 1.0)])
def test_value_against_the_formula_with_a_centre(n, k, tau_s, tau_t):
    loss = DINOLoss(embedding_dim=k, student_temperature=tau_s, teacher_temperature=tau_t).double()
    loss.center.copy_(torch.linspace(-0.3, 0.4, k))
    student, teacher = _views(n, k)
    value = loss(student, teacher)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(_cross_entropy(student, teacher, loss.center, tau_s, tau_t), rel=1e-12)


def test_float32_close_to_float64():
    loss = DINOLoss(embedding_dim=64)
    loss.center.copy_(torch.linspace(-0.1, 0.1, 64))
    student, teacher = _views(32, 64, torch.float32)
    value = loss(student, teacher)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_cross_entropy(student, teacher, loss.center, 0.1, 0.04), rel=1e-5)


def test_the_gradient_is_the_softmax_difference_and_skips_the_teacher():
    # d/ds_i of -sum_k P_t log softmax(s_i/tau_s)_k, averaged over B: (softmax(s_i/tau_s) - P_t(i)) / (tau_s B).
    loss = DINOLoss(embedding_dim=6).double()
    loss.center.copy_(torch.linspace(0.0, 0.5, 6))
    student, teacher = _views(5, 6)
    loss(student, teacher).backward()
    assert teacher.grad is None
    targets = torch.softmax((teacher.detach() - loss.center) / 0.04, dim=1)
    expected = (torch.softmax(student.detach() / 0.1, dim=1) - targets) / (0.1 * 5)
    torch.testing.assert_close(student.grad, expected)


def test_a_teacher_row_equal_to_the_centre_gives_a_uniform_target():
    k = 7
    loss = DINOLoss(embedding_dim=k).double()
    student, _ = _views(4, k)
    loss.center.copy_(torch.linspace(-1.0, 1.0, k))
    teacher = loss.center.expand(4, k) + torch.randn(4, 1, dtype=torch.float64)  # + a per-row constant
    log_p = [[v / 0.1 - math.log(sum(math.exp(u / 0.1) for u in row)) for v in row] for row in student.tolist()]
    expected = sum(-sum(row) / k for row in log_p) / 4
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-12)


def test_the_teacher_temperature_runs_from_a_one_hot_to_a_uniform_target():
    k = 5
    student, teacher = _views(6, k)
    # tau_t -> 0: one-hot on the teacher's top prototype, so the loss is plain cross-entropy.
    sharp = DINOLoss(embedding_dim=k, teacher_temperature=1e-6).double()(student, teacher)
    expected = torch.nn.functional.cross_entropy(student.detach() / 0.1, teacher.detach().argmax(1))
    assert sharp.item() == pytest.approx(expected.item(), rel=1e-12)
    # tau_t -> infinity: uniform, so the loss is the mean over prototypes of -log softmax(s / tau_s).
    flat = DINOLoss(embedding_dim=k, teacher_temperature=1e12).double()(student, teacher)
    expected = -torch.log_softmax(student.detach() / 0.1, dim=1).mean()
    assert flat.item() == pytest.approx(expected.item(), rel=1e-9)


def test_the_centre_follows_the_teachers_global_views_by_ema_once_per_call():
    loss = DINOLoss(embedding_dim=3).double()
    assert torch.equal(loss.center, torch.zeros(3, dtype=torch.float64))
    t_1 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]], dtype=torch.float64)
    t_2 = torch.tensor([[0.0, 4.0, 2.0], [4.0, 2.0, 0.0]], dtype=torch.float64)
    student = torch.zeros(2, 3, dtype=torch.float64)
    loss(student, t_1), loss(student, t_2)  # the per-pair calls leave the centre alone
    assert torch.equal(loss.center, torch.zeros(3, dtype=torch.float64))
    loss.observe_teacher([t_1, t_2])  # mean of the four rows: (2, 2, 1)
    torch.testing.assert_close(loss.center, torch.tensor([0.2, 0.2, 0.1], dtype=torch.float64))
    loss.observe_teacher([t_2, t_2])  # mean (2, 3, 1): 0.9 * (0.2, 0.2, 0.1) + 0.1 * (2, 3, 1)
    torch.testing.assert_close(loss.center, torch.tensor([0.38, 0.48, 0.19], dtype=torch.float64))


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_centre_momentum_zero_takes_the_batch_mean_and_one_keeps_the_centre(momentum):
    loss = DINOLoss(embedding_dim=2, center_momentum=momentum).double()
    loss.center.fill_(5.0)
    loss.observe_teacher([torch.tensor([[1.0, 3.0]], dtype=torch.float64), torch.tensor([[3.0, 5.0]],
                                                                                         dtype=torch.float64)])
    expected = [5.0, 5.0] if momentum == 1.0 else [2.0, 4.0]
    torch.testing.assert_close(loss.center, torch.tensor(expected, dtype=torch.float64))


def test_the_centre_is_state_that_checkpoints_hold():
    loss = DINOLoss(embedding_dim=4)
    loss.observe_teacher([torch.ones(3, 4), torch.ones(3, 4)])
    state = loss.state_dict()
    assert set(state) == {"center", "steps"} and not list(loss.parameters())
    restored = DINOLoss(embedding_dim=4)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.center, torch.full((4,), 0.1))
    assert int(restored.steps) == 1


@pytest.mark.parametrize("steps, tau_t", [(0, 0.04), (1, 0.0475), (3, 0.0625), (4, 0.07), (9, 0.07)])
def test_the_teacher_temperature_warms_up_linearly_per_observed_step(steps, tau_t):
    # tau_t(s) = 0.04 + (0.07 - 0.04) * min(s / 4, 1), by hand: 0.04, 0.0475, 0.0625, 0.07, 0.07.
    loss = DINOLoss(embedding_dim=5, teacher_temperature=0.07, warmup_teacher_temperature=0.04,
                    warmup_steps=4).double()
    student, teacher = _views(6, 5)
    for _ in range(steps):
        loss.observe_teacher([teacher.detach(), student.detach()])
    assert float(loss.current_teacher_temperature()) == pytest.approx(tau_t, rel=1e-12)
    value = loss(student, teacher)
    assert value.item() == pytest.approx(_cross_entropy(student, teacher, loss.center, 0.1, tau_t), rel=1e-12)


def test_a_resumed_warm_up_continues_where_it_stopped():
    loss = DINOLoss(embedding_dim=3, teacher_temperature=0.07, warmup_steps=10)
    for _ in range(6):
        loss.observe_teacher([torch.randn(2, 3), torch.randn(2, 3)])
    restored = DINOLoss(embedding_dim=3, teacher_temperature=0.07, warmup_steps=10)
    restored.load_state_dict(loss.state_dict())
    assert float(restored.current_teacher_temperature()) == pytest.approx(0.04 + 0.03 * 0.6)


def test_runs_in_float32_under_autocast():
    loss = DINOLoss(embedding_dim=32)
    student, teacher = _views(8, 32, torch.float32)
    expected = loss(student, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(student, teacher), expected)
        loss.observe_teacher([teacher.detach().bfloat16(), teacher.detach().bfloat16()])
    assert loss.center.dtype == torch.float32


def test_defaults_and_flags():
    assert DINOLoss.needs_teacher is True and DINOLoss.needs_global_batch is False
    loss = DINOLoss(embedding_dim=4)
    assert (loss.student_temperature, loss.teacher_temperature, loss.center_momentum) == (0.1, 0.04, 0.9)
    assert (loss.warmup_teacher_temperature, loss.warmup_steps) == (0.04, 0)
    assert loss.current_teacher_temperature() == 0.04


def test_conformance():
    check_loss(DINOLoss)


def test_errors():
    loss = DINOLoss(embedding_dim=4)
    with pytest.raises(ValueError, match="^dino: expected two .* of one shape"):
        loss(torch.randn(4, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"^dino: views have shape \(4, 5\) .* embedding_dim = 4"):
        loss(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"^dino: views have shape \(6, 5\) .* embedding_dim = 4"):
        loss.observe_teacher([torch.randn(3, 5), torch.randn(3, 5)])
    for kwargs, key in (({"embedding_dim": 0}, "embedding_dim"), ({"student_temperature": 0.0}, "student_temperature"),
                        ({"teacher_temperature": -0.1}, "teacher_temperature"),
                        ({"center_momentum": 1.5}, "center_momentum"), ({"center_momentum": -0.1}, "center_momentum"),
                        ({"warmup_teacher_temperature": 0.0}, "warmup_teacher_temperature"),
                        ({"warmup_steps": -1}, "warmup_steps")):
        with pytest.raises(ValueError, match=f"^dino: {key} must"):
            DINOLoss(**({"embedding_dim": 4} | kwargs))
