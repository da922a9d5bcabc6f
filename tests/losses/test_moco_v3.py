"""MoCo v3: value against a float64 InfoNCE written out, the stop-gradient on the keys, temperature, contract."""

from __future__ import annotations

import math

import pytest
import torch

from hvkit.testing import check_loss
from hvkit_plugins.losses.moco_v3 import MoCoV3Loss
from hvkit_plugins.losses.simsiam import prediction_mlp

from .predictor_reference import fix_predictor, identity_predictor, predict, standardised, views


def _loss(d: int, hidden: int, temperature: float = 0.2, seed: int = 0) -> MoCoV3Loss:
    torch.manual_seed(seed)
    return fix_predictor(MoCoV3Loss(embedding_dim=d, predictor_dim=hidden, temperature=temperature), seed)


def _info_nce(q: torch.Tensor, k: torch.Tensor, tau: float) -> float:
    """2 tau * mean_i -log(exp(q_i.k_i/tau) / sum_j exp(q_i.k_j/tau)), unit q and k, one sample at a time."""
    q = [row / math.sqrt(float(row @ row)) for row in q.detach().double()]
    k = [row / math.sqrt(float(row @ row)) for row in k.detach().double()]
    total = 0.0
    for i, qi in enumerate(q):
        scores = [math.exp(float(qi @ kj) / tau) for kj in k]
        total += -math.log(scores[i] / sum(scores))
    return 2 * tau * total / len(q)


@pytest.mark.parametrize("n, d, hidden, tau", [(16, 6, 4, 0.2), (5, 3, 12, 1.0), (8, 4, 8, 0.05)])
def test_value_against_the_formula(n, d, hidden, tau):
    loss = _loss(d, hidden, tau).double()
    online, target = views(n, d)
    value = loss(online, target)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(_info_nce(predict(loss, online), target, tau), rel=1e-12)


def test_float32_close_to_float64():
    loss = _loss(32, 16)
    online, target = views(64, 32, torch.float32)
    value = loss(online, target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_info_nce(predict(loss, online), target, 0.2), rel=1e-5)


def test_the_gradient_reaches_the_online_view_and_predictor_only():
    loss = _loss(6, 8).double()
    online, target = views(10, 6)
    loss(online, target).backward()
    assert target.grad is None  # the teacher's keys are constants
    q = predict(loss, online)
    logits = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(target.detach(), dim=1).T / 0.2
    reference = torch.nn.functional.cross_entropy(logits, torch.arange(10)) * 0.4
    expected, = torch.autograd.grad(reference, online)
    torch.testing.assert_close(online.grad, expected)
    for name, param in loss.predictor.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, name


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
def test_identical_keys_give_two_tau_log_batch(tau):
    # Every key the same: each query scores all keys alike, whatever the predictor.
    online, _ = views(12, 5)
    keys = torch.ones(12, 5, dtype=torch.float64)
    value = _loss(5, 7, tau).double()(online, keys)
    assert value.item() == pytest.approx(2 * tau * math.log(12), rel=1e-12)


def test_a_lower_temperature_sharpens_a_correct_match_towards_zero():
    # Queries equal their own keys and keys are orthogonal: -log softmax = log(1 + (B-1) e^{-1/tau}).
    d = 6
    loss = identity_predictor(MoCoV3Loss(embedding_dim=d, predictor_dim=2 * d).double())
    eye = torch.eye(d, dtype=torch.float64)
    z = standardised(torch.cat([eye, -eye]))  # 12 rows: each column of mean 0
    values = []
    for tau in (1.0, 0.2, 0.05):
        loss.temperature = tau
        # key_i = z_i; the unit queries are z_i too; q_i . k_j = 1 (j = i), -1 (j = i's opposite), 0 else
        expected = 2 * tau * math.log(1 + 10 * math.exp(-1 / tau) + math.exp(-2 / tau))
        values.append(loss(z, z).item())
        assert values[-1] == pytest.approx(expected, rel=1e-6), tau
    assert values[0] > values[1] > values[2] and values[2] < 1e-8


def test_runs_in_float32_under_autocast():
    loss = _loss(64, 32)
    online, target = views(16, 64, torch.float32)
    expected = loss(online, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(online, target), expected)


def test_defaults_and_flags():
    assert MoCoV3Loss.needs_teacher is True and MoCoV3Loss.needs_global_batch is True
    loss = MoCoV3Loss(embedding_dim=4)
    assert loss.temperature == 0.2 and loss.predictor[0].out_features == 4096
    assert [type(m) for m in loss.predictor] == [type(m) for m in prediction_mlp(4, 4096)]
    assert loss.predictor[0].bias is None and loss.predictor[3].bias is None  # the official code's: no bias


def test_conformance():
    check_loss(MoCoV3Loss, {"predictor_dim": 16})


def test_errors():
    loss = MoCoV3Loss(embedding_dim=4, predictor_dim=3)
    with pytest.raises(ValueError, match="^moco_v3: needs a batch of at least 2"):
        loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="^moco_v3: expected two .* of one shape"):
        loss(torch.randn(4, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="^moco_v3: views have D = 5 .* embedding_dim = 4"):
        loss(torch.randn(4, 5), torch.randn(4, 5))
    for kwargs, key in (({"predictor_dim": 0}, "predictor_dim"), ({"embedding_dim": 0}, "embedding_dim"),
                        ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature")):
        with pytest.raises(ValueError, match=f"^moco_v3: {key} must"):
            MoCoV3Loss(**({"embedding_dim": 4} | kwargs))
