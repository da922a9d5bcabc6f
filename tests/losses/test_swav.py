"""SwAV: Sinkhorn-Knopp and the swapped prediction against float64 loops of the paper's Algorithm 1, a hand-computed
two-prototype case, the codes' marginals, invariances, the queue and its checkpoint, multi-crop through the stage."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hvkit.engine import load_checkpoint
from hvkit.engine.trainer import read_log
from hvkit.pipeline import run
from hvkit.testing import check_loss, run_recipe_text, tiny_recipe
from hvkit_plugins.losses.swav import SwAVLoss, sinkhorn_knopp, swapped_prediction

from .pair_batch import assert_full_precision_under_autocast


def _views(n: int, d: int, count: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    """``count`` correlated (n, d) views of one batch, requiring gradients."""
    g = torch.Generator().manual_seed(seed * 1000 + n * 100 + d)
    base = torch.randn(n, d, generator=g, dtype=dtype)
    return [(base + 0.6 * torch.randn(n, d, generator=g, dtype=dtype)).requires_grad_() for _ in range(count)]


def _loss(d: int, k: int, seed: int = 0, **kwargs) -> SwAVLoss:
    torch.manual_seed(seed)
    return SwAVLoss(embedding_dim=d, num_prototypes=k, **kwargs).double()


def _unit(rows: list[list[float]]) -> list[list[float]]:
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]


def _sinkhorn_loops(scores: list[list[float]], epsilon: float, iterations: int) -> list[list[float]]:
    """Algorithm 1 as printed, one entry at a time: Q = exp(S^T / eps) / sum, then rows to 1/K and columns to 1/N."""
    n, k = len(scores), len(scores[0])
    q = [[math.exp(scores[b][p] / epsilon) for b in range(n)] for p in range(k)]  # (K, N)
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for p in range(k):
            row = sum(q[p])
            q[p] = [v / row / k for v in q[p]]
        for b in range(n):
            column = sum(q[p][b] for p in range(k))
            for p in range(k):
                q[p][b] = q[p][b] / column / n
    return [[q[p][b] * n for p in range(k)] for b in range(n)]


def _swav_loops(views: list[torch.Tensor], prototypes: torch.Tensor, tau: float = 0.1, epsilon: float = 0.05,
                iterations: int = 3, queue: list[list[list[float]]] | None = None) -> float:
    """The paper's loss in float64 loops: every view v predicts each global view i != v's codes (queue rows first)."""
    c = _unit(prototypes.tolist())
    z = [_unit(v.tolist()) for v in views]
    score = [[[sum(a * b for a, b in zip(row, proto)) for proto in c] for row in view] for view in z]
    total = 0.0
    for i in range(2):
        rows = score[i]
        if queue is not None:
            rows = [[sum(a * b for a, b in zip(row, proto)) for proto in c] for row in _unit(queue[i])] + rows
        codes = _sinkhorn_loops(rows, epsilon, iterations)[-len(score[i]):]
        sub = 0.0
        for v in range(len(views)):
            if v == i:
                continue
            for q, s in zip(codes, score[v]):
                log_z = math.log(sum(math.exp(x / tau) for x in s))
                sub -= sum(qk * (x / tau - log_z) for qk, x in zip(q, s)) / len(codes)
        total += sub / (len(views) - 1)
    return total / 2


@pytest.mark.parametrize("n, d, k, views, tau, eps", [(8, 5, 6, 2, 0.1, 0.05), (5, 4, 12, 4, 0.3, 0.1),
                                                      (12, 6, 3, 3, 1.0, 0.5), (1, 3, 4, 2, 0.1, 0.05)])
def test_value_against_the_papers_algorithm_in_loops(n, d, k, views, tau, eps):
    loss = _loss(d, k, temperature=tau, epsilon=eps)
    zs = _views(n, d, views)
    value = loss(*zs)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(_swav_loops(zs, loss.prototypes, tau, eps), rel=1e-10)


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_against_the_loops(iterations):
    scores = torch.rand(7, 5, generator=torch.Generator().manual_seed(iterations), dtype=torch.float64) * 2 - 1
    expected = torch.tensor(_sinkhorn_loops(scores.tolist(), 0.05, iterations), dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, iterations), expected, rtol=1e-12, atol=1e-15)


def test_float32_close_to_float64():
    loss = _loss(32, 50)
    zs = _views(64, 32, 3)
    expected = _swav_loops(zs, loss.prototypes)
    value = loss.float()(*[z.detach().float() for z in zs])
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_a_hand_computed_two_prototype_case():
    # Prototypes e_1, e_2; sample 1 scores (eps ln 3, 0), sample 2 (0, 0), eps = tau = 0.5, so exp(S / eps) =
    # [[3, 1], [1, 1]] (samples x prototypes). One iteration on Q^T / 6 = [[1/2, 1/6], [1/6, 1/6]]:
    # rows (2/3, 1/3) scaled to 1/2 each: [[3/8, 1/8], [1/4, 1/4]]; columns (5/8, 3/8) to 1/2 each:
    # [[3/10, 1/6], [1/5, 1/3]]; times N = 2, sample 1's code is (3/5, 2/5) and sample 2's (1/3, 2/3).
    s = 0.5 * math.log(3)
    z = torch.tensor([[s, 0.0, math.sqrt(1 - s * s)], [0.0, 0.0, 1.0]], dtype=torch.float64)
    loss = _loss(3, 2, temperature=0.5, epsilon=0.5, sinkhorn_iterations=1)
    loss.prototypes.data.copy_(torch.eye(2, 3, dtype=torch.float64))
    scores = F.normalize(z, dim=1) @ loss.prototypes.T
    expected_codes = torch.tensor([[3 / 5, 2 / 5], [1 / 3, 2 / 3]], dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.5, 1), expected_codes)
    # softmax(S / tau) = rows of [[3, 1], [1, 1]] normalised: (3/4, 1/4) and (1/2, 1/2); both views alike.
    expected = -(0.6 * math.log(0.75) + 0.4 * math.log(0.25) + math.log(0.5)) / 2
    assert loss(z, z.clone()).item() == pytest.approx(expected, rel=1e-12)


def test_each_code_sums_to_one_and_the_prototypes_are_used_equally_at_convergence():
    scores = F.normalize(torch.randn(24, 16, dtype=torch.float64), dim=1) @ F.normalize(
        torch.randn(6, 16, dtype=torch.float64), dim=1).T
    for iterations in (1, 3, 200):
        codes = sinkhorn_knopp(scores, 0.05, iterations)
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(24, dtype=torch.float64))
    usage = [sinkhorn_knopp(scores, 0.05, it).sum(dim=0) for it in (0, 3, 200)]
    torch.testing.assert_close(usage[2], torch.full((6,), 24 / 6, dtype=torch.float64))
    spread = [float((u - 4).abs().max()) for u in usage]
    assert spread[0] > spread[1] > spread[2]


def test_sinkhorn_does_not_overflow_where_the_papers_float32_code_does():
    # exp(1 / 0.01) = 2.7e43 overflows float32; dividing each prototype's row by its largest entry does not
    # change the codes, which the first row scaling normalises anyway.
    scores = 0.5 + 0.5 * torch.rand(10, 4, generator=torch.Generator().manual_seed(3))
    assert not torch.isfinite(torch.exp(scores / 0.01)).all()
    codes = sinkhorn_knopp(scores, 0.01, 3)
    assert codes.dtype == torch.float32
    expected = torch.tensor(_sinkhorn_loops(scores.double().tolist(), 0.01, 3))
    torch.testing.assert_close(codes, expected.float())


def test_a_small_epsilon_takes_the_sinkhorn_to_float64():
    # Prototypes (1, 0) and (-1, 0) each have a best score of 1; the sample (0, 1) scores 0 with both, and
    # exp(-1 / 0.005) = 1e-87 underflows float32: its column would be all zeros, its code 0 / 0.
    loss = _loss(2, 2, epsilon=0.005).float()
    loss.prototypes.data.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert (torch.exp(torch.tensor(-1 / 0.005)) == 0).item()
    value = loss(z, z.clone())
    assert value.item() == pytest.approx(_swav_loops([z, z], loss.prototypes, epsilon=0.005), rel=1e-6)


def test_permuting_the_prototypes_or_the_batch_changes_nothing():
    loss = _loss(5, 7)
    zs = _views(9, 5, 3)
    value = loss(*zs)
    grads = torch.autograd.grad(value, [*zs, loss.prototypes])
    order = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    permuted = _loss(5, 7)
    permuted.prototypes.data.copy_(loss.prototypes.data[order])
    value_p = permuted(*zs)
    grads_p = torch.autograd.grad(value_p, [*zs, permuted.prototypes])
    torch.testing.assert_close(value_p, value)
    for g, g_p in zip(grads[:-1], grads_p[:-1]):
        torch.testing.assert_close(g_p, g)
    torch.testing.assert_close(grads_p[-1], grads[-1][order])
    rows = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(loss(*[z[rows] for z in zs]), value)


def test_no_gradient_flows_through_the_codes():
    # d/ds_v of the mean cross-entropy: (n_v softmax(s_v / tau) - sum_{i != v} q_i) / (tau B G (V - 1)), n_v the
    # global views other than v; the codes are constants.
    g = torch.Generator().manual_seed(5)
    scores = (torch.rand(4, 6, 5, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    codes = sinkhorn_knopp(scores[:2].reshape(-1, 5), 0.05, 3).view(2, 6, 5)
    assert not codes.requires_grad
    swapped_prediction(scores, codes, 0.1).backward()
    p = torch.softmax(scores.detach() / 0.1, dim=2)
    others = torch.stack([codes.sum(0) - codes[v] if v < 2 else codes.sum(0) for v in range(4)])
    count = torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=torch.float64).view(4, 1, 1)
    torch.testing.assert_close(scores.grad, (count * p - others) / (0.1 * 6 * 2 * 3))


def test_the_loss_gradient_is_that_of_the_swapped_prediction_with_fixed_codes():
    loss = _loss(4, 5)
    zs = _views(6, 4, 3)
    value = loss(*zs)
    grads = torch.autograd.grad(value, [*zs, loss.prototypes])
    fixed = [z.detach().clone().requires_grad_() for z in zs]
    prototypes = loss.prototypes.detach().clone().requires_grad_()
    scores = F.normalize(torch.stack(fixed), dim=2) @ F.normalize(prototypes, dim=1).T
    codes = torch.stack([sinkhorn_knopp(scores[i], 0.05, 3) for i in range(2)])
    expected = torch.autograd.grad(swapped_prediction(scores, codes, 0.1), [*fixed, prototypes])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_gradcheck_of_the_swapped_prediction():
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    codes = sinkhorn_knopp(scores[:2].detach().reshape(-1, 5), 0.05, 3).view(2, 4, 5)
    assert torch.autograd.gradcheck(lambda s: swapped_prediction(s, codes, 0.3), (scores,))


def test_two_views_are_the_symmetric_swapped_prediction_and_local_views_never_give_codes():
    loss = _loss(4, 6)
    z_a, z_b, local = _views(5, 4, 3)
    s = [F.normalize(z, dim=1) @ F.normalize(loss.prototypes, dim=1).T for z in (z_a, z_b, local)]
    q = [sinkhorn_knopp(x, 0.05, 3) for x in s]

    def ce(codes, scores):
        return -(codes * torch.log_softmax(scores / 0.1, dim=1)).sum(1).mean()

    torch.testing.assert_close(loss(z_a, z_b), (ce(q[1], s[0]) + ce(q[0], s[1])) / 2)
    expected = (ce(q[1], s[0]) + ce(q[1], s[2]) + ce(q[0], s[1]) + ce(q[0], s[2])) / 4
    torch.testing.assert_close(loss(z_a, z_b, local), expected)


def test_runs_in_float32_under_autocast():
    loss = SwAVLoss(embedding_dim=16, num_prototypes=20)
    z_a, z_b = _views(12, 16, dtype=torch.float32)
    assert_full_precision_under_autocast(loss, z_a, z_b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(z_a.bfloat16(), z_b.bfloat16(), z_a.bfloat16()).dtype == torch.float32


def test_the_queue_fills_newest_first_and_joins_the_sinkhorn_once_full():
    loss = _loss(4, 5, queue_size=8, queue_start_steps=1)
    batches = [_views(3, 4, 2, seed=s) for s in range(5)]
    pushed: list[list[list[float]]] = [[], []]  # the normalised embeddings of each global view, newest first
    for step, zs in enumerate(batches):
        queue = [rows[:8] for rows in pushed] if len(pushed[0]) >= 8 else None
        expected = _swav_loops(zs, loss.prototypes, queue=queue)
        assert loss(*zs).item() == pytest.approx(expected, rel=1e-10), step
        if step >= 1:  # queue_start_steps: the first call pushes nothing
            for i in range(2):
                pushed[i] = F.normalize(zs[i].detach(), dim=1).tolist() + pushed[i]
        assert int(loss.queued) == min(len(pushed[0]), 8) and int(loss.steps) == step + 1
    # steps 1, 2, 3 filled 9 > 8 rows, so step 4 used the queue: its value above came from the queue's scores
    for i in range(2):
        torch.testing.assert_close(loss.queue[i], torch.tensor(pushed[i][:8], dtype=torch.float64))


def test_the_queue_changes_the_codes_once_full_and_not_in_eval_mode():
    loss = _loss(4, 5, queue_size=4)
    first, zs = _views(4, 4), _views(4, 4, seed=1)
    without = _loss(4, 5)
    assert loss(*first).item() == pytest.approx(without(*first).item(), rel=1e-12)  # filled now, not used yet
    # a queue of the batch itself would change nothing: Sinkhorn gives duplicated columns the same codes
    assert loss(*zs).item() != pytest.approx(without(*zs).item(), rel=1e-6)
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.eval()
    loss(*zs)
    assert all(torch.equal(v, loss.state_dict()[k]) for k, v in state.items())


def test_a_batch_larger_than_the_queue_keeps_its_newest_rows():
    loss = _loss(3, 4, queue_size=2)
    zs = _views(5, 3)
    loss(*zs)
    torch.testing.assert_close(loss.queue[1], F.normalize(zs[1].detach(), dim=1)[:2])
    assert int(loss.queued) == 2


def test_the_state_is_buffers_a_restored_loss_continues_identically():
    loss = _loss(4, 6, queue_size=6, queue_start_steps=1)
    for seed in range(4):
        loss(*_views(3, 4, seed=seed))
    state = loss.state_dict()
    assert set(state) == {"prototypes", "queue", "queued", "steps"}
    restored = _loss(4, 6, seed=9, queue_size=6, queue_start_steps=1)
    restored.load_state_dict(state)
    zs = _views(3, 4, 3, seed=7)
    assert restored(*zs).item() == loss(*zs).item()
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in loss.state_dict().items())


def _cluster_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy views of 64 points drawn around 8 centres in 10 dimensions."""
    centres = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    x = centres[torch.randint(0, 8, (64,), generator=generator)]
    return (x + 0.3 * torch.randn(64, 10, generator=generator), x + 0.3 * torch.randn(64, 10, generator=generator))


def test_training_lowers_the_loss_and_keeps_the_prototypes_in_balanced_use():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    loss = SwAVLoss(embedding_dim=16, num_prototypes=8)
    optimiser = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=0.01)
    g = torch.Generator().manual_seed(1)
    values = []
    for _ in range(60):
        optimiser.zero_grad()
        value = loss(*[model(v) for v in _cluster_batch(g)])
        value.backward()
        optimiser.step()
        values.append(value.item())
    assert sum(values[-5:]) < 0.3 * sum(values[:5]), values  # seeds 0-3 give 0.01, 0.002, 0.12 and 0.04
    with torch.no_grad():
        x, _ = _cluster_batch(torch.Generator().manual_seed(2))
        scores = F.normalize(model(x), dim=1) @ F.normalize(loss.prototypes, dim=1).T
    usage = torch.bincount(scores.argmax(dim=1), minlength=8)
    assert int((usage > 0).sum()) == 8 and int(usage.max()) <= 3 * 64 // 8, usage  # seeds 0-3: at most 15


def test_conformance():
    check_loss(SwAVLoss)
    check_loss(SwAVLoss, {"num_prototypes": 5, "queue_size": 4})


@pytest.mark.parametrize("kwargs, match", [
    ({"embedding_dim": 0}, "embedding_dim must be at least 1"),
    ({"num_prototypes": 1}, "num_prototypes must be at least 2"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"epsilon": -0.05}, "epsilon must be > 0"),
    ({"sinkhorn_iterations": 0}, "sinkhorn_iterations must be at least 1"),
    ({"queue_size": -1}, "queue_size=-1"),
    ({"queue_start_steps": -2}, "queue_size=0 and queue_start_steps=-2"),
])
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=f"^swav: {match}"):
        SwAVLoss(**({"embedding_dim": 4} | kwargs))


def test_invalid_views_raise():
    loss = SwAVLoss(embedding_dim=4, num_prototypes=3)
    with pytest.raises(ValueError, match="swav: expected two"):
        loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="swav: a local view has shape"):
        loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="swav: views have 5 features"):
        loss(torch.randn(3, 5), torch.randn(3, 5))


SWAV = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    loss: {name: swav, num_prototypes: 6, queue_size: 16, queue_start_steps: 1}
    head: {name: mlp, dims: [16, 16]}
    batch_size: 8
    local_views: 2
    local_size: 16
    train: {epochs: 2, max_steps: 6, checkpoint_every: 2, log_every: 1}
""", name="swav")


def _run(tmp_path: Path, name: str) -> Path:
    return run_recipe_text(SWAV, tmp_path, name)


def test_the_stage_passes_every_view_in_one_call_per_step(tmp_path: Path, monkeypatch) -> None:
    calls: list[list[tuple[int, ...]]] = []
    forward = SwAVLoss.forward

    def spy(self, *views):
        calls.append([tuple(z.shape) for z in views])
        return forward(self, *views)

    monkeypatch.setattr(SwAVLoss, "forward", spy)
    run_dir = _run(tmp_path, "run")
    assert calls == [[(8, 16)] * 4] * 6  # two global and two local views, once per step
    saved = load_checkpoint(run_dir / "stages" / "pretrain" / "last.pt")["modules"]["loss"]
    assert int(saved["steps"]) == 6 and int(saved["queued"]) == 16  # steps 2-6 pushed 5 x 8 rows


def test_the_queue_resumes_identically_from_a_checkpoint(tmp_path: Path, monkeypatch) -> None:
    straight = _run(tmp_path, "straight")
    forward = SwAVLoss.forward
    calls: list[int] = []

    def fails_once(self, *views):
        calls.append(1)
        if len(calls) == 5:  # in step 5: the last checkpoint is step 4's, its queue full
            raise RuntimeError("injected failure")
        return forward(self, *views)

    monkeypatch.setattr(SwAVLoss, "forward", fails_once)
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(tmp_path, "broken")
    monkeypatch.setattr(SwAVLoss, "forward", forward)
    broken = tmp_path / "broken"
    assert int(load_checkpoint(broken / "stages" / "pretrain" / "last.pt")["modules"]["loss"]["queued"]) == 16
    run(None, resume=broken, device="cpu", console=lambda _: None)
    a = load_checkpoint(straight / "stages" / "pretrain" / "last.pt")["modules"]
    b = load_checkpoint(broken / "stages" / "pretrain" / "last.pt")["modules"]
    for module in ("encoder", "loss"):
        for key in a[module]:
            assert torch.equal(a[module][key], b[module][key]), (module, key)
    log = [(row["step"], row["loss"]) for row in read_log(straight / "stages" / "pretrain" / "log.jsonl")]
    assert log == [(row["step"], row["loss"]) for row in read_log(broken / "stages" / "pretrain" / "log.jsonl")]
