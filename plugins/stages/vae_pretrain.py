"""Generative pre-training of a VAE backbone (the SSL-HV ResNet VAE) with an ELBO loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hvkit import distributed
from hvkit.api import Component
from hvkit.engine import StageContext, TrainConfig, Trainer, full_precision
from hvkit_plugins.stages.batches import check_image_sampler, epoch_batches, image_sampler, split_images
from hvkit_plugins.stages.encoder import Encoder, save_encoder, to_float
from hvkit_plugins.stages.monitor import stage_monitor


class _Reconstruct(nn.Module):
    """``forward`` = the backbone's ``vae_forward``, so DDP synchronises the VAE's gradients."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.vae.vae_forward(x)


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=10, optimizer={"name": "Adam", "lr": 1e-3})


class VAEPretrain:
    """VAE pre-training: the backbone's ``vae_forward`` reconstructs images, ``loss`` is the ELBO.

    The backbone (default ``resnet_vae``) must offer ``vae_forward(x) -> (recon, mu, logvar)``;
    its ``forward`` (the encoder mean) is what later stages embed with.
    """

    check_recipe = staticmethod(check_image_sampler)

    def __init__(self, loss: Component["loss"] = "vae_elbo",
                 backbone: Component["backbone"] = "resnet_vae",
                 transform: Component["transform"] | None = None,
                 sampler: Component["sampler"] = "random",
                 splits: list[str] = ["train"],
                 batch_size: int = 128,
                 train: TrainConfig = _default_train()):
        self.loss, self.backbone, self.transform, self.sampler = loss, backbone, transform, sampler
        self.splits, self.batch_size, self.train = splits, batch_size, train

    def run(self, ctx: StageContext) -> dict[str, Any]:
        images = split_images(ctx, self.splits)
        backbone = ctx.build_backbone(self.backbone)
        if not hasattr(backbone, "vae_forward"):
            raise ValueError(f"backbone {self.backbone!r} has no vae_forward; "
                             "use a VAE backbone such as resnet_vae")
        size = getattr(backbone, "image_size", None)
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"{self.backbone!r} reconstructs {size} x {size} images, the data's are "
                             f"{images.shape[-2]} x {images.shape[-1]}; make them square and equal (data image_size: "
                             f"{size}, or the backbone's image_size)")
        loss_fn = ctx.build("loss", self.loss, embedding_dim=backbone.embedding_dim).to(ctx.device)
        transform = ctx.build("transform", self.transform) if self.transform is not None else None
        sampler = image_sampler(ctx, self.sampler, len(images), self.batch_size)
        model = distributed.wrap(_Reconstruct(backbone), ctx.device, self.train.channels_last,
                                 self.train.sync_batchnorm)

        def step(index: list[int], generator: torch.Generator):
            x = to_float(images[torch.as_tensor(index)], ctx.device)
            if transform is not None:
                x = transform(x, generator)
            recon, mu, logvar = model(x)
            with full_precision(ctx.device):
                loss = loss_fn(x.float(), recon.float(), mu.float(), logvar.float())
            terms = loss_fn.terms() if hasattr(loss_fn, "terms") else {}
            return loss, {k: float(v) for k, v in terms.items()}

        trainer = Trainer(ctx, {"vae": model, "loss": loss_fn}, self.train,
                          steps_per_epoch=len(sampler), loss_modules=("loss",))
        last = trainer.fit(epoch_batches(sampler), step, monitor=stage_monitor(ctx, Encoder(backbone), self.train))
        path = save_encoder(ctx, Encoder(backbone), self.backbone, None)
        return {"encoder": path, "metrics": {"final_loss": last.get("loss"), "steps": trainer.step}}
