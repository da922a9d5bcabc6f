"""MAE pre-training: sine-cosine positions, patchify, masking, un-shuffling and loss against float64 loop references;
the decoder; the stage end to end, its seeded masks, resumption and settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hvkit.engine import load_checkpoint
from hvkit.engine.context import derive_seed
from hvkit.engine.trainer import read_log
from hvkit.pipeline import run
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.stages import mae_pretrain
from hvkit_plugins.stages.encoder import load_encoder
from hvkit_plugins.stages.mae_pretrain import (MAEDecoder, MAEPretrain, mae_loss, patchify, random_masking,
                                               sincos_position_embedding, unshuffle)

# --- float64 loop references, from the paper's definitions and the official code's pseudo-code ----------------


def ref_sincos(dim: int, grid_h: int, grid_w: int) -> list[list[float]]:
    quarter = dim // 4
    omegas = [1.0 / 10000 ** (k / quarter) for k in range(quarter)]
    rows = []
    for i in range(grid_h):
        for j in range(grid_w):
            rows.append([math.sin(j * w) for w in omegas] + [math.cos(j * w) for w in omegas]
                        + [math.sin(i * w) for w in omegas] + [math.cos(i * w) for w in omegas])
    return rows


def ref_patchify(images: torch.Tensor, p: int) -> list[list[list[float]]]:
    b, c, h, w = images.shape
    out = []
    for n in range(b):
        patches = []
        for r in range(h // p):
            for s in range(w // p):
                patches.append([float(images[n, ch, r * p + y, s * p + x])
                                for y in range(p) for x in range(p) for ch in range(c)])
        out.append(patches)
    return out


def ref_masking(noise: torch.Tensor, n_keep: int) -> tuple[list[list[int]], list[list[int]], list[list[float]]]:
    keep, restore, mask = [], [], []
    for row in noise.tolist():
        order = sorted(range(len(row)), key=lambda j: row[j])
        keep.append(order[:n_keep])
        restore.append([order.index(j) for j in range(len(row))])
        mask.append([0.0 if j in order[:n_keep] else 1.0 for j in range(len(row))])
    return keep, restore, mask


def ref_loss_and_grad(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      norm_pix: bool) -> tuple[float, list[list[list[float]]]]:
    b, length, size = pred.shape
    masked = sum(float(m) for row in mask for m in row)
    total, grad = 0.0, []
    for n in range(b):
        grad.append([])
        for i in range(length):
            t = [float(v) for v in target[n, i]]
            if norm_pix:
                mean = sum(t) / size
                var = sum((v - mean) ** 2 for v in t) / (size - 1)
                t = [(v - mean) / math.sqrt(var + 1e-6) for v in t]
            m = float(mask[n, i])
            diff = [float(pred[n, i, k]) - t[k] for k in range(size)]
            total += m * sum(d * d for d in diff) / size
            grad[-1].append([2 * m * d / (size * masked) for d in diff])
    return total / masked, grad


# --- the pieces --------------------------------------------------------------------------------------------------


def test_sincos_position_embedding_matches_the_loop_reference() -> None:
    for dim, grid_h, grid_w in [(4, 1, 2), (8, 3, 5), (128, 8, 8), (32, 4, 16)]:
        ours = sincos_position_embedding(dim, grid_h, grid_w)
        assert ours.dtype == torch.float32 and ours.shape == (grid_h * grid_w, dim)
        torch.testing.assert_close(ours.double(), torch.tensor(ref_sincos(dim, grid_h, grid_w), dtype=torch.float64),
                                   rtol=0, atol=1e-7)


def test_sincos_position_embedding_by_hand() -> None:
    # dim 4: one frequency, omega = 1; column j then row i: [sin j, cos j, sin i, cos i]
    s, c = math.sin(1), math.cos(1)
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0], [s, c, 0.0, 1.0], [0.0, 1.0, s, c], [s, c, s, c]])
    torch.testing.assert_close(sincos_position_embedding(4, 2, 2), expected)
    with pytest.raises(ValueError, match="sincos_position_embedding: dim=6 must be a multiple of 4"):
        sincos_position_embedding(6, 2, 2)


def test_patchify_matches_the_loop_reference_and_a_hand_case() -> None:
    images = torch.rand(2, 3, 8, 12, dtype=torch.float64)
    torch.testing.assert_close(patchify(images, 4), torch.tensor(ref_patchify(images, 4), dtype=torch.float64),
                               rtol=0, atol=0)
    image = torch.arange(8.0).reshape(1, 1, 2, 4)  # [[0 1 2 3], [4 5 6 7]], 2-pixel patches
    assert patchify(image, 2).tolist() == [[[0, 1, 4, 5], [2, 3, 6, 7]]]
    two = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])[None]  # channels interleave within a pixel
    assert patchify(two, 2).tolist() == [[[0, 1] * 4]]


def test_random_masking_matches_the_loop_reference_and_a_hand_case() -> None:
    keep, restore, mask = random_masking(torch.tensor([[0.3, 0.1, 0.2, 0.4]]), 2)
    assert (keep.tolist(), restore.tolist(), mask.tolist()) == ([[1, 2]], [[2, 0, 1, 3]], [[1.0, 0.0, 0.0, 1.0]])
    noise = torch.rand(5, 16, generator=torch.Generator().manual_seed(0))
    for n_keep in (1, 4, 15):
        keep, restore, mask = random_masking(noise, n_keep)
        assert (keep.tolist(), restore.tolist(), mask.tolist()) == ref_masking(noise, n_keep)
        assert mask.sum(1).tolist() == [16 - n_keep] * 5


def test_unshuffle_puts_the_visible_tokens_back_and_mask_tokens_elsewhere() -> None:
    noise = torch.rand(3, 10, generator=torch.Generator().manual_seed(1))
    keep, restore, _ = random_masking(noise, 4)
    visible = torch.randn(3, 4, 5, dtype=torch.float64)
    token = torch.randn(1, 1, 5, dtype=torch.float64)
    out = unshuffle(visible, token, restore)
    for n in range(3):
        for j in range(10):
            kept = keep[n].tolist()
            expected = visible[n, kept.index(j)] if j in kept else token[0, 0]
            assert torch.equal(out[n, j], expected), (n, j)


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mae_loss_value_and_gradient_match_the_loop_reference(norm_pix: bool, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(3, 6, 8, generator=g, dtype=torch.float64)
    target = torch.rand(3, 6, 8, generator=g, dtype=torch.float64)
    target[0, 1] = 1.0  # a blank (white) patch: normalised to zeros
    _, _, mask = random_masking(torch.rand(3, 6, generator=g, dtype=torch.float64), 2)
    expected, expected_grad = ref_loss_and_grad(pred, target, mask, norm_pix)
    leaf = pred.to(dtype).requires_grad_()
    value = mae_loss(leaf, target.to(dtype), mask.to(dtype), norm_pix)
    value.backward()
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(value.double(), torch.tensor(expected, dtype=torch.float64), **tol)
    torch.testing.assert_close(leaf.grad.double(), torch.tensor(expected_grad, dtype=torch.float64), **tol)


def test_mae_loss_by_hand() -> None:
    # one image of two 2x2 patches [0 1; 0 1] and [0 0; 0 0], the first masked, predicted as zeros:
    # normalised targets ±0.5 / sqrt(1/3 + 1e-6), so the loss is 0.25 / (1/3 + 1e-6) (≈ 3/4, (n - 1) / n)
    target = patchify(torch.tensor([[[[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]]], dtype=torch.float64), 2)
    pred, mask = torch.zeros(1, 2, 4, dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert mae_loss(pred, target, mask).item() == pytest.approx(0.25 / (1 / 3 + 1e-6), rel=1e-12)
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(0.5)  # mean of 0, 1, 0, 1
    assert mae_loss(pred, target, 1 - mask).item() == 0.0  # the blank patch: target zero
    assert mae_loss(target, target, mask, norm_pix=False).item() == 0.0


def test_mae_loss_gradcheck_and_full_precision_under_autocast() -> None:
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 4, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: mae_loss(p, target, mask), (pred,))
    p32, t32, m32 = pred.detach().float(), target.float(), mask.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = mae_loss(p32, t32, m32)
    assert inside.dtype == torch.float32 and torch.equal(inside, mae_loss(p32, t32, m32))


# --- the decoder -------------------------------------------------------------------------------------------------


def test_decoder_blocks_see_the_unshuffled_tokens_with_fixed_positions() -> None:
    torch.manual_seed(0)
    decoder = MAEDecoder(in_dim=6, patch_dim=16, dim=8, layers=2, heads=2).double()
    seen = []
    decoder.blocks.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    keep, restore, _ = random_masking(torch.rand(2, 6, generator=torch.Generator().manual_seed(4)), 2)
    tokens = torch.randn(2, 3, 6, dtype=torch.float64)
    out = decoder(tokens, restore, 2, 3)
    assert out.shape == (2, 6, 16)  # the class token dropped
    embedded = decoder.embed(tokens)
    position = torch.tensor(ref_sincos(8, 2, 3), dtype=torch.float64)
    for n in range(2):
        torch.testing.assert_close(seen[0][n, 0], embedded[n, 0])  # the class token: position zero
        for j in range(6):
            kept = keep[n].tolist()
            token = embedded[n, 1 + kept.index(j)] if j in kept else decoder.mask_token[0, 0]
            torch.testing.assert_close(seen[0][n, 1 + j], token + position[j])
    assert not any(p.shape[-2:] == (7, 8) for p in decoder.parameters())  # the positions are not learnt


def test_decoder_is_initialised_as_the_paper() -> None:
    torch.manual_seed(0)
    decoder = MAEDecoder(in_dim=192, patch_dim=64, dim=128, layers=2, heads=4)
    for module in decoder.modules():
        if isinstance(module, nn.Linear):
            bound = math.sqrt(6 / (module.in_features + module.out_features))
            assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.9 * bound
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    assert 0.015 < decoder.mask_token.std() < 0.025
    assert len(decoder.blocks) == 2 and decoder.blocks[0].num_heads == 4


# --- the stage ---------------------------------------------------------------------------------------------------

MAE = tiny_recipe("""
  pretrain:
    stage: mae_pretrain
    decoder_dim: 16
    decoder_layers: 1
    decoder_heads: 2
    batch_size: 8
    train: {epochs: 2, max_steps: 6, checkpoint_every: 2, log_every: 1}
""", name="mae", backbone="{name: vit, image_size: 32, patch_size: 8, hidden_dim: 32, layers: 2, heads: 2}")


def test_the_stage_trains_and_saves_the_vit_for_later_stages(tmp_path: Path) -> None:
    text = MAE + """
  tuned:
    stage: metric_train
    init_from: pretrain
    freeze_backbone: true
    label_fraction: 0.5
    batch_size: 8
    train: {epochs: 1, max_steps: 2}
"""
    run_dir = run_recipe_text(text, tmp_path, "run")
    encoder, state = load_encoder(run_dir / "stages" / "pretrain" / "encoder.pt", get_registry(), torch.device("cpu"))
    trained = load_checkpoint(run_dir / "stages" / "pretrain" / "last.pt")["modules"]["mae"]
    assert state["backbone_spec"]["name"] == "vit" and state["head_spec"] is None
    for key, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, trained[f"encoder.{key}"]), key
    assert any(key.startswith("decoder.") for key in trained) and "decoder.mask_token" in trained
    assert encoder(torch.rand(2, 1, 32, 32)).shape == (2, 32)
    tuned = load_checkpoint(run_dir / "stages" / "tuned" / "encoder.pt")  # a head trained on the frozen MAE ViT
    assert tuned["backbone_spec"] == state["backbone_spec"]
    assert all(torch.equal(v, tuned["backbone"][k]) for k, v in encoder.backbone.state_dict().items())


def test_mean_pooling_leaves_pre_training_alone_and_travels_with_the_encoder(tmp_path: Path) -> None:
    tuned = """
  tuned:
    stage: metric_train
    init_from: pretrain
    label_fraction: 0.5
    batch_size: 8
    train: {epochs: 1, max_steps: 1}
"""
    cls_dir = run_recipe_text(MAE, tmp_path, "cls")
    mean_dir = run_recipe_text(MAE.replace("heads: 2}", "heads: 2, pool: mean}") + tuned, tmp_path, "mean")
    cls, _ = load_encoder(cls_dir / "stages" / "pretrain" / "encoder.pt", get_registry(), torch.device("cpu"))
    mean, state = load_encoder(mean_dir / "stages" / "pretrain" / "encoder.pt", get_registry(), torch.device("cpu"))
    assert state["backbone_spec"]["pool"] == "mean" and mean.backbone.pool == "mean" and cls.backbone.pool == "cls"
    for key, value in cls.backbone.state_dict().items():  # the masked forward never pools: the same training
        assert torch.equal(value, mean.backbone.state_dict()[key]), key
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(mean(x), mean.backbone.net.encoder.ln(mean.backbone._blocks(x)[:, 1:].mean(1)))
    assert not torch.allclose(mean(x), cls(x))
    tuned_state = load_checkpoint(mean_dir / "stages" / "tuned" / "encoder.pt")
    assert tuned_state["backbone_spec"]["pool"] == "mean"


def test_a_tiny_run_lowers_the_reconstruction_loss(tmp_path: Path) -> None:
    text = MAE.replace("max_steps: 6, checkpoint_every: 2", "epochs: 8, max_steps: 40").replace("epochs: 2, ", "")
    run_dir = run_recipe_text(text, tmp_path, "run")
    losses = [row["loss"] for row in read_log(run_dir / "stages" / "pretrain" / "log.jsonl")]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5


def test_masks_come_from_each_steps_seeded_generator(tmp_path: Path, monkeypatch) -> None:
    noises: list[torch.Tensor] = []
    keeps: list[int] = []

    def spy(noise, n_keep):
        noises.append(noise.clone())
        keeps.append(n_keep)
        return random_masking(noise, n_keep)

    monkeypatch.setattr(mae_pretrain, "random_masking", spy)
    run_recipe_text(MAE, tmp_path, "run")
    assert keeps == [4] * 6  # 16 patches of 8 x 8, a quarter visible
    for k, noise in enumerate(noises):
        g = torch.Generator().manual_seed(derive_seed(0, "pretrain", "step", k))
        assert torch.equal(noise, torch.rand(8, 16, generator=g)), k
    assert not torch.equal(noises[0], noises[1])


def test_the_stage_resumes_to_the_same_result(tmp_path: Path, monkeypatch) -> None:
    straight = run_recipe_text(MAE, tmp_path, "straight")
    calls: list[int] = []

    def fails_once(noise, n_keep):
        calls.append(n_keep)
        if len(calls) == 4:  # in step 4, before its checkpoint: the last one is step 2's
            raise RuntimeError("injected failure")
        return random_masking(noise, n_keep)

    monkeypatch.setattr(mae_pretrain, "random_masking", fails_once)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_recipe_text(MAE, tmp_path, "broken")
    broken = tmp_path / "broken"
    assert load_checkpoint(broken / "stages" / "pretrain" / "last.pt")["step"] == 2
    lines: list[str] = []
    run(None, resume=broken, device="cpu", console=lines.append)
    assert "[pretrain] resumed at step 2" in lines
    a = load_checkpoint(straight / "stages" / "pretrain" / "last.pt")
    b = load_checkpoint(broken / "stages" / "pretrain" / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in a["modules"]["mae"]:
        assert torch.equal(a["modules"]["mae"][key], b["modules"]["mae"][key]), key
    log = [(row["step"], row["loss"]) for row in read_log(straight / "stages" / "pretrain" / "log.jsonl")]
    assert log == [(row["step"], row["loss"]) for row in read_log(broken / "stages" / "pretrain" / "log.jsonl")]


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.25, 1.5])
def test_mask_ratio_must_lie_strictly_between_zero_and_one(ratio: float) -> None:
    with pytest.raises(ValueError, match=f"mae_pretrain: mask_ratio={ratio} must lie strictly between 0 and 1; "
                                         "the paper uses 0.75"):
        MAEPretrain(mask_ratio=ratio)


@pytest.mark.parametrize("kwargs, message", [
    ({"decoder_layers": 0}, "decoder_layers=0 and decoder_heads=4 must be >= 1"),
    ({"decoder_dim": 130, "decoder_heads": 2}, "decoder_dim=130 must be a multiple of 4"),
    ({"decoder_dim": 128, "decoder_heads": 3}, "decoder_dim=128 must be a multiple of 4 .* and of decoder_heads=3"),
])
def test_decoder_settings_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"mae_pretrain: {message}"):
        MAEPretrain(**kwargs)


@pytest.mark.parametrize("change, message", [
    (("decoder_dim: 16", "backbone: small_cnn\n    decoder_dim: 16"),
     r"stage 'pretrain': backbone 'small_cnn' has no masked forward \(encode_tokens, patch_size\); "
     "use a ViT backbone such as vit"),
    (("image_size: 32}", "image_size: 36}"),
     "stage 'pretrain': image size 36 x 36 is not a multiple of the backbone's patch_size=8"),
    (("decoder_dim: 16", "mask_ratio: 0.97\n    decoder_dim: 16"),
     "stage 'pretrain': mask_ratio=0.97 of 16 patches leaves 0 visible; at least one must be visible and one masked"),
    (("patch_size: 8", "patch_size: 1"),
     "stage 'pretrain': norm_pix_loss needs patches of 2 or more values; patch_size=1 with 1 channel has 1"),
])
def test_a_backbone_without_masked_forward_or_unfit_sizes_are_refused(tmp_path: Path, change: tuple,
                                                                       message: str) -> None:
    with pytest.raises(Exception, match=message):
        run_recipe_text(MAE.replace(*change), tmp_path, "run")
