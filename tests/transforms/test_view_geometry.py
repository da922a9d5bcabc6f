"""Where a view came from: ``with_geometry`` gives ``__call__``'s views and their output->input maps."""

from __future__ import annotations

import pytest
import torch

from hvkit_plugins.transforms import HandwritingViews, RandomAffine, RandomResizedCrop
from hvkit_plugins.transforms.batched import resample

GEOMETRIC = [HandwritingViews, RandomAffine, RandomResizedCrop]


def _images(n: int = 5, size: int = 24) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("factory", GEOMETRIC)
def test_with_geometry_gives_the_views_of_call_for_the_same_generator_state(factory: type) -> None:
    t, x = factory(), _images()
    g_call, g_geometry = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first, second = t(x, g_call), t(x, g_call)
    (view_1, theta_1), (view_2, theta_2) = t.with_geometry(x, g_geometry), t.with_geometry(x, g_geometry)
    assert torch.equal(view_1, first) and torch.equal(view_2, second)
    assert theta_1.shape == (5, 3, 3) and not torch.equal(theta_1, theta_2)


def test_handwriting_views_theta_is_the_affine_after_the_crop() -> None:
    t, x = HandwritingViews(), _images()
    g = torch.Generator().manual_seed(4)
    _, theta = t.with_geometry(x, g)
    g = torch.Generator().manual_seed(4)
    torch.testing.assert_close(theta, t.affine.theta(x, g) @ t.crop.theta(x, g))


@pytest.mark.parametrize("factory", [RandomAffine, RandomResizedCrop])
def test_the_view_is_the_input_resampled_by_theta(factory: type) -> None:
    view, theta = factory().with_geometry(_images(), torch.Generator().manual_seed(5))
    assert torch.equal(view, resample(_images(), theta))


def test_handwriting_views_without_strength_have_the_identity_geometry() -> None:
    t = HandwritingViews(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), degrees=0.0, shear=0.0, scale=(1.0, 1.0),
                         translate=0.0, ink=(0.0, 0.0), contrast=0.0, gamma=0.0, blur=0.0, noise=(0.0, 0.0))
    x = _images()
    view, theta = t.with_geometry(x, torch.Generator().manual_seed(0))
    assert torch.equal(view, x)
    assert torch.equal(theta, torch.eye(3).expand(5, 3, 3))
