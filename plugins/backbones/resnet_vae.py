"""ResNet-18 variational auto-encoder for small grey-scale images, as in SSL-HV (Chauhan et al. 2024)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18


class _UpBlock(nn.Module):
    """A ResNet basic block run backwards: 3x3 conv, then upsample and 3x3 conv, plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=scale, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity() if scale == 1 and in_channels == out_channels else nn.Sequential(
            nn.Upsample(scale_factor=scale, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetVAE(nn.Module):
    """ResNet-18 VAE (SSL-HV): encoder mean as the embedding; ``vae_forward`` gives (recon, mu, logvar).

    Encoder: torchvision's ResNet-18 trunk with a 3x3 stride-1 first convolution over
    ``in_channels`` (context) and no max-pool, as SSL-HV's pl_bolts encoder for 64x64 inputs,
    then linear maps from its 512 pooled features to ``mu`` and ``logvar`` of size ``latent_dim``
    (default 256). Decoder, mirrored: a linear map to 512x4x4, nearest upsampling to
    ``image_size / 8``, four stages of two residual up-blocks (512 -> 256 -> 128 -> 64 channels,
    x2 upsampling in the first three), a 3x3 convolution to ``in_channels`` and a sigmoid, so
    reconstructions are (in_channels, image_size, image_size) in [0, 1]. ``image_size``
    (default 64) may be any multiple of 8. ``forward(x)`` returns ``mu`` (``embedding_dim`` =
    ``latent_dim``); ``vae_forward(x)`` samples ``z = mu + exp(logvar / 2) * eps`` in training
    mode and uses ``z = mu`` in eval mode.
    """

    def __init__(self, in_channels: int, latent_dim: int = 256, image_size: int = 64) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"resnet_vae: in_channels must be >= 1, got {in_channels}")
        if latent_dim < 1:
            raise ValueError(f"resnet_vae: latent_dim must be >= 1, got {latent_dim}")
        if image_size < 8 or image_size % 8:
            raise ValueError(f"resnet_vae: image_size must be a positive multiple of 8 (the decoder "
                             f"upsamples x8), got {image_size}; resize the images, e.g. to 64")
        self.in_channels = in_channels
        self.latent_dim = latent_dim
        self.embedding_dim = latent_dim
        self.image_size = image_size

        trunk = resnet18(weights=None)
        trunk.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        trunk.maxpool = nn.Identity()
        trunk.fc = nn.Identity()
        self.encoder = trunk
        self.fc_mu = nn.Linear(512, latent_dim)
        self.fc_logvar = nn.Linear(512, latent_dim)

        self.decoder_input = nn.Linear(latent_dim, 512 * 4 * 4)
        stages = []
        for in_c, out_c, scale in ((512, 256, 2), (256, 128, 2), (128, 64, 2), (64, 64, 1)):
            stages += [_UpBlock(in_c, out_c, scale), _UpBlock(out_c, out_c, 1)]
        self.decoder = nn.Sequential(
            nn.Upsample(size=image_size // 8, mode="nearest"),
            *stages,
            nn.Conv2d(64, in_channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | x), each (B, latent_dim)."""
        features = self.encoder(x)
        return self.fc_mu(features), self.fc_logvar(features)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, in_channels, image_size, image_size) in [0, 1] from latents (B, latent_dim)."""
        return self.decoder(self.decoder_input(z).view(-1, 512, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def vae_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(recon, mu, logvar), with the reparameterisation trick in training mode."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        return self.decode(z), mu, logvar
