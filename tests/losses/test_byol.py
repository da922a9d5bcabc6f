"""BYOL: value against a float64 re-derivation, the stop-gradient on the target, closed-form cases."""

from __future__ import annotations

import pytest
import torch

from hvkit_plugins.losses.byol import BYOLLoss
from hvkit_plugins.losses.simsiam import prediction_mlp

from .predictor_reference import fix_predictor, identity_predictor, predict, standardised, views


def _loss(d: int, hidden: int, seed: int = 0) -> BYOLLoss:
    torch.manual_seed(seed)
    return fix_predictor(BYOLLoss(embedding_dim=d, predictor_dim=hidden), seed)


def _reference(loss: BYOLLoss, online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i ||q_i / ||q_i|| - t_i / ||t_i|| ||^2 with q = q(online), t the constant target, written out."""
    q = predict(loss, online)
    t = target.detach().double()
    return (q / q.pow(2).sum(1, keepdim=True).sqrt() - t / t.pow(2).sum(1, keepdim=True).sqrt()).pow(2).sum(1).mean()


@pytest.mark.parametrize("n,d,hidden", [(16, 6, 4), (5, 3, 12)])
def test_value_against_the_formula(n, d, hidden):
    loss = _loss(d, hidden).double()
    online, target = views(n, d)
    torch.testing.assert_close(loss(online, target), _reference(loss, online, target))


def test_float32_close_to_float64():
    loss = _loss(32, 16)
    online, target = views(64, 32, torch.float32)
    value = loss(online, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, _reference(loss, online, target).float(), rtol=1e-5, atol=1e-6)


def test_the_gradient_reaches_the_online_view_only():
    loss = _loss(6, 8).double()
    online, target = views(10, 6)
    loss(online, target).backward()
    assert target.grad is None  # the teacher's output is a constant
    expected, = torch.autograd.grad(_reference(loss, online, target), online)
    torch.testing.assert_close(online.grad, expected)


@pytest.mark.parametrize("sign, expected", [(1.0, 0.0), (-1.0, 4.0)])
def test_identity_predictor_gives_zero_for_identical_views_and_four_for_opposite(sign, expected):
    d = 5
    z = standardised(torch.randn(12, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    loss = identity_predictor(BYOLLoss(embedding_dim=d, predictor_dim=2 * d).double())
    torch.testing.assert_close(loss(z, sign * z), torch.tensor(expected, dtype=torch.float64))


def test_the_predictor_is_simsiams_and_every_parameter_gets_a_gradient():
    loss = _loss(8, 4)
    assert [type(m) for m in loss.predictor] == [type(m) for m in prediction_mlp(8, 4)]
    online, target = views(16, 8, torch.float32)
    loss(online, target).backward()
    for name, param in loss.predictor.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, name


def test_runs_in_float32_under_autocast():
    loss = _loss(64, 32)
    online, target = views(16, 64, torch.float32)
    expected = loss(online, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(online, target), expected)


def test_needs_a_teacher_and_is_per_sample():
    assert BYOLLoss.needs_teacher is True and BYOLLoss.needs_global_batch is False
    assert BYOLLoss(embedding_dim=4).predictor[0].out_features == 4096  # the paper's hidden width


def test_errors():
    loss = BYOLLoss(embedding_dim=4, predictor_dim=3)
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        loss(torch.randn(4, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="embedding_dim = 4"):
        loss(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match="predictor_dim"):
        BYOLLoss(embedding_dim=4, predictor_dim=0)
    with pytest.raises(ValueError, match="embedding_dim"):
        BYOLLoss(embedding_dim=0)
