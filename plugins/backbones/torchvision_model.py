"""Any torchvision classification CNN by name (randomly initialised) as a feature extractor."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from hvkit.errors import RecipeError


@dataclass(frozen=True)
class _Family:
    example: str  # its smallest arch, named in errors
    trunk: tuple[str, ...]  # the modules torchvision's forward applies before the global pooling, in order
    init: str  # how the architecture initialises its convolutions (see _init_conv)
    kwargs: dict[str, Any]  # the builder's keyword arguments that shape the trunk, with their types
    relu: bool = False  # a ReLU between the trunk and the pooling (DenseNet's forward)


_DILATION = "list of 3 bools"
_FAMILIES: dict[str, _Family] = {  # torchvision's class names
    "ResNet": _Family("resnet18", ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
                      "fan_out", {"zero_init_residual": bool, "replace_stride_with_dilation": _DILATION}),
    "RegNet": _Family("regnet_y_400mf", ("stem", "trunk_output"), "fan_out", {}),
    "EfficientNet": _Family("efficientnet_b0", ("features",), "fan_out", {"stochastic_depth_prob": float}),
    "MobileNetV2": _Family("mobilenet_v2", ("features",), "fan_out", {"width_mult": float, "round_nearest": int}),
    "MobileNetV3": _Family("mobilenet_v3_small", ("features",), "fan_out",
                           {"width_mult": float, "reduced_tail": bool, "dilated": bool}),
    "MNASNet": _Family("mnasnet0_5", ("layers",), "fan_out", {}),
    "ConvNeXt": _Family("convnext_tiny", ("features",), "trunc_normal",
                        {"stochastic_depth_prob": float, "layer_scale": float}),
    "DenseNet": _Family("densenet121", ("features",), "fan_in", {"drop_rate": float, "memory_efficient": bool},
                        relu=True),
    "ShuffleNetV2": _Family("shufflenet_v2_x0_5", ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"),
                            "default", {}),
    "SqueezeNet": _Family("squeezenet1_1", ("features",), "fan_in_uniform", {}),
}
_REFUSED = {
    "AlexNet": "its classifier is an MLP on the flattened 6 x 6 map, not a global pooling",
    "VGG": "its classifier is an MLP on the flattened 7 x 7 map, not a global pooling",
    "GoogLeNet": "auxiliary classifiers and an input transform",
    "Inception3": "auxiliary classifiers, an input transform and inputs of at least 75 px",
    "VisionTransformer": "a transformer (use the vit backbone)",
    "SwinTransformer": "a transformer (use the vit backbone)",
    "MaxVit": "a transformer (use the vit backbone)",
}


def _family_name(arch: str) -> str:
    return getattr(inspect.signature(models.get_model_builder(arch)).return_annotation, "__name__", "")


def supported_archs() -> list[str]:
    """The ``arch`` names this backbone builds: torchvision's classification models of the supported families."""
    return [n for n in models.list_models(module=models) if _family_name(n) in _FAMILIES]


def _fits(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, list) and len(value) == 3 and all(isinstance(v, bool) for v in value)


def _init_conv(conv: nn.Conv2d, scheme: str) -> None:
    """Initialise ``conv`` as the architecture initialises its convolutions."""
    if scheme == "fan_out":  # ResNet, RegNet, EfficientNet, MobileNets, MNASNet: N(0, 2 / (k^2 C_out))
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    elif scheme == "fan_in":  # DenseNet: N(0, 2 / (k^2 C_in))
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    elif scheme == "fan_in_uniform":  # SqueezeNet
        nn.init.kaiming_uniform_(conv.weight, mode="fan_in", nonlinearity="relu")
    elif scheme == "trunc_normal":  # ConvNeXt
        nn.init.trunc_normal_(conv.weight, std=0.02)
    else:  # ShuffleNetV2 keeps nn.Conv2d's own initialisation
        return
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class TorchvisionModel(nn.Module):
    """A torchvision CNN by name (``arch``) without its classifier: (B, in_channels, H, W) -> (B, embedding_dim).

    Built with ``weights=None`` (random initialisation, nothing is downloaded). The features
    are the global average of the convolutional trunk's last map — what the architecture's
    own classifier reads, minus the classifier: MobileNetV3's hidden 1024/1280-d layer and
    SqueezeNet's final 1x1 convolution go with it, ConvNeXt keeps the LayerNorm its classifier
    applies to the pooled features, DenseNet the ReLU its forward applies before pooling.
    ``embedding_dim`` (= ``map_channels``) is the width the classifier took. The first
    convolution (the first ``nn.Conv2d`` in module order) takes ``in_channels`` (context) and
    is re-initialised as the architecture initialises its convolutions. ``kwargs`` go to
    torchvision's builder; per family only those that shape the trunk are accepted:
    ResNet ``zero_init_residual``, ``replace_stride_with_dilation``; EfficientNet
    ``stochastic_depth_prob``; MobileNetV2 ``width_mult``, ``round_nearest``; MobileNetV3
    ``width_mult``, ``reduced_tail``, ``dilated``; ConvNeXt ``stochastic_depth_prob``,
    ``layer_scale``; DenseNet ``drop_rate``, ``memory_efficient``.

    Families (``supported_archs()`` lists the names): ResNet/ResNeXt/Wide ResNet (He et al. 2016;
    Xie et al. 2017; Zagoruyko & Komodakis 2016), RegNet (Radosavovic et al. 2020),
    EfficientNet and EfficientNetV2 (Tan & Le 2019, 2021), MobileNetV2/V3 (Sandler et al. 2018;
    Howard et al. 2019), MNASNet (Tan et al. 2019), ConvNeXt (Liu et al. 2022), DenseNet
    (Huang et al. 2017), ShuffleNetV2 (Ma et al. 2018), SqueezeNet (Iandola et al. 2016).
    AlexNet and VGG (an MLP on a flattened map), GoogLeNet and Inception-v3 (auxiliary heads)
    and the transformers are refused. Sides of 32 px or more work for every family (ConvNeXt
    and DenseNet need 32, SqueezeNet 17 or 21, the others run on less); all downsample 32x
    (2 x 2 maps at 64 px) but SqueezeNet, 16x or so (3 x 3 at 64 px). ``feature_map`` is the trunk's
    last map and ``pool`` its global average (then ConvNeXt's LayerNorm): ``pool(feature_map(x))``
    is ``forward(x)``. ``net`` is torchvision's model, so its parameter names are torchvision's.
    """

    def __init__(self, arch: str, in_channels: int = 1, kwargs: dict[str, Any] | None = None):
        super().__init__()
        where = f"torchvision({arch})"
        if in_channels < 1:
            raise ValueError(f"{where}: in_channels={in_channels} must be >= 1")
        family = _resolve(arch)
        spec = _FAMILIES[family]
        kwargs = dict(kwargs or {})
        problem = _kwargs_problem(family, kwargs)
        if problem:
            raise ValueError(f"{where}: kwargs.{problem[0]}: {problem[1]}")
        try:
            net = models.get_model_builder(arch)(weights=None, **kwargs)
        except (TypeError, ValueError, NotImplementedError) as exc:
            message = " ".join(str(exc).split())
            raise ValueError(f"{where}: torchvision rejected kwargs {kwargs}: {message}") from None
        _replace_first_conv(net, in_channels, spec.init, where)
        head_name = next((n for n in ("fc", "classifier", "heads") if hasattr(net, n)), None)
        if head_name is None:
            raise ValueError(f"{where}: the model has no fc, classifier or heads to remove")
        kept, self.embedding_dim = _strip_classifier(getattr(net, head_name), where)
        setattr(net, head_name, kept)
        self.map_channels = self.embedding_dim
        self.net, self.arch, self._head, self._trunk, self._relu = net, arch, head_name, spec.trunk, spec.relu

    @staticmethod
    def check_recipe(spec: dict[str, Any], earlier: dict[str, Any]) -> None:
        """``arch`` and ``kwargs`` checked when the recipe is validated, before any work (API 1.8)."""
        try:
            family = _resolve(spec["arch"])
        except ValueError as exc:
            raise RecipeError(str(exc), path="arch") from None
        problem = _kwargs_problem(family, spec.get("kwargs") or {})
        if problem:
            raise RecipeError(f"torchvision({spec['arch']}): {problem[1]}", path=f"kwargs.{problem[0]}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(images))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's last map (B, map_channels, h, w), before the global pooling."""
        x = images
        for name in self._trunk:
            x = getattr(self.net, name)(x)
        return F.relu(x) if self._relu else x

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Features (B, embedding_dim) of a ``feature_map``: its global average (then ConvNeXt's LayerNorm)."""
        return torch.flatten(getattr(self.net, self._head)(F.adaptive_avg_pool2d(maps, 1)), 1)


def _kwargs_problem(family: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(key, what is wrong) for the first builder argument ``family`` does not take as given, else None."""
    accepted = _FAMILIES[family].kwargs
    for key, value in kwargs.items():
        if key not in accepted:
            return key, f"unknown kwarg for {family}; valid: {', '.join(sorted(accepted)) or 'none'}"
        if not _fits(value, accepted[key]):
            return key, f"{value!r} must be a {getattr(accepted[key], '__name__', accepted[key])}"
    return None


def _resolve(arch: str) -> str:
    """The torchvision family of ``arch``, or a one-line ValueError naming the nearest supported names."""
    names, supported = models.list_models(module=models), supported_archs()
    if arch in supported:
        return _family_name(arch)
    families = "supported families, smallest each: " + ", ".join(f.example for f in _FAMILIES.values())
    if arch in names:
        family = _family_name(arch)
        why = _REFUSED.get(family, "not a family this backbone knows")
        raise ValueError(f"torchvision: arch {arch!r} ({family}) is not supported: {why}; {families}")
    near = difflib.get_close_matches(arch, supported, n=3, cutoff=0.6)
    hint = f"nearest: {', '.join(near)}" if near else families
    raise ValueError(f"torchvision: unknown arch {arch!r}; {hint} ({len(supported)} in all: "
                     "hvkit_plugins.backbones.torchvision_model.supported_archs())")


def _replace_first_conv(net: nn.Module, in_channels: int, init: str, where: str) -> None:
    """Give the first ``nn.Conv2d`` in module order ``in_channels`` inputs, in place, in its parent."""
    path, conv = next(((p, m) for p, m in net.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if conv is None:
        raise ValueError(f"{where}: the model has no nn.Conv2d to take in_channels")
    if conv.in_channels == in_channels:
        return
    if in_channels % conv.groups:
        raise ValueError(f"{where}: in_channels={in_channels} is not a multiple of the first "
                         f"convolution's {conv.groups} groups ({path})")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode)
    _init_conv(new, init)
    parent, _, name = path.rpartition(".")
    setattr(net.get_submodule(parent), name, new)


def _strip_classifier(head: nn.Module, where: str) -> tuple[nn.Module, int]:
    """(what of the classifier to keep, its input width): the norms/flatten before its first dropout or layer."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    first = next((i for i, m in enumerate(layers) if isinstance(m, (nn.Dropout, nn.Linear, nn.Conv2d))), len(layers))
    width = next((m.in_features if isinstance(m, nn.Linear) else m.in_channels for m in layers[first:]
                  if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if width is None:
        raise ValueError(f"{where}: no nn.Linear or nn.Conv2d in the classifier to read the feature width from")
    return (nn.Sequential(*layers[:first]) if first else nn.Identity()), int(width)
