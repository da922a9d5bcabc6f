"""The torchvision backbone: one arch per family against torchvision's own forward, first conv, init, errors, recipe."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models

from hvkit.engine import load_checkpoint
from hvkit.engine.context import build
from hvkit.errors import RecipeError
from hvkit.recipe import load_recipe, validate
from hvkit.registry import get_registry
from hvkit.testing import check_backbone, run_recipe_text, tiny_recipe
from hvkit_plugins.backbones.resnet import ResNet18
from hvkit_plugins.backbones.torchvision_model import TorchvisionModel, supported_archs

# the smallest arch of each family: its feature width and the path of its first convolution
FAMILIES = {
    "resnet18": (512, "conv1"),
    "regnet_y_400mf": (440, "stem.0"),
    "efficientnet_b0": (1280, "features.0.0"),
    "mobilenet_v2": (1280, "features.0.0"),
    "mobilenet_v3_small": (576, "features.0.0"),
    "mnasnet0_5": (1280, "layers.0"),
    "convnext_tiny": (768, "features.0.0"),
    "densenet121": (1024, "features.conv0"),
    "shufflenet_v2_x0_5": (1024, "conv1.0"),
    "squeezenet1_1": (512, "features.0"),
}


def _model(arch: str, in_channels: int = 1, seed: int = 0, **kwargs) -> TorchvisionModel:
    torch.manual_seed(seed)
    return TorchvisionModel(arch, in_channels=in_channels, kwargs=kwargs or None)


def _images(channels: int, size: int = 64, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _torchvision_features(arch: str, model: TorchvisionModel, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own model, given ``model``'s weights, run up to its pooled features (eval mode)."""
    ref = models.get_model(arch, weights=None)
    path = FAMILIES[arch][1]
    theirs, ours = ref.get_submodule(path), model.net.get_submodule(path)
    for attribute in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert (ours.bias is None) == (theirs.bias is None)
    parent, _, name = path.rpartition(".")
    setattr(ref.get_submodule(parent), name, copy.deepcopy(ours))  # its weights are loaded below
    missing, unexpected = ref.load_state_dict(model.net.state_dict(), strict=False)
    assert not unexpected and missing and all(k.split(".")[0] in ("fc", "classifier") for k in missing)
    ref.eval()
    with torch.no_grad():
        if arch == "mobilenet_v3_small":  # its classifier starts with a hidden Linear: not part of the features
            return ref.avgpool(ref.features(x)).flatten(1)
        if arch == "squeezenet1_1":  # its classifier is a 1x1 convolution, then the global average
            return ref.features(x).mean((2, 3))
        if isinstance(getattr(ref, "fc", None), nn.Linear):
            ref.fc = nn.Identity()
        elif isinstance(ref.classifier, nn.Linear):
            ref.classifier = nn.Identity()
        else:  # (Dropout, Linear) or ConvNeXt's (LayerNorm2d, Flatten, Linear): only the Linear goes
            ref.classifier[-1] = nn.Identity()
        return ref(x)


def test_supported_archs_cover_the_families_and_leave_the_rest_out():
    names = supported_archs()
    assert set(FAMILIES) <= set(names)
    for arch in ("resnext50_32x4d", "wide_resnet50_2", "efficientnet_v2_s", "regnet_x_400mf", "densenet201",
                 "shufflenet_v2_x1_0", "squeezenet1_0", "convnext_large", "mnasnet1_3", "mobilenet_v3_large"):
        assert arch in names
    assert not {"vgg16", "alexnet", "googlenet", "inception_v3", "vit_b_16", "swin_t", "maxvit_t"} & set(names)


@pytest.mark.parametrize("arch", FAMILIES)
def test_features_are_torchvisions_pooled_features(arch):
    """Real values: the same weights in torchvision's model give the same features, by torchvision's forward."""
    model = _model(arch).eval()
    x = _images(1)
    with torch.no_grad():
        ours = model(x)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, _torchvision_features(arch, model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("arch", FAMILIES)
def test_shapes_first_conv_and_feature_map(arch, in_channels):
    dim, path = FAMILIES[arch]
    model = _model(arch, in_channels).eval()
    assert type(model.embedding_dim) is int and model.embedding_dim == model.map_channels == dim
    first = model.net.get_submodule(path)
    assert isinstance(first, nn.Conv2d) and first.in_channels == in_channels
    for size in (64, 32):
        x = _images(in_channels, size)
        with torch.no_grad():
            out, maps = model(x), model.feature_map(x)
        side = 1 if size == 32 else (3 if arch == "squeezenet1_1" else 2)
        assert out.shape == (2, dim) and maps.shape == (2, dim, side, side)
        torch.testing.assert_close(model.pool(maps), out)


@pytest.mark.parametrize("arch", ["convnext_tiny", "densenet121", "squeezenet1_0", "shufflenet_v2_x0_5"])
def test_non_square_images_down_to_the_minimum_side(arch):
    model = _model(arch).eval()
    with torch.no_grad():
        wide = model(torch.rand(2, 1, 32, 128))
        smallest = model(torch.rand(2, 1, 21 if arch == "squeezenet1_0" else 32, 32))
    assert wide.shape == smallest.shape == (2, model.embedding_dim)


def test_the_classifier_is_gone_but_convnexts_norm_stays():
    assert isinstance(_model("resnet18").net.fc, nn.Identity)
    assert isinstance(_model("mobilenet_v3_small").net.classifier, nn.Identity)
    head = _model("convnext_tiny").net.classifier
    assert [type(m).__name__ for m in head] == ["LayerNorm2d", "Flatten"]


def test_equals_hvkits_resnet18_given_the_same_weights():
    ours = _model("resnet18", seed=0).eval()
    theirs = ResNet18(in_channels=1).eval()
    theirs.load_state_dict(ours.state_dict())  # strict: the same torchvision parameter names
    x = _images(1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
        torch.testing.assert_close(ours.feature_map(x), theirs.feature_map(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch,std", [
    ("resnet18", math.sqrt(2 / (64 * 49))),  # kaiming normal, fan_out
    ("mobilenet_v3_small", math.sqrt(2 / (16 * 9))),  # kaiming normal, fan_out
    ("densenet121", math.sqrt(2 / 49)),  # kaiming normal, fan_in (1 channel x 7 x 7)
    ("convnext_tiny", 0.02),  # truncated normal
    ("squeezenet1_1", math.sqrt(6 / 9) / math.sqrt(3)),  # kaiming uniform, fan_in: U(-sqrt(6/9), sqrt(6/9))
    ("shufflenet_v2_x0_5", 1 / 3 / math.sqrt(3)),  # nn.Conv2d's own: U(-1/sqrt(9), 1/sqrt(9))
])
def test_the_new_first_conv_is_initialised_as_the_architecture_does(arch, std):
    conv = _model(arch, seed=3).net.get_submodule(FAMILIES[arch][1])
    assert conv.weight.std().item() == pytest.approx(std, rel=0.25)
    assert conv.weight.mean().abs().item() < std / 2
    if conv.bias is not None and arch != "shufflenet_v2_x0_5":
        assert torch.count_nonzero(conv.bias) == 0


def test_three_channels_keep_torchvisions_own_first_conv():
    torch.manual_seed(5)
    ref = models.get_model("efficientnet_b0", weights=None)
    model = _model("efficientnet_b0", in_channels=3, seed=5)
    torch.testing.assert_close(model.net.features[0][0].weight, ref.features[0][0].weight, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "convnext_tiny", "densenet121", "squeezenet1_1"])
def test_gradients_reach_the_images_and_every_parameter(arch):
    model = _model(arch).train()
    x = _images(1, size=32).requires_grad_()
    model(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused  # nothing left over from the classifier (DDP would refuse unused parameters)


def test_kwargs_reach_the_builder():
    slim = _model("mobilenet_v3_small", width_mult=0.5)
    assert slim.embedding_dim == 288 and slim(_images(1)).shape == (2, 288)
    dilated = _model("resnet50", replace_stride_with_dilation=[False, True, True]).eval()
    with torch.no_grad():
        assert dilated.feature_map(_images(1)).shape == (2, 2048, 8, 8)
    assert _model("densenet121", drop_rate=0.1).net.features.denseblock1.denselayer1.drop_rate == 0.1


@pytest.mark.parametrize("arch,kwargs,match", [
    ("efficientnet_b9", None, r"unknown arch 'efficientnet_b9'; nearest: efficientnet_b\d"),
    ("resnet", None, r"unknown arch 'resnet'; nearest: resnet"),
    ("vgg16", None, r"arch 'vgg16' \(VGG\) is not supported: .*MLP.*; supported families.*resnet18"),
    ("vit_b_16", None, r"\(VisionTransformer\) is not supported: a transformer \(use the vit backbone\)"),
    ("mobilenet_v3_small", {"widht_mult": 0.5}, r"kwargs.widht_mult: unknown kwarg for MobileNetV3; valid: "
                                               r"dilated, reduced_tail, width_mult"),
    ("regnet_y_400mf", {"weights": "IMAGENET1K_V1"}, r"kwargs.weights: unknown kwarg for RegNet; valid: none"),
    ("mobilenet_v2", {"width_mult": "half"}, r"kwargs.width_mult: 'half' must be a float"),
    ("densenet121", {"memory_efficient": 1}, r"kwargs.memory_efficient: 1 must be a bool"),
    ("resnet50", {"replace_stride_with_dilation": [True]}, r"must be a list of 3 bools"),
    ("resnet18", {"replace_stride_with_dilation": [False, False, True]},
     r"torchvision rejected kwargs .*Dilation > 1 not supported in BasicBlock"),
])
def test_errors_are_one_line_value_errors(arch, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        TorchvisionModel(arch, kwargs=kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("backbone,where,match", [
    ("{name: torchvision, arch: densenet12}", "stages.train.backbone.arch",
     r"unknown arch 'densenet12'; nearest: densenet1\d\d"),
    ("{name: torchvision, arch: vgg11}", "stages.train.backbone.arch", r"\(VGG\) is not supported"),
    ("{name: torchvision, arch: mobilenet_v2, kwargs: {width_mult: half}}", "stages.train.backbone.kwargs.width_mult",
     r"torchvision\(mobilenet_v2\): 'half' must be a float"),
])
def test_a_recipe_names_a_bad_arch_or_kwarg_when_validated(tmp_path: Path, backbone, where, match):
    text = tiny_recipe("""
      train:
        stage: metric_train
        backbone: BACKBONE
    """.replace("BACKBONE", backbone))
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError, match=match) as info:
        validate(load_recipe(path), get_registry(), str(path))
    assert info.value.path == where and "\n" not in str(info.value)


def test_in_channels_must_be_positive():
    with pytest.raises(ValueError, match=r"torchvision\(resnet18\): in_channels=0 must be >= 1"):
        TorchvisionModel("resnet18", in_channels=0)


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "convnext_tiny", "squeezenet1_1"])
def test_conforms(arch):
    check_backbone(TorchvisionModel, {"arch": arch}, image_size=32, batch_size=2)


def test_the_registry_builds_it_with_the_context_channels():
    model = build(get_registry(), "backbone", {"name": "torchvision", "arch": "shufflenet_v2_x0_5",
                                               "kwargs": {}}, in_channels=1)
    assert isinstance(model, TorchvisionModel) and model.net.conv1[0].in_channels == 1


def test_a_recipe_trains_it(tmp_path: Path):
    text = tiny_recipe("""
      train:
        stage: metric_train
        label_fraction: 1.0
        batch_size: 8
        train: {epochs: 1, max_steps: 2, log_every: 1}
    """, name="torchvision", backbone="{name: torchvision, arch: mobilenet_v3_small, kwargs: {width_mult: 0.5}}")
    run_dir = run_recipe_text(text, tmp_path)
    rows = [json.loads(line) for line in (run_dir / "stages" / "train" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(row["loss"]) for row in rows)
    weights = load_checkpoint(run_dir / "stages" / "train" / "encoder.pt")["backbone"]
    assert weights["net.features.0.0.weight"].shape == (8, 1, 3, 3)  # torchvision's names, one input channel
