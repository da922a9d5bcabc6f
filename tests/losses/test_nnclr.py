"""NNCLR: value and gradient over several steps against a float64 loop reference (support-set trajectory, nearest
neighbours, the paper's Eq. 2 and its symmetrising term), a hand-computed case, the empty-support fallback against
PML's NT-Xent, multi-crop and once-per-step writes through the stage, checkpoints, contract."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss

from hvkit.engine import load_checkpoint
from hvkit.testing import check_loss, run_recipe_text, tiny_recipe
from hvkit_plugins.losses.nnclr import NNCLRLoss, nearest_neighbours, neighbour_info_nce
from hvkit_plugins.losses.simsiam import prediction_mlp

from .predictor_reference import fix_predictor, predict


def _loss(d: int, support_size: int, hidden: int = 6, tau: float = 0.1, seed: int = 0) -> NNCLRLoss:
    torch.manual_seed(seed)
    loss = NNCLRLoss(embedding_dim=d, support_size=support_size, temperature=tau, predictor_dim=hidden)
    return fix_predictor(loss, seed).double()


def _views(n: int, d: int, step: int, count: int = 2, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """``count`` correlated (n, d) views of one step's batch, requiring gradients."""
    g = torch.Generator().manual_seed(1000 * step + 10 * n + d)
    base = 1.0 + 2.0 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return [(base + torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
            for _ in range(count)]


def _unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _nearest(z: list[float], support: deque) -> list[float]:
    """The paper's NN(z, Q) = argmax_q z . q over unit q, by a scan; z itself while Q is empty."""
    return max(support, key=lambda q: _dot(z, q)) if support else z


def _symmetric_info_nce(anchors: list[list[float]], p: torch.Tensor, tau: float) -> torch.Tensor:
    """(mean_i L_i + mean_i L'_i) / 2 written out: L_i over row i of s_ik = n_i . p_k / tau, L'_i over column i."""
    rows = [p[k] / p[k].pow(2).sum().sqrt() for k in range(len(anchors))]
    constants = [torch.tensor(a, dtype=torch.float64) for a in anchors]
    s = [[(constants[i] * rows[k]).sum() / tau for k in range(len(rows))] for i in range(len(rows))]
    n = len(rows)
    row_terms = [torch.log(sum(torch.exp(s[i][k]) for k in range(n))) - s[i][i] for i in range(n)]
    column_terms = [torch.log(sum(torch.exp(s[k][i]) for k in range(n))) - s[i][i] for i in range(n)]
    return (sum(row_terms) / n + sum(column_terms) / n) / 2


def _reference(loss: NNCLRLoss, steps: list[list[torch.Tensor]]) -> tuple[list[torch.Tensor], list[deque]]:
    """Each step's loss and the support set after it: a deque of the last C unit first-view rows, scanned for
    neighbours; every pair (global view g, other view v) of (NN(z_g), p_v) averaged; the predictor in float64."""
    support: deque = deque(maxlen=loss.support_size)
    values, trajectory = [], []
    for views in steps:
        predictions = [predict(loss, z) for z in views]
        units = [[_unit(row) for row in z.detach().double().tolist()] for z in views[:2]]
        anchors = [[_nearest(z, support) for z in unit] for unit in units]
        terms = [_symmetric_info_nce(anchors[g], p, loss.temperature) for g in range(2)
                 for v, p in enumerate(predictions) if v != g]
        values.append(sum(terms) / len(terms))
        support.extend(units[0])
        trajectory.append(deque(support))
    return values, trajectory


@pytest.mark.parametrize("n, d, size, views", [(5, 4, 7, 2), (6, 3, 4, 2), (4, 5, 9, 3), (2, 3, 1, 3)])
def test_value_gradient_and_support_set_over_several_steps_against_the_loops(n, d, size, views):
    loss = _loss(d, size)
    steps = [_views(n, d, step, views) for step in range(4)]
    expected, trajectory = _reference(loss, steps)
    parameters = [p for p in loss.parameters()]
    for step, zs in enumerate(steps):
        value = loss(*zs)
        assert value.dtype == torch.float64
        assert value.item() == pytest.approx(expected[step].item(), rel=1e-10), step
        got = torch.autograd.grad(value, [*zs, *parameters])
        want = torch.autograd.grad(expected[step], [*zs, *parameters])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
        written = (step + 1) * n
        assert int(loss.written) == written
        for k, row in enumerate(list(trajectory[step])):  # the k-th of the kept rows was row written - len + k
            torch.testing.assert_close(loss.support[(written - len(trajectory[step]) + k) % size].tolist(), row)


def test_the_nearest_neighbour_is_the_most_cosine_similar_support_entry():
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    z = F.normalize(torch.tensor([[0.6, 0.8], [0.8, 0.6], [-1.0, 0.1], [0.5, -0.5]], dtype=torch.float64), dim=1)
    expected = support[[1, 0, 2, 0]]  # (0.5, -0.5): cosines 0.71, -0.71 and -0.71
    torch.testing.assert_close(nearest_neighbours(z, support), expected)
    tie = F.normalize(torch.tensor([[1.0, 1.0]], dtype=torch.float64), dim=1)
    torch.testing.assert_close(nearest_neighbours(tie, support), support[:1])  # the first of equals
    empty = nearest_neighbours(z.requires_grad_(), support[:0])
    torch.testing.assert_close(empty, z.detach())
    assert not empty.requires_grad


def test_a_hand_computed_case():
    # Neighbours (1, 0), (0, 1); both predictions along (1, 0); tau = 1: s = [[1, 1], [0, 0]]. Rows: log 2 each.
    # Column 1: -log(e / (e + 1)) = log(1 + 1/e); column 2: -log(1 / (e + 1)) = log(1 + e).
    anchors = torch.eye(2, dtype=torch.float64)
    predictions = torch.tensor([[3.0, 0.0], [0.5, 0.0]], dtype=torch.float64)
    expected = (math.log(2) + (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2) / 2
    assert neighbour_info_nce(anchors, predictions, 1.0).item() == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(0.7532, abs=1e-4)


def _pml_both_ways(anchors: torch.Tensor, predictions: torch.Tensor, tau: float) -> torch.Tensor:
    """PML's NT-Xent with the other view as the reference set, one positive (i, i) a row: each way, averaged."""
    labels = torch.arange(len(anchors))
    negative_anchors, negatives = torch.nonzero(labels[:, None] != labels[None, :], as_tuple=True)
    pairs = (labels, labels, negative_anchors, negatives)  # given: PML drops (i, i) as a self-pair otherwise
    ntxent = NTXentLoss(temperature=tau)
    return (ntxent(anchors, labels, pairs, ref_emb=predictions, ref_labels=labels)
            + ntxent(predictions, labels, pairs, ref_emb=anchors, ref_labels=labels)) / 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_with_an_empty_support_set_it_is_pml_ntxent_of_each_view_against_the_others_predictions(dtype):
    loss = _loss(6, 16).to(dtype)
    z_a, z_b = _views(10, 6, 0, dtype=dtype)
    value = loss(z_a, z_b)
    p_a, p_b = loss.predictor(z_a), loss.predictor(z_b)  # the same batch statistics as the loss's
    expected = (_pml_both_ways(z_a.detach(), p_b, 0.1) + _pml_both_ways(z_b.detach(), p_a, 0.1)) / 2
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(torch.autograd.grad(value, [z_a, z_b]), torch.autograd.grad(expected, [z_a, z_b]))


def test_the_neighbour_is_a_constant_the_gradient_flows_through_the_predictions():
    loss = _loss(4, 8)
    loss(*_views(8, 4, 0))  # fills the support set
    support = loss.support.clone()
    z_a, z_b = _views(8, 4, 1)
    value = loss(z_a, z_b)
    anchors = [nearest_neighbours(F.normalize(z.detach(), dim=1), support) for z in (z_a, z_b)]
    p_a, p_b = (loss.predictor(z) for z in (z_a, z_b))
    expected = (neighbour_info_nce(anchors[0], p_b, 0.1) + neighbour_info_nce(anchors[1], p_a, 0.1)) / 2
    torch.testing.assert_close(torch.autograd.grad(value, [z_a, z_b]), torch.autograd.grad(expected, [z_a, z_b]))
    assert not loss.support.requires_grad


def test_the_support_set_is_written_out_of_place_after_the_loss_and_not_in_eval_mode():
    loss = _loss(4, 6)
    first = _views(4, 4, 0)
    before = loss.support
    value = loss(*first)
    assert loss.support is not before and torch.equal(before, torch.zeros_like(before))
    torch.testing.assert_close(loss.support[:4], F.normalize(first[0].detach(), dim=1))
    value.backward()  # after the write
    loss.eval()
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    loss(*_views(4, 4, 1))
    assert all(torch.equal(v, loss.state_dict()[k]) for k, v in state.items())


def test_local_views_predict_both_global_neighbours_and_the_support_set_advances_once_per_call():
    loss = _loss(4, 10)
    loss(*_views(5, 4, 0))
    z_a, z_b, l_1, l_2 = _views(5, 4, 1, count=4)
    support = loss.support[:5].clone()
    value = loss(z_a, z_b, l_1, l_2)
    assert int(loss.written) == 10  # z_a only, once
    n_a, n_b = (nearest_neighbours(F.normalize(z.detach(), dim=1), support) for z in (z_a, z_b))
    p = [loss.predictor(z) for z in (z_a, z_b, l_1, l_2)]
    pairs = [(n_a, p[1]), (n_a, p[2]), (n_a, p[3]), (n_b, p[0]), (n_b, p[2]), (n_b, p[3])]
    expected = sum(neighbour_info_nce(n, q, 0.1) for n, q in pairs) / 6
    torch.testing.assert_close(value, expected)


def test_float32_close_to_float64():
    steps = [_views(32, 8, step) for step in range(3)]
    loss = _loss(8, 48, hidden=16)
    expected, _ = _reference(loss, steps)
    loss = loss.float()
    for step, zs in enumerate(steps):
        value = loss(*[z.detach().float().requires_grad_() for z in zs])
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(expected[step].item(), rel=2e-5)


def test_gradcheck():
    loss = _loss(3, 6)
    for step in range(3):
        loss(*_views(4, 3, step))
    loss.eval()  # no write while gradcheck evaluates it; the predictor's BatchNorm on its running statistics
    z_a, z_b = _views(4, 3, 9)
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (z_a, z_b))


def test_runs_in_float32_under_autocast():
    loss = NNCLRLoss(embedding_dim=16, support_size=64, predictor_dim=32)
    loss(*_views(24, 16, 0, dtype=torch.float32))
    loss.eval()
    z_a, z_b = _views(24, 16, 1, dtype=torch.float32)
    expected = loss(z_a, z_b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(z_a, z_b), expected)
        assert loss(z_a.bfloat16(), z_b.bfloat16()).dtype == torch.float32


def test_the_state_is_buffers_and_a_restored_loss_continues_identically():
    loss = _loss(4, 6)
    for step in range(3):
        loss(*_views(4, 4, step))
    state = loss.state_dict()
    assert {"support", "written"} <= set(state) and set(state) - {"support", "written"} == {
        f"predictor.{k}" for k in loss.predictor.state_dict()}
    restored = _loss(4, 6, seed=5)
    restored.load_state_dict(state)
    zs = _views(4, 4, 7)
    assert restored(*zs).item() == loss(*zs).item()
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in loss.state_dict().items())


def test_training_lowers_the_loss_and_each_samples_neighbour_becomes_its_own_earlier_embedding():
    # 32 fixed points, two noisy views a step: the support set holds the last two steps' first views, the point
    # in slot k being k mod 32, and once trained a view's nearest neighbour is the same point's earlier embedding.
    torch.manual_seed(0)
    data = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    loss = NNCLRLoss(embedding_dim=16, support_size=64, predictor_dim=32)
    optimiser = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=0.01)
    g = torch.Generator().manual_seed(1)
    values = []
    for _ in range(40):
        optimiser.zero_grad()
        value = loss(*[model(data + 0.2 * torch.randn(32, 10, generator=g)) for _ in range(2)])
        value.backward()
        optimiser.step()
        values.append(value.item())
    assert sum(values[-5:]) < 0.4 * sum(values[2:7]), values  # seeds 0-2 give 0.19, 0.15 and 0.14
    with torch.no_grad():
        z = F.normalize(model(data + 0.2 * torch.randn(32, 10, generator=g)), dim=1)
        found = (z @ loss.support.T).argmax(dim=1) % 32
    assert (found == torch.arange(32)).float().mean() >= 0.9, found


def test_flags_defaults_and_predictor():
    assert NNCLRLoss.needs_global_batch is True and NNCLRLoss.takes_local_views is True
    assert NNCLRLoss.needs_teacher is False
    loss = NNCLRLoss(embedding_dim=4)
    assert (loss.support_size, loss.temperature) == (98304, 0.1)
    assert loss.support.shape == (98304, 4) and int(loss.written) == 0
    assert [type(m) for m in loss.predictor] == [type(m) for m in prediction_mlp(4, 4096)]
    assert loss.predictor[0].out_features == 4096


def test_conformance():
    check_loss(NNCLRLoss, {"support_size": 20, "predictor_dim": 16})


@pytest.mark.parametrize("kwargs, match", [
    ({"embedding_dim": 0}, "embedding_dim must be at least 1"),
    ({"predictor_dim": 0}, "predictor_dim must be at least 1"),
    ({"support_size": 0}, "support_size must be at least 1, got 0; the paper uses 98304"),
    ({"temperature": 0.0}, "temperature must be > 0, got 0.0; the paper uses 0.1"),
    ({"temperature": -0.1}, "temperature must be > 0"),
])
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=f"^nnclr: {match}"):
        NNCLRLoss(**({"embedding_dim": 4} | kwargs))


def test_invalid_views_raise():
    loss = NNCLRLoss(embedding_dim=4, support_size=8, predictor_dim=8)
    with pytest.raises(ValueError, match="^nnclr: expected two"):
        loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="^nnclr: needs a batch of at least 2"):
        loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="^nnclr: a local view has shape"):
        loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="^nnclr: views have D = 5"):
        loss(torch.randn(3, 5), torch.randn(3, 5))


NNCLR = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    loss: {name: nnclr, support_size: 20, predictor_dim: 16}
    head: {name: mlp, dims: [16, 16]}
    batch_size: 8
    local_views: 2
    local_size: 16
    train: {epochs: 1, max_steps: 4, log_every: 1}
""", name="nnclr")


def test_the_stage_passes_every_view_in_one_call_and_the_support_set_advances_once_a_step(tmp_path: Path,
                                                                                           monkeypatch):
    calls: list[tuple[list[tuple[int, ...]], int]] = []
    forward = NNCLRLoss.forward

    def spy(self, *views):
        calls.append(([tuple(z.shape) for z in views], int(self.written)))
        return forward(self, *views)

    monkeypatch.setattr(NNCLRLoss, "forward", spy)
    run_dir = run_recipe_text(NNCLR, tmp_path, "run")
    assert calls == [([(8, 16)] * 4, 8 * step) for step in range(4)]  # two global, two local views, once a step
    saved = load_checkpoint(run_dir / "stages" / "pretrain" / "last.pt")["modules"]["loss"]
    assert int(saved["written"]) == 32 and saved["support"].shape == (20, 16)
    torch.testing.assert_close(saved["support"].norm(dim=1), torch.ones(20))
