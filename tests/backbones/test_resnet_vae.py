"""ResNetVAE: shapes, forward is the encoder mean, reparameterisation only in training, errors."""

from __future__ import annotations

import pytest
import torch

from hvkit_plugins.backbones.resnet_vae import ResNetVAE
from hvkit_plugins.losses.vae_elbo import VAEELBOLoss


@pytest.fixture(scope="module")
def vae() -> ResNetVAE:
    torch.manual_seed(0)
    return ResNetVAE(in_channels=1, latent_dim=16)


def test_default_shapes_and_forward_is_mu(vae):
    x = torch.rand(2, 1, 64, 64)
    vae.eval()
    with torch.no_grad():
        recon, mu, logvar = vae.vae_forward(x)
        embedding = vae(x)
    assert vae.embedding_dim == 16 and vae.image_size == 64
    assert recon.shape == (2, 1, 64, 64) and mu.shape == logvar.shape == (2, 16)
    assert recon.min() >= 0 and recon.max() <= 1
    torch.testing.assert_close(embedding, mu)
    torch.testing.assert_close(recon, vae.decode(mu))  # eval mode decodes the mean


def test_training_mode_samples_the_latent():
    model = ResNetVAE(in_channels=1, latent_dim=4, image_size=8).train()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.manual_seed(1)
        first = model.vae_forward(x)[0]
        torch.manual_seed(2)
        second = model.vae_forward(x)[0]
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("in_channels,image_size", [(3, 16), (1, 8)])
def test_other_channels_and_sizes(in_channels, image_size):
    model = ResNetVAE(in_channels=in_channels, latent_dim=8, image_size=image_size).eval()
    with torch.no_grad():
        recon, mu, _ = model.vae_forward(torch.rand(2, in_channels, image_size, image_size))
    assert recon.shape == (2, in_channels, image_size, image_size) and mu.shape == (2, 8)


def test_elbo_trains_encoder_and_decoder():
    model = ResNetVAE(in_channels=1, latent_dim=4, image_size=8).train()
    x = torch.rand(2, 1, 8, 8)
    VAEELBOLoss()(x, *model.vae_forward(x)).backward()
    for module in (model.encoder.conv1, model.fc_logvar, model.decoder_input, model.decoder[-2]):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_errors():
    with pytest.raises(ValueError, match="multiple of 8"):
        ResNetVAE(in_channels=1, image_size=60)
    with pytest.raises(ValueError, match="latent_dim"):
        ResNetVAE(in_channels=1, latent_dim=0)
