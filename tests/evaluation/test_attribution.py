"""Integrated gradients against closed forms: exact for a linear and a quadratic score, complete for any."""

from __future__ import annotations

import pytest
import torch

from hvkit.evaluation.attribution import integrated_gradients


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 5, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_a_linear_score_gets_its_weights_times_the_change_at_any_step_count():
    w = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, base = _image(), _image(2)
    for steps in (1, 7):
        shares, ends = integrated_gradients(lambda b: (b * w).sum(dim=(1, 2, 3)) + 3.0, x, base, steps=steps,
                                            batch_size=3)
        torch.testing.assert_close(shares, (x - base) * w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ends, torch.stack([(base * w).sum() + 3, (x * w).sum() + 3]))


def test_a_quadratic_score_is_exact_by_the_midpoint_rule():
    """F(x) = (w·x)² from a zero baseline: a_i = x_i w_i ∫ 2α (w·x) dα = x_i w_i (w·x), summing to F(x)."""
    w = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = _image()
    shares, ends = integrated_gradients(lambda b: (b * w).sum(dim=(1, 2, 3)) ** 2, x, torch.zeros_like(x), steps=2)
    torch.testing.assert_close(shares, x * w * (w * x).sum(), rtol=1e-12, atol=1e-12)
    assert ends[0].item() == 0.0 and shares.sum().item() == pytest.approx(ends[1].item(), rel=1e-12)


def test_shares_add_up_to_the_change_of_a_nonlinear_score_and_vanish_where_nothing_changed():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(20, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net = net.double()
    x = _image()
    base = x.clone()
    base[0, :2] = 0.0  # the first two rows change along the path, the rest stay as they are
    coarse, ends = integrated_gradients(lambda b: net(b).squeeze(1), x, base, steps=4)
    fine, _ = integrated_gradients(lambda b: net(b).squeeze(1), x, base, steps=256)
    change = (ends[1] - ends[0]).item()
    assert abs(fine.sum().item() - change) < 1e-5 < abs(coarse.sum().item() - change)  # the rule's error falls
    assert (fine[0, 2:] == 0).all() and (fine[0, :2] != 0).any()


def test_bad_settings_are_refused():
    x = _image()
    with pytest.raises(ValueError, match="steps >= 1"):
        integrated_gradients(lambda b: b.sum(dim=(1, 2, 3)), x, x, steps=0)
    with pytest.raises(ValueError, match="differ in shape"):
        integrated_gradients(lambda b: b.sum(dim=(1, 2, 3)), x, x[:, :2], steps=4)
