"""ResNet-18/34/50 backbones: torchvision equivalence, channels, the denser stems, zero-init residuals."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18, resnet34, resnet50

from hvkit.testing import check_backbone
from hvkit_plugins.backbones.resnet import ResNet18, ResNet34, ResNet50

DEPTHS = [(ResNet18, resnet18, 512), (ResNet34, resnet34, 512), (ResNet50, resnet50, 2048)]
NETS = [cls for cls, _, _ in DEPTHS]


@pytest.mark.parametrize("cls, params, channels", [
    (ResNet18, {}, (1, 3)), (ResNet18, {"small_stem": True}, (1,)), (ResNet34, {}, (1,)), (ResNet50, {}, (1,))])
def test_contract(cls, params: dict, channels: tuple[int, ...]) -> None:
    check_backbone(cls, params, in_channels=channels, image_size=16, batch_size=2)


@pytest.mark.parametrize("cls, reference, dim", DEPTHS)
def test_equals_torchvision_without_fc(cls, reference, dim) -> None:
    torch.manual_seed(0)
    ref = reference(weights=None).eval()
    ours = cls(in_channels=3).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    ours.net.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    feats = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
        ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))), 1)
    torch.testing.assert_close(ours(x), feats)
    assert ours.embedding_dim == dim == ours(x).shape[1]
    assert [len(layer) for layer in (ours.net.layer1, ours.net.layer2, ours.net.layer3, ours.net.layer4)] == \
        [len(layer) for layer in (ref.layer1, ref.layer2, ref.layer3, ref.layer4)]


def test_input_convolution_follows_in_channels() -> None:
    assert ResNet18(in_channels=1).net.conv1.weight.shape == (64, 1, 7, 7)
    assert ResNet18(in_channels=3).net.conv1.weight.shape == (64, 3, 7, 7)
    assert ResNet34(in_channels=2).net.conv1.weight.shape == (64, 2, 7, 7)


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


@pytest.mark.parametrize("cls", NETS)
@pytest.mark.parametrize("variant, stride, pooled, size", [
    ({"max_pool": False}, 2, False, 4), ({"stem_stride": 1}, 1, True, 4),
    ({"stem_stride": 1, "max_pool": False}, 1, False, 8)])
def test_denser_stem_variants_keep_the_parameters(cls, variant, stride, pooled, size) -> None:
    standard, dense = cls(in_channels=1), cls(in_channels=1, **variant)
    assert {k: v.shape for k, v in standard.state_dict().items()} == \
        {k: v.shape for k, v in dense.state_dict().items()}
    dense.load_state_dict(standard.state_dict())
    assert dense.net.conv1.kernel_size == (7, 7) and dense.net.conv1.stride == (stride, stride)
    assert isinstance(dense.net.maxpool, torch.nn.Identity) is not pooled
    captured = []
    dense.net.layer4.register_forward_hook(lambda _m, _i, out: captured.append(out.shape))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert dense.eval()(x).shape == (1, dense.embedding_dim)
        step = 3 - stride  # the standard stem's output is every other position of the dense one
        torch.testing.assert_close(dense.net.conv1(x)[..., ::step, ::step], standard.net.conv1(x))
    assert tuple(captured[0][-2:]) == (size, size)


@pytest.mark.parametrize("cls", NETS)
def test_stem_stride_must_be_one_or_two(cls) -> None:
    with pytest.raises(ValueError, match=f"{cls.name}: stem_stride"):
        cls(stem_stride=3)


@pytest.mark.parametrize("cls", NETS)
def test_zero_init_residual_zeroes_the_last_bn_of_each_block(cls) -> None:
    def last_bns(net):
        blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
        return [getattr(b, "bn3", b.bn2).weight for b in blocks]

    assert all(torch.count_nonzero(w) == 0 for w in last_bns(cls(zero_init_residual=True).net))
    assert all(torch.count_nonzero(w) > 0 for w in last_bns(cls().net))


@pytest.mark.parametrize("cls", NETS)
def test_invalid_channels(cls) -> None:
    with pytest.raises(ValueError, match=f"{cls.name}: in_channels"):
        cls(in_channels=0)
