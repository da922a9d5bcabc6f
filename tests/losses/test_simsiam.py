"""SimSiam: value against a float64 re-derivation, the stop-gradient, closed-form cases, a pre-training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.losses.simsiam import SimSiamLoss
from hvkit_plugins.stages import ssl_pretrain
from hvkit_plugins.stages.ssl_pretrain import multi_view_loss

from .predictor_reference import fix_predictor, identity_predictor, predict, standardised, views


def _loss(d: int, hidden: int, seed: int = 0) -> SimSiamLoss:
    torch.manual_seed(seed)
    return fix_predictor(SimSiamLoss(embedding_dim=d, predictor_dim=hidden), seed)


def _reference(loss: SimSiamLoss, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """-(mean_i cos(p_a,i, z_b,i) + mean_i cos(p_b,i, z_a,i)) / 2, each cosine written out."""
    def cos(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = z.double()
        return ((p * z).sum(1) / (p.pow(2).sum(1).sqrt() * z.pow(2).sum(1).sqrt())).mean()
    return -(cos(predict(loss, z_a), z_b) + cos(predict(loss, z_b), z_a)) / 2


@pytest.mark.parametrize("n,d,hidden", [(16, 6, 4), (5, 3, 12)])
def test_value_against_the_formula(n, d, hidden):
    loss = _loss(d, hidden).double()
    z_a, z_b = views(n, d)
    torch.testing.assert_close(loss(z_a, z_b), _reference(loss, z_a, z_b))


def test_float32_close_to_float64():
    loss = _loss(32, 16)
    z_a, z_b = views(64, 32, torch.float32)
    value = loss(z_a, z_b)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, _reference(loss, z_a, z_b).float(), rtol=1e-5, atol=1e-6)


def test_the_target_branch_passes_no_gradient():
    loss = _loss(6, 8).double()
    z_a, z_b = views(10, 6)
    got, = torch.autograd.grad(loss(z_a, z_b), z_a)
    # z_a reaches L only through its prediction h(z_a), compared with the constant z_b
    only_prediction = -F.cosine_similarity(loss.predictor(z_a), z_b.detach(), dim=1).mean() / 2
    expected, = torch.autograd.grad(only_prediction, z_a)
    torch.testing.assert_close(got, expected)
    as_target = -F.cosine_similarity(loss.predictor(z_b).detach(), z_a, dim=1).mean() / 2
    assert torch.autograd.grad(as_target, z_a)[0].abs().max() > 1e-3  # what a missing stop-gradient would add


@pytest.mark.parametrize("sign, expected", [(1.0, -1.0), (-1.0, 1.0)])
def test_identity_predictor_gives_minus_one_for_identical_views_and_one_for_opposite(sign, expected):
    d = 5
    z = standardised(torch.randn(12, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    loss = identity_predictor(SimSiamLoss(embedding_dim=d, predictor_dim=2 * d).double())
    torch.testing.assert_close(loss(z, sign * z), torch.tensor(expected, dtype=torch.float64))


def test_every_predictor_parameter_gets_a_gradient():
    loss = _loss(8, 4)
    z_a, z_b = views(16, 8, torch.float32)
    loss(z_a, z_b).backward()
    for name, param in loss.predictor.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, name
    assert z_a.grad is not None and z_b.grad is not None


def test_runs_in_float32_under_autocast():
    loss = _loss(64, 32)
    z_a, z_b = views(16, 64, torch.float32)
    expected = loss(z_a, z_b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(z_a, z_b), expected)


def test_is_per_sample_so_nothing_is_gathered():
    assert SimSiamLoss.needs_global_batch is False


def test_errors():
    loss = SimSiamLoss(embedding_dim=4, predictor_dim=3)
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        loss(torch.randn(4, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="one shape"):
        loss(torch.randn(4, 4, 1), torch.randn(4, 4, 1))
    with pytest.raises(ValueError, match="embedding_dim = 4"):
        loss(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match="predictor_dim"):
        SimSiamLoss(embedding_dim=4, predictor_dim=0)
    with pytest.raises(ValueError, match="embedding_dim"):
        SimSiamLoss(embedding_dim=0)


RECIPE = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    loss: {name: simsiam, predictor_dim: 8}
    head: {name: mlp, dims: [16, 16]}
    batch_size: 8
    train: {epochs: 1, max_steps: 4}
""", name="simsiam")


def test_ssl_pretrain_with_simsiam_trains_the_predictor(tmp_path: Path, monkeypatch) -> None:
    seen: list[tuple[SimSiamLoss, float]] = []
    start: dict[str, torch.Tensor] = {}

    def spy(loss_fn, global_views, local_views=()):
        if not start:
            start.update({k: v.detach().clone() for k, v in loss_fn.predictor.named_parameters()})
        value = multi_view_loss(loss_fn, global_views, local_views)
        seen.append((loss_fn, float(value.detach())))
        return value

    monkeypatch.setattr(ssl_pretrain, "multi_view_loss", spy)
    run_recipe_text(RECIPE, tmp_path)
    assert len(seen) == 4
    loss_fn = seen[-1][0]
    assert isinstance(loss_fn, SimSiamLoss) and loss_fn.embedding_dim == 16
    assert all(abs(value) <= 1 + 1e-6 for _, value in seen)
    for name, param in loss_fn.predictor.named_parameters():
        assert not torch.equal(param.detach(), start[name]), f"predictor {name} did not train"
