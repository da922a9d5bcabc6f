"""Self-supervised pre-training on two augmented views (VICReg, Barlow Twins, NT-Xent, BYOL, DINO, SwAV …)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hvkit import distributed
from hvkit.api import Component
from hvkit.engine import StageContext, TrainConfig, Trainer, full_precision
from hvkit_plugins.stages.batches import check_image_sampler, epoch_batches, image_sampler, split_images
from hvkit_plugins.stages.encoder import Encoder, precise_batchnorm, save_encoder, to_float
from hvkit_plugins.stages.monitor import stage_monitor


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=10, optimizer={"name": "AdamW", "lr": 1e-3, "weight_decay": 1e-4},
                       scheduler={"name": "CosineAnnealingLR", "warmup_steps": 20})


def encode_views(model: torch.nn.Module, view_a: torch.Tensor, view_b: torch.Tensor,
                 joint: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views' outputs (float32): in one pass when ``joint`` (shared BatchNorm statistics), else one pass each."""
    if joint:
        z_a, z_b = model(torch.cat([view_a, view_b])).float().chunk(2)
        return z_a, z_b
    return model(view_a).float(), model(view_b).float()


def encode_views_with_maps(model: torch.nn.Module, view_a: torch.Tensor, view_b: torch.Tensor,
                           joint: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both views' head outputs and last feature maps (float32), as :func:`encode_views` (mode ``head_and_map``)."""
    if joint:
        z, maps = model(torch.cat([view_a, view_b]), "head_and_map")
        return list(z.float().chunk(2)), list(maps.float().chunk(2))
    outputs = [model(view, "head_and_map") for view in (view_a, view_b)]
    return [z.float() for z, _ in outputs], [maps.float() for _, maps in outputs]


def view_with_geometry(transform: Callable, images: torch.Tensor,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A view and its output->input map theta (B, 3, 3) from the transform's ``with_geometry``, else theta None."""
    if hasattr(transform, "with_geometry"):
        return transform.with_geometry(images, generator)
    return transform(images, generator), None


def local_crops(transform: Callable, images: torch.Tensor, generator: torch.Generator, count: int,
                size: int) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """``count`` views of every image resized to ``size`` pixels, stacked view by view, and each view's theta.

    Made in float32 with autocast off (autocast has no bfloat16 antialiased resize); the resize
    moves no normalised coordinate, so each theta (:func:`view_with_geometry`) still maps the
    small view's cells into the original image.
    """
    with full_precision(images.device):
        crops = [view_with_geometry(transform, images, generator) for _ in range(count)]
        small = torch.cat([F.interpolate(crop, size=size, mode="bilinear", antialias=True) for crop, _ in crops])
    return small, [theta for _, theta in crops]


def cell_positions(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Where the cells of a view's (height, width) feature map lie in the original image: (B, h, w, 2).

    Cell (i, j)'s centre in the view, ``((2j + 1) / w - 1, (2i + 1) / h - 1)`` in normalised (x, y)
    coordinates, mapped by the view's output->input map ``theta`` (B, 3, 3): ``affine_grid``'s
    sampling grid at the map's resolution.
    """
    return F.affine_grid(theta[:, :2].float(), [theta.shape[0], 1, height, width], align_corners=False)


def multi_view_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    global_views: Sequence[torch.Tensor],
                    local_views: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Multi-crop (Caron et al. 2020, SwAV): the mean view loss over the pairs of views that hold a global view.

    With global views g_1, g_2 and local views l_1 … l_k the pairs are (g_1, g_2) and each
    (g_i, l_j): ``L = (loss(g_1, g_2) + sum_ij loss(g_i, l_j)) / (1 + 2k)``; local views are
    never compared with each other. With no local view it is the two-view loss itself.
    """
    if len(global_views) != 2:
        raise ValueError(f"multi_view_loss: needs 2 global views, got {len(global_views)}")
    pairs = [tuple(global_views)] + [(g, v) for g in global_views for v in local_views]
    return torch.stack([loss_fn(a, b) for a, b in pairs]).mean()


def teacher_view_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      global_views: Sequence[torch.Tensor], teacher_views: Sequence[torch.Tensor],
                      local_views: Sequence[torch.Tensor] = (), symmetric: bool = True) -> torch.Tensor:
    """Momentum teacher (BYOL, Grill et al. 2020): each online view against the teacher's other global views.

    With online outputs o_1, o_2 of the global views, o_3 … o_{2+k} of the local views and the
    teacher's outputs t_1, t_2 of the global views, ``L = mean over (v, g), g in {1, 2}, g != v,
    of loss(o_v, t_g)``: ``(loss(o_1, t_2) + loss(o_2, t_1)) / 2`` with no local view, and each
    local view compared with both teacher views (as DINO's multi-crop), 2 + 2k pairs in all.
    Without ``symmetric`` (MoCo's asymmetric form) o_2 is no query: ``loss(o_1, t_2)`` with no
    local view, 1 + 2k pairs in all.
    """
    if len(global_views) != 2 or len(teacher_views) != 2:
        raise ValueError(f"teacher_view_loss: needs 2 global views and 2 teacher views, "
                         f"got {len(global_views)} and {len(teacher_views)}")
    online = [*global_views, *local_views]
    pairs = [(o, t) for v, o in enumerate(online) for g, t in enumerate(teacher_views)
             if g != v and (symmetric or v != 1)]
    return torch.stack([loss_fn(o, t) for o, t in pairs]).mean()


def output_std(z: torch.Tensor) -> torch.Tensor:
    """``sqrt(D) * mean_j std_j(z / ||z||)`` over a batch of outputs z (B, D): the collapse monitor of
    SimSiam (Chen & He 2021, Fig. 2), scaled so that outputs spread evenly over the sphere read about 1
    and collapsed ones (one direction for every image) 0. Detached."""
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[1])


def momentum_teacher(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` that is never optimised (no gradients), updated by :func:`update_teacher`."""
    return copy.deepcopy(encoder).requires_grad_(False)


def teacher_momentum_at(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule ``tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2``: tau_base at k = 0, 1 at k = K."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


@torch.no_grad()
def update_teacher(teacher: nn.Module, online: nn.Module, momentum: float) -> None:
    """``xi <- tau xi + (1 - tau) theta`` (tau = ``momentum``) per parameter; buffers copied from ``online``."""
    for xi, theta in zip(teacher.parameters(), online.parameters(), strict=True):
        xi.lerp_(theta, 1 - momentum)
    for mine, theirs in zip(teacher.buffers(), online.buffers(), strict=True):
        mine.copy_(theirs)


class SSLPretrain:
    """Self-supervised pre-training: two views → backbone → expander → a view loss (default VICReg).

    Each batch of images (labels unused) is augmented twice by ``transform``; the views go
    through the backbone and the ``head`` (the VICReg expander by default) and the ``loss``
    compares the two views' outputs. With ``joint_views`` both views share one forward pass,
    so BatchNorm normalises them together; without it (VICReg's reference code) each view is
    its own pass with its own batch statistics. With ``local_views`` = k > 0 each image also
    gives k small views (multi-crop, Caron et al. 2020): ``local_transform`` (by default
    crops of 10-40% of the area, a letter or two of a word) resized to ``local_size`` pixels,
    all k in one more pass, each compared with both global views (:func:`multi_view_loss`; a
    loss that declares ``takes_local_views``, e.g. ``swav``, gets all views in one call instead) —
    local stroke style has to match the whole word, at ``k (local_size / size)^2`` extra
    image cost; BatchNorm's running statistics then average the global and the local passes,
    so ``precise_bn`` (re-estimate them on the clean training images after training,
    :func:`~hvkit_plugins.stages.encoder.precise_batchnorm`) matters there. With
    ``teacher_momentum`` = tau_base (BYOL, Grill et al. 2020; for a loss that declares
    ``needs_teacher``, e.g. ``byol``) a momentum teacher, a copy of backbone and head that is
    never optimised and, like the online net, normalises with batch statistics, encodes the
    two global views without gradient; the loss compares each online view with the teacher's
    other global views (:func:`teacher_view_loss`), and after each optimiser step the teacher
    moves to ``xi <- tau_k xi + (1 - tau_k) theta``, k the steps done before it, tau_k rising
    from tau_base towards 1 on a cosine over the run's K steps (:func:`teacher_momentum_at`);
    the teacher is checkpointed. A loss whose ``symmetric`` is False (``moco_v2``'s default)
    compares only the first online global view (and the local views) with the teacher. A loss
    that declares both ``needs_teacher`` and ``takes_local_views`` (``tico`` with ``teacher``)
    gets every view of the step in one call, ``loss(o_1, o_2, *local, teacher=(t_1, t_2))``, and
    pairs them itself, so state it keeps (TiCo's covariance) moves once per step, not once per
    pair. Once per step, after the loss, the loss's ``observe_teacher`` receives the teacher's
    global-view outputs (DINO updates its centre there, MoCo v2 its queue of keys). A loss that
    declares ``takes_feature_maps`` (``vicregl``) also gets each view's last backbone feature map and its
    cells' positions in the original image (:func:`cell_positions`, from the transform's
    ``with_geometry``; None for a transform without it), and is built with the backbone's
    ``map_channels``; it needs a backbone with ``feature_map`` (``small_cnn``, the ResNets, ``torchvision``) and
    takes no teacher. With local views such a loss must also declare ``takes_local_views``: it
    gets every view in one call, ``loss(z_1, z_2, *local, maps=(m_1, m_2, *local maps),
    positions=(...))``, each local view's map at its own (smaller) size and its cells' positions
    mapped back to the original image through the local transform's ``with_geometry`` (the
    resize to ``local_size`` moves no normalised coordinate), which is what lets the loss match a
    global view's cells with a local view's (VICRegL's multi-crop pairs). The online
    backbone and head are saved as this stage's ``encoder`` for later stages, or with
    ``export_teacher`` the teacher's (DINO evaluates its teacher, the better of the two
    there; BYOL and MoCo v3 the online net).

    Each line of the stage's ``log.jsonl`` holds, beside the loss, ``output_std`` (:func:`output_std`
    of the first global view's outputs: near 0 the outputs collapsed) and, for a two-view call of a
    loss with ``terms()``, its parts (VICReg's invariance, variance and covariance); ``hvkit curves``
    draws them.
    """

    check_recipe = staticmethod(check_image_sampler)

    def __init__(self, loss: Component["loss"] = "vicreg",
                 head: Component["head"] = {"name": "mlp", "dims": [2048, 2048, 2048]},
                 transform: Component["transform"] = "handwriting_views",
                 sampler: Component["sampler"] = "random",
                 splits: list[str] = ["train"],
                 batch_size: int = 128,
                 backbone: Component["backbone"] | None = None,
                 joint_views: bool = True,
                 local_views: int = 0,
                 local_size: int = 32,
                 local_transform: Component["transform"] = {"name": "handwriting_views", "crop_scale": [0.1, 0.4]},
                 precise_bn: bool = False,
                 teacher_momentum: float | None = None,
                 export_teacher: bool = False,
                 train: TrainConfig = _default_train()):
        if batch_size < 2:
            raise ValueError("batch_size must be at least 2 for a self-supervised loss")
        if local_views < 0 or local_size < 8:
            raise ValueError(f"local_views={local_views} must be >= 0 and local_size={local_size} >= 8 pixels")
        if teacher_momentum is not None and not 0 < teacher_momentum < 1:
            raise ValueError(f"teacher_momentum={teacher_momentum} must lie strictly between 0 and 1; BYOL uses 0.996")
        if export_teacher and teacher_momentum is None:
            raise ValueError("export_teacher needs a momentum teacher; set teacher_momentum (DINO uses 0.996)")
        if export_teacher and train.ema is not None:
            raise ValueError("export_teacher exports the momentum teacher, itself a moving average of the online "
                             "net, while train.ema averages the online net, which is then not exported; set one")
        self.loss, self.head, self.transform, self.sampler = loss, head, transform, sampler
        self.splits, self.batch_size, self.backbone, self.train = splits, batch_size, backbone, train
        self.joint_views = joint_views
        self.local_views, self.local_size, self.local_transform = local_views, local_size, local_transform
        self.precise_bn = precise_bn
        self.teacher_momentum = teacher_momentum
        self.export_teacher = export_teacher

    def _check_teacher(self, loss_fn: nn.Module) -> None:
        """A loss that declares ``needs_teacher`` needs ``teacher_momentum``, and only such a loss may have one."""
        name = self.loss if isinstance(self.loss, str) else self.loss["name"]
        needs = getattr(loss_fn, "needs_teacher", False)
        if needs and self.teacher_momentum is None:
            raise ValueError(f"loss {name} needs a momentum teacher; set teacher_momentum (BYOL uses 0.996)")
        if not needs and self.teacher_momentum is not None:
            raise ValueError(f"teacher_momentum is set but loss {name} uses no teacher; remove teacher_momentum "
                             "or use a loss that needs one (byol, dino, moco_v2, moco_v3, tico with teacher: true)")

    def _map_context(self, ctx: StageContext, backbone: nn.Module, backbone_spec: str | dict) -> dict[str, int]:
        """``{"map_channels": C}`` for a loss that ``takes_feature_maps`` (checked against the stage), else ``{}``."""
        name = self.loss if isinstance(self.loss, str) else self.loss["name"]
        factory = ctx.registry.get("loss", name).factory
        if not getattr(factory, "takes_feature_maps", False):
            return {}
        backbone_name = backbone_spec if isinstance(backbone_spec, str) else backbone_spec["name"]
        if not (hasattr(backbone, "feature_map") and hasattr(backbone, "pool")):
            raise ValueError(f"loss {name} takes feature maps but backbone {backbone_name} has none (no feature_map "
                             "and pool); use small_cnn or a ResNet")
        if self.teacher_momentum is not None:
            raise ValueError(f"loss {name} takes feature maps, which ssl_pretrain gives without a teacher; "
                             "remove teacher_momentum")
        if self.local_views and not getattr(factory, "takes_local_views", False):
            raise ValueError(f"loss {name} takes feature maps but not local views (it does not declare "
                             "takes_local_views); remove local_views")
        return {"map_channels": int(backbone.map_channels)}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        images = split_images(ctx, self.splits)
        backbone_spec = self.backbone or ctx.recipe["model"]["backbone"]
        backbone = ctx.build_backbone(backbone_spec)
        head = ctx.build("head", self.head, in_dim=backbone.embedding_dim).to(ctx.device)
        encoder = Encoder(backbone, head)
        loss_fn = ctx.build("loss", self.loss, embedding_dim=head.out_dim,
                            **self._map_context(ctx, backbone, backbone_spec)).to(ctx.device)
        self._check_teacher(loss_fn)
        teacher = momentum_teacher(encoder) if self.teacher_momentum is not None else None
        transform = ctx.build("transform", self.transform)
        local_transform = ctx.build("transform", self.local_transform) if self.local_views else None
        sampler = image_sampler(ctx, self.sampler, len(images), self.batch_size)
        model = distributed.wrap(encoder, ctx.device, self.train.channels_last, self.train.sync_batchnorm)
        gathered = getattr(loss_fn, "needs_global_batch", False) and ctx.world_size > 1
        ctx.log(f"{len(images)} images, {len(sampler)} batches of {self.batch_size} per epoch")

        def feature_map_step(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            (view_a, theta_a), (view_b, theta_b) = (view_with_geometry(transform, x, generator) for _ in range(2))
            views, maps = encode_views_with_maps(model, view_a, view_b, self.joint_views)
            thetas = [theta_a, theta_b]
            if local_transform is not None:  # the global views first, then the local views, all k in one pass
                small, local_thetas = local_crops(local_transform, x, generator, self.local_views, self.local_size)
                local, local_maps = model(small, "head_and_map")
                views += list(local.float().chunk(self.local_views))
                maps += list(local_maps.float().chunk(self.local_views))
                thetas += local_thetas
            logged = {"output_std": output_std(views[0])}
            with full_precision(ctx.device):
                positions = None if any(t is None for t in thetas) else [cell_positions(theta, *m.shape[2:])
                                                                         for theta, m in zip(thetas, maps)]
                if gathered:
                    views, maps = ([distributed.gather_with_grad(t) for t in ts] for ts in (views, maps))
                    positions = None if positions is None else [distributed.gather(p) for p in positions]
                loss = loss_fn(*views, maps=tuple(maps), positions=None if positions is None else tuple(positions))
            return loss, logged

        def step(index: list[int], generator: torch.Generator):
            x = to_float(images[torch.as_tensor(index)], ctx.device)
            if getattr(loss_fn, "takes_feature_maps", False):
                return feature_map_step(x, generator)
            inputs = transform(x, generator), transform(x, generator)
            views = list(encode_views(model, *inputs, self.joint_views))
            targets = []
            if teacher is not None:
                with torch.no_grad():
                    targets = list(encode_views(teacher, *inputs, self.joint_views))
            local = []
            if local_transform is not None:
                small, _ = local_crops(local_transform, x, generator, self.local_views, self.local_size)
                local = list(model(small).float().chunk(self.local_views))
            logged = {"output_std": output_std(views[0])}
            with full_precision(ctx.device):
                if gathered:
                    views, local = ([distributed.gather_with_grad(z) for z in zs] for zs in (views, local))
                    targets = [distributed.gather(t) for t in targets]
                if teacher is None:
                    if getattr(loss_fn, "takes_local_views", False):
                        return loss_fn(*views, *local), logged
                    loss = multi_view_loss(loss_fn, views, local)
                    if hasattr(loss_fn, "terms") and not local:  # one call: its parts are the step's (logged)
                        logged |= loss_fn.terms()
                    return loss, logged
                if getattr(loss_fn, "takes_local_views", False):  # it pairs the views itself
                    loss = loss_fn(*views, *local, teacher=tuple(targets))
                else:
                    loss = teacher_view_loss(loss_fn, views, targets, local, getattr(loss_fn, "symmetric", True))
                loss_fn.observe_teacher(targets)
                return loss, logged

        def after_step(done: int) -> None:
            update_teacher(teacher, encoder, teacher_momentum_at(self.teacher_momentum, done - 1, trainer.total_steps))

        modules = {"encoder": model, "loss": loss_fn} | ({"teacher": teacher} if teacher is not None else {})
        trainer = Trainer(ctx, modules, self.train, steps_per_epoch=len(sampler), loss_modules=("loss",),
                          global_batch=gathered)
        exported = teacher if self.export_teacher else encoder
        last = trainer.fit(epoch_batches(sampler), step, after_step if teacher is not None else None,
                           stage_monitor(ctx, exported, self.train, images if self.precise_bn else None))
        if self.precise_bn:
            precise_batchnorm(exported, images, ctx.device)
        path = save_encoder(ctx, exported, backbone_spec, self.head)
        return {"encoder": path, "metrics": {"final_loss": last.get("loss"), "steps": trainer.step}}
