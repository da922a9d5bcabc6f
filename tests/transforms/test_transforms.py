"""The batched handwriting transforms: contract, identity at zero strength, references, geometry, devices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

from hvkit.testing import check_transform
from hvkit_plugins.transforms import (Compose, ContrastJitter, GaussianBlur, GaussianNoise, HandwritingViews,
                                      InkThickness, RandomAffine, RandomResizedCrop)
from hvkit_plugins.transforms.batched import resample

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

ZERO = {
    RandomAffine: dict(degrees=0.0, shear=0.0, scale=(1.0, 1.0), translate=0.0),
    RandomResizedCrop: dict(scale=(1.0, 1.0), ratio=(1.0, 1.0)),
    InkThickness: dict(amount=(0.0, 0.0)),
    ContrastJitter: dict(contrast=0.0, brightness=0.0, gamma=0.0, p=1.0),
    GaussianNoise: dict(std=(0.0, 0.0)),
    GaussianBlur: dict(sigma=(0.0, 0.0), p=1.0),
    HandwritingViews: dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), degrees=0.0, shear=0.0, scale=(1.0, 1.0),
                           translate=0.0, ink=(0.0, 0.0), contrast=0.0, gamma=0.0, blur=0.0, noise=(0.0, 0.0)),
}
ALL = list(ZERO)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def strokes(n: int = 6, size: int = 32, device: str = "cpu") -> torch.Tensor:
    """Bright 2-pixel strokes on a dark background, a different one per sample."""
    x = torch.zeros(n, 1, size, size, device=device)
    for k in range(n):
        x[k, 0, 8 + k: 10 + k, 4:28] = 1.0
        x[k, 0, 6:26, 10 + 2 * k: 12 + 2 * k] = 0.8
    return x


@pytest.mark.parametrize("factory", ALL)
def test_contract(factory: type) -> None:
    check_transform(factory)


@pytest.mark.parametrize("factory", ALL)
def test_zero_strength_is_the_identity(factory: type) -> None:
    x = torch.rand(5, 2, 24, 24, generator=gen(3))
    out = factory(**ZERO[factory])(x, gen(1))
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("factory", ALL)
def test_each_sample_gets_its_own_parameters(factory: type) -> None:
    params = {GaussianBlur: dict(p=1.0, sigma=(0.3, 2.0)), ContrastJitter: dict(p=1.0),
              GaussianNoise: dict(std=(0.01, 0.1))}.get(factory, {})
    x = strokes(1).repeat(8, 1, 1, 1)
    out = factory(**params)(x, gen(0))
    assert len({o.numpy().tobytes() for o in out}) == 8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("factory", ALL)
def test_runs_on_the_input_device(factory: type, device: str) -> None:
    x = strokes(device=device)
    out = factory()(x, gen(0, device))
    assert out.device == x.device and out.shape == x.shape


def test_dilation_thickens_and_erosion_thins() -> None:
    x = strokes()
    thick = InkThickness(amount=(1.0, 1.0))(x, gen())
    thin = InkThickness(amount=(-1.0, -1.0))(x, gen())
    half = InkThickness(amount=(0.5, 0.5))(x, gen())
    assert (thick.sum((1, 2, 3)) > 1.5 * x.sum((1, 2, 3))).all()
    assert (thin.sum((1, 2, 3)) < 0.5 * x.sum((1, 2, 3))).all()
    torch.testing.assert_close(half, 0.5 * (x + thick))
    ref_dilate = np.stack([ndimage.grey_dilation(a[0], size=(3, 3), mode="nearest") for a in x.numpy()])[:, None]
    ref_erode = np.stack([ndimage.grey_erosion(a[0], size=(3, 3), mode="nearest") for a in x.numpy()])[:, None]
    np.testing.assert_allclose(thick.numpy(), ref_dilate)
    np.testing.assert_allclose(thin.numpy(), ref_erode)
    wide = InkThickness(amount=(1.0, 1.0), radius=2)(x, gen())
    np.testing.assert_allclose(wide.numpy()[:, 0], np.stack([ndimage.grey_dilation(a[0], size=(5, 5), mode="nearest")
                                                             for a in x.numpy()]))


def test_affine_moves_a_blob_where_its_matrix_says() -> None:
    size = 48
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((rows - 28.0) ** 2 + (cols - 17.0) ** 2) / (2 * 2.5 ** 2))  # centred at x=17, y=28
    x = blob.expand(16, 1, size, size).contiguous()
    t = RandomAffine(degrees=30.0, shear=20.0, scale=(0.8, 1.2), translate=0.1)
    theta = t.theta(x, gen(5))
    out = resample(x, theta)
    forward = torch.linalg.inv(theta.double())
    centre = (size - 1) / 2
    p = torch.tensor([(17 - centre) / (size / 2), (28 - centre) / (size / 2), 1.0], dtype=torch.float64)
    expect = (forward @ p)[:, :2] * (size / 2) + centre  # (x, y) in pixels: an affine map moves the centroid
    mass = out.sum((1, 2, 3))
    got = torch.stack([(out[:, 0] * cols).sum((1, 2)) / mass, (out[:, 0] * rows).sum((1, 2)) / mass], 1)
    torch.testing.assert_close(got.double(), expect, atol=0.05, rtol=0)
    linear = forward[:, :2, :2]
    zoom = torch.sqrt(torch.linalg.det(linear))  # rotation and shear keep the area
    assert (zoom >= 0.8 - 1e-5).all() and (zoom <= 1.2 + 1e-5).all()
    assert (forward[:, :2, 2].abs() <= 0.2 + 1e-6).all()  # a 10 % shift is 0.2 in [-1, 1] coordinates


def test_affine_has_no_flip() -> None:
    theta = RandomAffine(degrees=0.0, shear=0.0, scale=(0.5, 2.0), translate=0.0).theta(strokes(64), gen(2))
    assert (theta[:, 0, 0] > 0).all() and (theta[:, 1, 1] > 0).all()


def test_resized_crop_of_a_ramp_is_the_ramp_of_the_box() -> None:
    size = 40
    ramp = ((torch.arange(size) + 0.5) / size).view(1, 1, 1, size).expand(6, 1, size, size).contiguous()
    t = RandomResizedCrop(scale=(0.25, 0.64), ratio=(0.5, 2.0))
    theta = t.theta(ramp, gen(9))
    w, cx = theta[:, 0, 0], theta[:, 0, 2]
    h = theta[:, 1, 1]
    assert ((w * h >= 0.25 - 1e-5) & (w * h <= 0.64 + 1e-5) | (w == 1) | (h == 1)).all()
    assert (cx.abs() + w <= 1 + 1e-6).all() and (theta[:, 1, 2].abs() + h <= 1 + 1e-6).all()
    out = resample(ramp, theta)
    u = (torch.arange(size) + 0.5) / size * 2 - 1  # output x in [-1, 1]
    expect = ((cx[:, None] + w[:, None] * u) + 1) / 2  # the input ramp's value at the sampled x
    torch.testing.assert_close(out[:, 0, size // 2], expect, atol=1e-5, rtol=0)


def test_blur_matches_torchvision_inside_the_border() -> None:
    x = strokes()
    for sigma in (0.5, 1.0, 1.7):
        ours = GaussianBlur(sigma=(sigma, sigma), kernel_size=7, p=1.0)(x, gen())
        ref = tv_gaussian_blur(x, kernel_size=[7, 7], sigma=[sigma, sigma])
        torch.testing.assert_close(ours[..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.sum(), x.sum(), rtol=1e-5, atol=0)  # the zero padding keeps inner mass


def test_contrast_jitter_formula() -> None:
    x = strokes()
    scaled = ContrastJitter(contrast=0.4, brightness=0.0, gamma=0.0, p=1.0)(x, gen(1))
    ratio = scaled[x > 0] / x[x > 0]
    per_sample = (scaled.sum((1, 2, 3)) / x.sum((1, 2, 3)))
    assert ((per_sample >= 0.6 - 1e-6) & (per_sample <= 1.4 + 1e-6)).all() and per_sample.std() > 0.01
    assert (scaled[x == 0] == 0).all() and ratio.min() > 0.59
    bent = ContrastJitter(contrast=0.0, brightness=0.0, gamma=0.5, p=1.0)(x, gen(2))
    k = torch.log(bent[:, 0, 6, 10 + 2 * torch.arange(6)].diagonal()) / math.log(0.8)  # gamma from 0.8 ** g
    assert ((k > math.exp(-0.5) - 1e-4) & (k < math.exp(0.5) + 1e-4)).all()
    torch.testing.assert_close(bent[x == 1.0], torch.ones_like(bent[x == 1.0]))  # 1 ** g = 1


def test_gaussian_noise_has_the_drawn_spread() -> None:
    x = torch.full((4, 1, 64, 64), 0.5)
    out = GaussianNoise(std=(0.05, 0.05))(x, gen())
    torch.testing.assert_close((out - x).std((1, 2, 3)), torch.full((4,), 0.05), atol=0.004, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_probability_zero_leaves_images_alone() -> None:
    x = strokes()
    for t in (RandomAffine(p=0.0), RandomResizedCrop(p=0.0), InkThickness(p=0.0), ContrastJitter(p=0.0),
              GaussianNoise(p=0.0), GaussianBlur(p=0.0)):
        torch.testing.assert_close(t(x, gen()), x, atol=1e-6, rtol=0)


def test_compose_applies_in_order_with_one_generator() -> None:
    x = strokes()
    a, b = InkThickness(), RandomAffine()
    g1, g2 = gen(4), gen(4)
    expect = b(a(x, g2), g2)
    torch.testing.assert_close(Compose([a, b])(x, g1), expect)
    with pytest.raises(ValueError, match="empty"):
        Compose([])
    with pytest.raises(ValueError, match="not a built transform"):
        Compose(["random_affine"])


def test_handwriting_views_two_calls_give_two_views() -> None:
    t, g = HandwritingViews(), gen(0)
    x = strokes()
    v1, v2 = t(x, g), t(x, g)
    assert not torch.equal(v1, v2)
    g = gen(0)
    torch.testing.assert_close(t(x, g), v1)
    assert v1.min() >= 0 and v1.max() <= 1


@pytest.mark.parametrize("factory, kwargs, message", [
    (RandomAffine, {"degrees": -1.0}, "degrees"),
    (RandomAffine, {"scale": (1.2, 0.8)}, "scale"),
    (RandomAffine, {"translate": 2.0}, "translate"),
    (RandomResizedCrop, {"scale": (0.5, 1.5)}, "scale"),
    (RandomResizedCrop, {"ratio": (2.0, 1.0)}, "ratio"),
    (InkThickness, {"amount": (-2.0, 0.0)}, "amount"),
    (InkThickness, {"radius": 0}, "radius"),
    (ContrastJitter, {"contrast": 1.5}, "contrast"),
    (GaussianNoise, {"std": (0.1,)}, "std"),
    (GaussianBlur, {"kernel_size": 4}, "kernel_size"),
    (GaussianBlur, {"p": 1.5}, "p=1.5"),
])
def test_invalid_settings(factory: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


def test_batched_crop_is_as_a_per_sample_loop() -> None:
    x = strokes()
    t = RandomResizedCrop()
    theta = t.theta(x, gen(6))
    looped = torch.cat([F.grid_sample(x[k:k + 1], F.affine_grid(theta[k:k + 1, :2], [1, 1, 32, 32],
                                                                 align_corners=False), align_corners=False)
                        for k in range(len(x))])
    torch.testing.assert_close(t(x, gen(6)), looped)
