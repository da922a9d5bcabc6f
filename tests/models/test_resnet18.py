"""ResNet18 backbone: torchvision equivalence, channels, the small stem, zero-init residuals."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from hvkit.testing import check_backbone
from hvkit_plugins.backbones.resnet import ResNet18


@pytest.mark.parametrize("params, channels", [({}, (1, 3)), ({"small_stem": True}, (1,))])
def test_contract(params: dict, channels: tuple[int, ...]) -> None:
    check_backbone(ResNet18, params, in_channels=channels, image_size=16, batch_size=2)


def test_equals_torchvision_resnet18_without_fc() -> None:
    torch.manual_seed(0)
    ref = resnet18(weights=None).eval()
    ours = ResNet18(in_channels=3).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    ours.net.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    feats = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
        ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))), 1)
    torch.testing.assert_close(ours(x), feats)
    assert ours.embedding_dim == 512 == ours(x).shape[1]


def test_input_convolution_follows_in_channels() -> None:
    assert ResNet18(in_channels=1).net.conv1.weight.shape == (64, 1, 7, 7)
    assert ResNet18(in_channels=3).net.conv1.weight.shape == (64, 3, 7, 7)
    assert ResNet18(in_channels=2).net.conv1.weight.shape == (64, 2, 7, 7)


def test_small_stem_keeps_resolution() -> None:
    sizes = {}
    for small in (False, True):
        net = ResNet18(in_channels=1, small_stem=small).eval()
        captured = []
        net.net.layer4.register_forward_hook(lambda _m, _i, out: captured.append(out.shape))
        with torch.no_grad():
            assert net(torch.rand(1, 1, 64, 64)).shape == (1, 512)
        sizes[small] = tuple(captured[0][-2:])
    assert sizes == {False: (2, 2), True: (8, 8)}
    stem = ResNet18(in_channels=1, small_stem=True).net
    assert stem.conv1.kernel_size == (3, 3) and stem.conv1.stride == (1, 1)
    assert isinstance(stem.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("variant, stride, pooled, size", [
    ({"max_pool": False}, 2, False, 4), ({"stem_stride": 1}, 1, True, 4),
    ({"stem_stride": 1, "max_pool": False}, 1, False, 8)])
def test_denser_stem_variants_keep_the_parameters(variant, stride, pooled, size) -> None:
    standard, dense = ResNet18(in_channels=1), ResNet18(in_channels=1, **variant)
    assert {k: v.shape for k, v in standard.state_dict().items()} == \
        {k: v.shape for k, v in dense.state_dict().items()}
    dense.load_state_dict(standard.state_dict())
    assert dense.net.conv1.kernel_size == (7, 7) and dense.net.conv1.stride == (stride, stride)
    assert isinstance(dense.net.maxpool, torch.nn.Identity) is not pooled
    captured = []
    dense.net.layer4.register_forward_hook(lambda _m, _i, out: captured.append(out.shape))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert dense.eval()(x).shape == (1, 512)
        step = 3 - stride  # the standard stem's output is every other position of the dense one
        torch.testing.assert_close(dense.net.conv1(x)[..., ::step, ::step], standard.net.conv1(x))
    assert tuple(captured[0][-2:]) == (size, size)


def test_stem_stride_must_be_one_or_two() -> None:
    with pytest.raises(ValueError, match="stem_stride"):
        ResNet18(stem_stride=3)


def test_zero_init_residual_zeroes_the_last_bn_of_each_block() -> None:
    net = ResNet18(zero_init_residual=True).net
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    assert all(torch.count_nonzero(b.bn2.weight) > 0 for layer in (ResNet18().net.layer1,) for b in layer)


def test_invalid_channels() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        ResNet18(in_channels=0)
