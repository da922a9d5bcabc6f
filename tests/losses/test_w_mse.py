"""W-MSE: value and gradient against a float64 loop re-implementation of the official code (explicit covariance,
Cholesky and triangular solve per sub-batch), a hand-computed case, identity covariance, the invariances of
whitening, the reproducible partition and the stage's resume, multi-view pairs, conformance, errors."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import pytest
import torch

from hvkit.engine import load_checkpoint
from hvkit.engine.trainer import read_log
from hvkit.pipeline import run
from hvkit.testing import check_loss, run_recipe_text, tiny_recipe
from hvkit_plugins.losses.w_mse import WMSELoss, whiten


def _views(n: int, d: int, count: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    """``count`` correlated, uncentred (n, d) views of one batch, requiring gradients."""
    g = torch.Generator().manual_seed(seed * 1000 + n * 10 + d)
    base = 1.5 + torch.randn(n, d, generator=g, dtype=dtype) @ torch.randn(d, d, generator=g, dtype=dtype)
    return [(base + 0.7 * torch.randn(n, d, generator=g, dtype=dtype)).requires_grad_() for _ in range(count)]


def _whiten_loops(rows: list[torch.Tensor], eps: float) -> list[torch.Tensor]:
    """Official Whitening2d on a list of (D,) rows, entry by entry: mean, unbiased covariance, (1 - eps) S + eps I,
    Cholesky-Banachiewicz, then forward substitution L y = x - mu for each row (y = L^{-1} (x - mu))."""
    n, d = len(rows), rows[0].shape[0]
    mu = [sum(r[k] for r in rows) / n for k in range(d)]
    c = [[r[k] - mu[k] for k in range(d)] for r in rows]
    s = [[(1 - eps) * sum(x[i] * x[j] for x in c) / (n - 1) + (eps if i == j else 0.0) for j in range(d)]
         for i in range(d)]
    lower = [[None] * d for _ in range(d)]
    for i in range(d):
        for j in range(i + 1):
            acc = s[i][j] - sum(lower[i][k] * lower[j][k] for k in range(j))
            lower[i][j] = torch.sqrt(acc) if i == j else acc / lower[j][j]
    out = []
    for x in c:
        y = []
        for i in range(d):
            y.append((x[i] - sum(lower[i][k] * y[k] for k in range(i))) / lower[i][i])
        out.append(torch.stack(y))
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    na, nb = torch.sqrt((a * a).sum()), torch.sqrt((b * b).sum())
    return (a * b).sum() / (torch.clamp(na, min=1e-12) * torch.clamp(nb, min=1e-12))


def _wmse_loops(views: list[torch.Tensor], partitions: list[list[list[int]]], eps: float = 0.0,
                joint: bool = False) -> torch.Tensor:
    """The official forward in float64 loops: per partition, each sub-batch of each view whitened on its own (or all
    views' rows together, ``joint``), then 2 - 2 cos over every image and pair of views, averaged."""
    count, n = len(views), views[0].shape[0]
    total = 0.0
    for partition in partitions:
        white: list[dict[int, torch.Tensor]] = [{} for _ in range(count)]
        for block in partition:
            if joint:
                out = _whiten_loops([views[v][b].double() for v in range(count) for b in block], eps)
                for k, (v, b) in enumerate((v, b) for v in range(count) for b in block):
                    white[v][b] = out[k]
            else:
                for v in range(count):
                    for b, w in zip(block, _whiten_loops([views[v][b].double() for b in block], eps)):
                        white[v][b] = w
        for i, j in combinations(range(count), 2):
            total = total + sum(2 - 2 * _cos(white[i][b], white[j][b]) for b in range(n)) / n
    return total / (len(partitions) * count * (count - 1) // 2)


def _partitions(loss: WMSELoss, n: int, size: int, calls: int = 1) -> list[list[list[int]]]:
    """The partitions the module draws for its next ``calls`` * w_iter sub-batch splits: randperm(seed + k)."""
    start = int(loss.draws)
    out = []
    for k in range(start, start + calls * loss.w_iter):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(loss.seed) + k)).tolist()
        out.append([order[i:i + size] for i in range(0, n, size)])
    return out


@pytest.mark.parametrize("n, d, w_size, w_iter, eps, views", [
    (12, 3, None, 1, 0.0, 2), (12, 3, 6, 1, 0.0, 2), (16, 4, 8, 2, 0.0, 2), (12, 3, 4, 1, 0.0, 3),
    (8, 5, 4, 1, 0.1, 2), (10, 2, 5, 3, 0.0, 4)])
def test_value_and_gradient_against_the_official_code_in_loops(n, d, w_size, w_iter, eps, views):
    loss = WMSELoss(d, w_size=w_size, w_iter=w_iter, eps=eps)
    zs = _views(n, d, views)
    partitions = _partitions(loss, n, w_size or n) if w_size else [[list(range(n))]] * w_iter
    value = loss(*zs)
    expected = _wmse_loops(zs, partitions, eps)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(torch.autograd.grad(value, zs), torch.autograd.grad(expected, zs)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("w_size", [None, 6])
def test_joint_whitening_against_the_loops(w_size):
    loss = WMSELoss(3, w_size=w_size, joint_whitening=True)
    zs = _views(12, 3)
    partitions = _partitions(loss, 12, w_size) if w_size else [[list(range(12))]]
    value = loss(*zs)
    expected = _wmse_loops(zs, partitions, joint=True)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(torch.autograd.grad(value, zs), torch.autograd.grad(expected, zs)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_float32_close_to_the_float64_loops():
    loss = WMSELoss(8, w_size=32)
    zs = _views(64, 8)
    partitions = _partitions(loss, 64, 32)
    z32 = [z.detach().float().requires_grad_() for z in zs]
    value = loss(*z32)
    assert value.dtype == torch.float32
    expected = _wmse_loops(zs, partitions)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in zip(torch.autograd.grad(value, z32), torch.autograd.grad(expected, zs)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_a_hand_computed_case():
    # X = (2, 1), (-2, -1), (0, 1), (0, -1): mean 0, Sigma = [[8, 4], [4, 4]] / 3, L = [[sqrt(8/3), 0],
    # [sqrt(2/3), sqrt(2/3)]], so L^{-1} x = sqrt(3/2) (1, 0), (-1, 0), (0, 1), (0, -1). The second view holds the same
    # rows in the order 1, 3, 2, 4 (same mean and Sigma): its whitened rows (1, 0), (0, 1), (-1, 0), (0, -1) have
    # cosines 1, 0, 0, 1 with the first view's, so the loss is 2 - 2 * 2/4 = 1 (unwhitened: 2 - (1 - 1/sqrt 5) = 1.447).
    x = torch.tensor([[2.0, 1.0], [-2.0, -1.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    r = math.sqrt(1.5)
    torch.testing.assert_close(whiten(x), torch.tensor([[r, 0], [-r, 0], [0, r], [0, -r]], dtype=torch.float64))
    assert WMSELoss(2)(x, x[[0, 2, 1, 3]]).item() == pytest.approx(1.0, rel=1e-12)
    assert WMSELoss(2)(x, x.clone()).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_whitened_blocks_have_identity_covariance_and_zero_mean(dtype, tol):
    x = torch.stack(_views(40, 6, count=3, dtype=dtype)).detach()  # three independent (40, 6) blocks
    white = whiten(x)
    for block in white:
        torch.testing.assert_close(torch.cov(block.T), torch.eye(6, dtype=dtype), rtol=0, atol=tol)
        torch.testing.assert_close(block.mean(0), torch.zeros(6, dtype=dtype), rtol=0, atol=tol)
    shrunk = whiten(x[0], eps=0.5)  # L L^T = S / 2 + I / 2, so cov(white) = L^{-1} S L^{-T} = 2 (I - L^{-1} L^{-T} / 2)
    factor = torch.linalg.cholesky(0.5 * torch.cov(x[0].T) + 0.5 * torch.eye(6, dtype=dtype))
    inverse = torch.linalg.inv(factor)
    torch.testing.assert_close(torch.cov(shrunk.T), 2 * torch.eye(6, dtype=dtype) - inverse @ inverse.T,
                               rtol=0, atol=tol)


def test_whitening_an_invertible_map_of_the_rows_only_rotates_the_whitened_rows():
    # whiten(X A) = whiten(X) Q with Q orthogonal, for any invertible A: the rows' Gram matrix is unchanged, and for
    # an upper-triangular A with a positive diagonal (Cholesky's own factor) Q = I.
    g = torch.Generator().manual_seed(3)
    x = _views(30, 5)[0].detach()
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    white, mapped = whiten(x), whiten(x @ a + 4.0)
    torch.testing.assert_close(mapped @ mapped.T, white @ white.T)
    assert not torch.allclose(mapped, white, atol=1e-3)
    upper = torch.triu(a, diagonal=1) + torch.diag(0.5 + torch.rand(5, generator=g, dtype=torch.float64))
    torch.testing.assert_close(whiten(x @ upper - 2.0), white)


def test_the_loss_is_invariant_to_the_maps_whitening_undoes():
    g = torch.Generator().manual_seed(4)
    zs = [z.detach() for z in _views(24, 4)]
    value = WMSELoss(4)(*zs)
    # separate whitening (the official code): an upper-triangular map and a shift of its own for each view
    maps = [torch.triu(torch.randn(4, 4, generator=g, dtype=torch.float64), 1)
            + torch.diag(0.3 + torch.rand(4, generator=g, dtype=torch.float64)) for _ in zs]
    shifts = [torch.randn(4, generator=g, dtype=torch.float64) for _ in zs]
    torch.testing.assert_close(WMSELoss(4)(*[z @ m + s for z, m, s in zip(zs, maps, shifts)]), value)
    # but not any invertible map: each view's whitened rows turn by a rotation of their own
    full = torch.randn(4, 4, generator=g, dtype=torch.float64)
    assert abs(WMSELoss(4)(*[z @ full for z in zs]).item() - value.item()) > 1e-3
    # joint whitening (one mean and one matrix for every view's rows): any invertible map, one shift
    joint = WMSELoss(4, joint_whitening=True)
    torch.testing.assert_close(joint(*[z @ full + shifts[0] for z in zs]), joint(*zs))


def test_the_loss_is_unchanged_by_the_order_of_the_batch():
    zs = [z.detach() for z in _views(16, 3)]
    order = torch.randperm(16, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(WMSELoss(3)(*[z[order] for z in zs]), WMSELoss(3)(*zs))


def test_gradcheck():
    torch.manual_seed(0)
    zs = _views(8, 3, count=3)
    loss = WMSELoss(3, w_size=4, eps=0.05)
    state = {k: v.clone() for k, v in loss.state_dict().items()}

    def fresh(*views: torch.Tensor) -> torch.Tensor:  # the same partition at every evaluation
        loss.load_state_dict(state)
        return loss(*views)

    assert torch.autograd.gradcheck(fresh, tuple(zs))


def test_the_partition_of_call_k_is_randperm_seeded_seed_plus_k_and_the_state_is_buffers():
    torch.manual_seed(11)
    loss = WMSELoss(2, w_size=4, w_iter=2)
    torch.manual_seed(11)
    assert int(WMSELoss(2, w_size=4).seed) == int(loss.seed)  # drawn from the global generator: the recipe's seed
    assert set(loss.state_dict()) == {"seed", "draws"}
    zs = [_views(12, 2, seed=s) for s in range(3)]
    values = []
    for step, views in enumerate(zs):
        expected = _wmse_loops(views, _partitions(loss, 12, 4))
        values.append(loss(*views))
        torch.testing.assert_close(values[-1], expected)
        assert int(loss.draws) == 2 * (step + 1)
    assert len({round(v.item(), 10) for v in values}) == 3
    restored = WMSELoss(2, w_size=4, w_iter=2)
    restored.load_state_dict(WMSELoss(2, w_size=4, w_iter=2).state_dict() | {"seed": loss.seed, "draws": loss.draws})
    probe = _views(12, 2, seed=9)
    torch.testing.assert_close(restored(*probe), loss(*probe))
    assert int(WMSELoss(2).draws) == 0 and WMSELoss(2)(*probe).item() >= 0  # one sub-batch: nothing drawn


def test_multi_crop_views_share_the_partition_and_every_pair_counts():
    loss = WMSELoss(3, w_size=6)
    zs = _views(12, 3, count=4)
    partition = _partitions(loss, 12, 6)
    pairwise = [_wmse_loops([zs[i], zs[j]], partition) for i, j in combinations(range(4), 2)]
    torch.testing.assert_close(loss(*zs), sum(pairwise) / 6)


def test_runs_in_float32_under_autocast():
    zs = [z.detach().float() for z in _views(64, 16)]
    expected = WMSELoss(16)(*zs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(WMSELoss(16)(*zs), expected)
        assert WMSELoss(16)(*[z.bfloat16() for z in zs]).dtype == torch.float32


def test_a_linear_encoder_learns_invariance_and_the_loss_falls():
    # Two views of 64 fixed 10-d samples, noisy in six nuisance coordinates and almost clean in four, through one
    # linear map to 4 dimensions (Adam): the whitened views align once the map ignores the nuisance coordinates.
    torch.manual_seed(0)
    data, noise = torch.randn(64, 10), torch.tensor([0.1] * 4 + [1.0] * 6)
    encoder = torch.nn.Linear(10, 4)
    loss = WMSELoss(4, w_size=32)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=0.05)
    values = []
    for _ in range(30):
        view_a, view_b = data + noise * torch.randn_like(data), data + noise * torch.randn_like(data)
        value = loss(encoder(view_a), encoder(view_b))
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        values.append(value.item())
    assert sum(values[-5:]) < 0.3 * sum(values[:5]), values  # seed 0: 0.08


@pytest.mark.parametrize("params", [{}, {"eps": 1e-3}, {"w_size": 8}, {"joint_whitening": True}])
def test_conformance(params):
    check_loss(WMSELoss, params, embedding_dim=4)


def test_errors():
    loss = WMSELoss(4)
    with pytest.raises(ValueError, match="^w_mse: expected two .* of one shape"):
        loss(torch.randn(8, 4), torch.randn(7, 4))
    with pytest.raises(ValueError, match="^w_mse: needs a batch of at least 2"):
        loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="^w_mse: a local view has shape"):
        loss(torch.randn(8, 4), torch.randn(8, 4), torch.randn(6, 4))
    with pytest.raises(ValueError, match="^w_mse: views have 5 features but embedding_dim = 4"):
        loss(torch.randn(8, 5), torch.randn(8, 5))
    with pytest.raises(ValueError, match="^w_mse: a batch of 12 does not split into sub-batches of w_size = 8"):
        WMSELoss(4, w_size=8)(torch.randn(12, 4), torch.randn(12, 4))
    with pytest.raises(ValueError, match="^w_mse: sub-batches of 4 embeddings cannot be whitened in 4 dimensions"):
        loss(torch.randn(4, 4), torch.randn(4, 4))
    WMSELoss(4, joint_whitening=True)(torch.randn(4, 4), torch.randn(4, 4))  # 8 rows together: enough
    WMSELoss(4, eps=0.1)(torch.randn(4, 4), torch.randn(4, 4))  # shrunk towards I: full rank
    with pytest.raises(ValueError, match="^w_mse: the covariance of 6 embeddings in 4 dimensions is not positive"):
        loss(torch.ones(6, 4), torch.randn(6, 4))
    with pytest.raises(ValueError, match="^w_mse: w_size = 64 must exceed embedding_dim = 64"):
        WMSELoss(64, w_size=64)
    WMSELoss(64, w_size=32, eps=1e-3)
    for kwargs, key in (({"embedding_dim": 0}, "embedding_dim"), ({"w_size": 1}, "w_size"),
                        ({"w_iter": 0}, "w_iter"), ({"eps": -0.1}, "eps"), ({"eps": 1.0}, "eps")):
        with pytest.raises(ValueError, match=f"^w_mse: {key} must"):
            WMSELoss(**({"embedding_dim": 4} | kwargs))


def test_flags_and_defaults():
    loss = WMSELoss(8)
    assert WMSELoss.needs_global_batch and WMSELoss.takes_local_views and not WMSELoss.needs_teacher
    assert (loss.w_size, loss.w_iter, loss.eps, loss.joint_whitening) == (None, 1, 0.0, False)


# --- in the ssl_pretrain stage ------------------------------------------------------------------

W_MSE = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    loss: {name: w_mse, w_size: 8, w_iter: 2}
    head: {name: mlp, dims: [16, 4]}
    batch_size: 16
    train: {epochs: 3, max_steps: 6, checkpoint_every: 2, log_every: 1}
""", name="w_mse")


def test_a_resumed_run_draws_the_same_partitions(tmp_path: Path, monkeypatch) -> None:
    straight = run_recipe_text(W_MSE, tmp_path, "straight")
    forward, calls = WMSELoss.forward, []

    def fails_once(self, *views):
        calls.append(int(self.draws))
        if len(calls) == 5:  # in step 5, after step 4's checkpoint
            raise RuntimeError("injected failure")
        return forward(self, *views)

    monkeypatch.setattr(WMSELoss, "forward", fails_once)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_recipe_text(W_MSE, tmp_path, "broken")
    monkeypatch.setattr(WMSELoss, "forward", forward)
    run(None, resume=tmp_path / "broken", device="cpu", console=lambda _: None)
    assert calls == [0, 2, 4, 6, 8]  # w_iter 2: two partitions a step
    a = load_checkpoint(straight / "stages" / "pretrain" / "last.pt")
    b = load_checkpoint(tmp_path / "broken" / "stages" / "pretrain" / "last.pt")
    assert a["step"] == b["step"] == 6 and int(a["modules"]["loss"]["draws"]) == 12
    for module in ("encoder", "loss"):
        for key in a["modules"][module]:
            assert torch.equal(a["modules"][module][key], b["modules"][module][key]), (module, key)
    log = [(row["step"], row["loss"]) for row in read_log(straight / "stages" / "pretrain" / "log.jsonl")]
    assert log == [(row["step"], row["loss"]) for row in
                   read_log(tmp_path / "broken" / "stages" / "pretrain" / "log.jsonl")]
