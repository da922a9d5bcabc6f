"""Local binary patterns: codes against scikit-image, uniform classes and cell histograms by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.feature import local_binary_pattern

from hvkit_plugins.stages.handcrafted.lbp import lbp, lbp_codes, uniform_bins


@pytest.mark.parametrize("levels", [2, 3, 256])  # few grey levels: many ties between a pixel and its neighbours
def test_codes_equal_scikit_images(levels):
    rng = np.random.default_rng(levels)
    images = rng.integers(0, levels, size=(5, 23, 31)).astype(np.uint8)
    found = lbp_codes(images.astype(np.float64))
    expected = np.stack([local_binary_pattern(image, 8, 1, method="default") for image in images])
    np.testing.assert_array_equal(found, expected.astype(np.int64))


def test_uniform_classes_are_scikit_images_nri_uniform_classes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 40, 40)).astype(np.uint8)
    found = uniform_bins()[lbp_codes(images.astype(np.float64))].ravel()
    expected = np.stack([local_binary_pattern(image, 8, 1, method="nri_uniform") for image in images]).ravel()
    pairs = set(zip(found.tolist(), expected.astype(int).tolist()))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == 59  # one class for one class


def test_uniform_bins_by_hand():
    bins = uniform_bins()
    assert bins.max() == 58 and np.bincount(bins)[:58].tolist() == [1] * 58  # P (P - 1) + 2 uniform codes
    assert bins[0b00000000] == 0 and bins[0b00000001] == 1 and bins[0b11111111] == 57
    assert bins[0b00000101] == bins[0b01010101] == bins[0b10000010] == 58  # four transitions or more
    assert bins[0b10000001] != 58 and bins[0b11100000] != 58  # two transitions, across bit 0 too


def test_lbp_histograms_of_a_flat_image_by_hand():
    # A flat image: inside, every neighbour equals the pixel (all bits 1, code 255); on the border the
    # outside's zeros are darker than a bright pixel (bit 0) and an image of zeros is code 255 everywhere.
    image = torch.full((1, 1, 8, 8), 200, dtype=torch.uint8)
    found = lbp(image, grid=2).reshape(4, 59) ** 2  # each cell's distribution
    bins = uniform_bins()
    codes = lbp_codes(np.full((1, 8, 8), 200.0))[0]
    for k, (rows, cols) in enumerate(((slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                      (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8)))):
        expected = np.bincount(bins[codes[rows, cols]].ravel(), minlength=59) / 16
        np.testing.assert_allclose(found[k].numpy(), expected, atol=1e-6)
    assert found[0, bins[255]] == pytest.approx(9 / 16)  # the 3 x 3 inner pixels of the top-left cell
    dark = lbp(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), grid=2).reshape(4, 59)
    assert (dark[:, bins[255]] == 1).all() and dark.sum() == 4


def test_lbp_features_shape_channels_and_errors():
    rng = np.random.default_rng(1)
    grey = torch.from_numpy(rng.integers(0, 256, size=(3, 1, 64, 64)).astype(np.uint8))
    found = lbp(grey, chunk=2)
    assert found.shape == (3, 59 * 16) and found.dtype == torch.float32
    torch.testing.assert_close((found.reshape(3, 16, 59) ** 2).sum(-1), torch.ones(3, 16))
    torch.testing.assert_close(lbp(grey.expand(3, 3, 64, 64)), found)  # channels are averaged
    with pytest.raises(ValueError, match=r"lbp takes \(N, C, H, W\) images, got shape \(64, 64\)"):
        lbp(torch.zeros(64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="lbp needs images of at least 4 x 4 pixels, got 3 x 64"):
        lbp(torch.zeros(1, 1, 3, 64, dtype=torch.uint8))
