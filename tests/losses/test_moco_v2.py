"""MoCo v2: value against Algorithm 1 written out and PML's NT-Xent with the queue as its reference set, the queue's
FIFO order, no gradient to keys or queue, the stage's asymmetric form, once-per-step enqueueing, resume, contract."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss

from hvkit.api import ViewLoss
from hvkit.engine import load_checkpoint
from hvkit.engine.trainer import read_log
from hvkit.pipeline import run
from hvkit.testing import check_loss, run_recipe_text, tiny_recipe
from hvkit_plugins.losses import moco_v2
from hvkit_plugins.losses.moco_v2 import MoCoV2Loss, queue_info_nce
from hvkit_plugins.stages import ssl_pretrain
from hvkit_plugins.stages.ssl_pretrain import teacher_view_loss, update_teacher

from .predictor_reference import views


def _unit(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=1)


def _loss(d: int, queue_size: int, temperature: float = 0.2, symmetric: bool = False,
          dtype: torch.dtype = torch.float64) -> MoCoV2Loss:
    """A loss whose queue holds unit keys of ``dtype`` (the initial float32 ones are unit to float32 only)."""
    loss = MoCoV2Loss(embedding_dim=d, queue_size=queue_size, temperature=temperature, symmetric=symmetric).to(dtype)
    loss.queue.copy_(_unit(queue_size, d, seed=queue_size * 10 + d, dtype=dtype))
    return loss


def _algorithm_1(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> float:
    """The paper's Algorithm 1, one query at a time: -log(e^{q.k+/tau} / (e^{q.k+/tau} + sum_j e^{q.n_j/tau}))."""
    def unit(rows: torch.Tensor) -> list[list[float]]:
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows.detach().double().tolist()]

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    negatives = queue.double().tolist()
    total = 0.0
    for qi, ki in zip(unit(q), unit(k)):
        positive = math.exp(dot(qi, ki) / tau)
        total += -math.log(positive / (positive + sum(math.exp(dot(qi, n) / tau) for n in negatives)))
    return total / len(q)


@pytest.mark.parametrize("n, d, queue_size, tau", [(16, 6, 32, 0.2), (5, 3, 7, 1.0), (8, 4, 1, 0.07),
                                                   (1, 5, 12, 0.2)])
def test_value_against_algorithm_1(n, d, queue_size, tau):
    loss = _loss(d, queue_size, tau)
    online, target = views(n, d)
    value = loss(online, target)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(_algorithm_1(online, target, loss.queue, tau), rel=1e-12)


def test_float32_close_to_float64():
    loss = _loss(32, 256, dtype=torch.float32)
    online, target = views(64, 32, torch.float32)
    value = loss(online, target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_algorithm_1(online, target, loss.queue, 0.2), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.2, 0.07])
def test_equals_pml_ntxent_with_the_keys_and_queue_as_its_reference_set(dtype, tau):
    # PML's NT-Xent, query i's one positive pair (i, key i) and its negative pairs (i, every queue entry), the
    # keys and queue as ref_emb: the batch's other keys are no negatives, as in MoCo.
    n, d, size = 10, 6, 24
    loss = _loss(d, size, tau, dtype=dtype)
    online, target = views(n, d, dtype)
    ref = torch.cat([target.detach(), loss.queue]).requires_grad_()
    anchors = torch.arange(n)
    pairs = (anchors, anchors, anchors.repeat_interleave(size), n + torch.arange(size).repeat(n))
    expected = NTXentLoss(temperature=tau)(online, anchors, pairs, ref_emb=ref, ref_labels=torch.arange(n + size))
    ours = loss(online, target)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(*(torch.autograd.grad(v, online)[0] for v in (ours, expected)))


def test_hand_computed_case():
    # q = k = (1, 0) (after normalising), queue (0, 1) and (-1, 0): -log(e^{1/tau} / (e^{1/tau} + e^0 + e^{-1/tau}))
    # = log(1 + e^{-1/tau} + e^{-2/tau}); tau = 0.5: log(1 + e^-2 + e^-4) = 0.14293…
    loss = MoCoV2Loss(embedding_dim=2, queue_size=2, temperature=0.5).double()
    loss.queue.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    value = loss(torch.tensor([[3.0, 0.0]], dtype=torch.float64), torch.tensor([[0.5, 0.0]], dtype=torch.float64))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-2) + math.exp(-4)), rel=1e-14)
    assert value.item() == pytest.approx(0.142932, abs=1e-6)


def test_the_gradient_reaches_the_queries_only_and_equals_the_official_pseudo_code():
    loss = _loss(6, 20)
    online, target = views(10, 6)
    loss(online, target).backward()
    assert target.grad is None and not list(loss.parameters())  # keys and queue are constants
    assert loss.queue.grad is None and not loss.queue.requires_grad
    # Algorithm 1: l_pos = bmm(q, k), l_neg = mm(q, queue), cross-entropy of [l_pos, l_neg] / tau at label 0
    q, k = F.normalize(online, dim=1), F.normalize(target.detach(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ loss.queue.T], dim=1) / 0.2
    expected, = torch.autograd.grad(F.cross_entropy(logits, torch.zeros(10, dtype=torch.int64)), online)
    torch.testing.assert_close(online.grad, expected)


def test_gradcheck():
    loss = _loss(4, 9, 0.3)
    online, target = views(5, 4)
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (online,))


def test_a_key_equal_to_every_queue_entry_gives_log_of_k_plus_one():
    # Every queue entry equal to the key: the positive is one of K + 1 equal logits, -log 1/(K+1).
    loss = MoCoV2Loss(embedding_dim=3, queue_size=7).double()
    loss.queue.copy_(F.normalize(torch.ones(7, 3, dtype=torch.float64), dim=1))
    online, _ = views(4, 3)
    assert loss(online, torch.ones(4, 3, dtype=torch.float64)).item() == pytest.approx(math.log(8), rel=1e-12)


def _keys(step: int, n: int = 2, d: int = 3) -> torch.Tensor:
    return _unit(n, d, seed=100 + step)


def test_the_queue_is_first_in_first_out_and_wraps_around():
    loss = MoCoV2Loss(embedding_dim=3, queue_size=5).double()
    start = loss.queue.clone()
    a, b, c = (_keys(step) for step in range(3))
    loss.observe_teacher([torch.zeros(2, 3, dtype=torch.float64), 4 * a])  # asymmetric: the second view's keys
    torch.testing.assert_close(loss.queue, torch.cat([a, start[2:]]))
    assert int(loss.position) == 2
    loss.observe_teacher([torch.zeros(2, 3, dtype=torch.float64), 0.5 * b])
    torch.testing.assert_close(loss.queue, torch.cat([a, b, start[4:]]))
    loss.observe_teacher([torch.zeros(2, 3, dtype=torch.float64), c])  # c[0] takes the last slot, c[1] a[0]'s
    torch.testing.assert_close(loss.queue, torch.cat([c[1:], a[1:], b, c[:1]]))
    assert int(loss.position) == 1


def test_a_step_of_more_keys_than_the_queue_holds_keeps_the_newest():
    loss = MoCoV2Loss(embedding_dim=3, queue_size=4).double()
    keys = _keys(0, n=2)
    loss.observe_teacher([keys, keys])
    many = _keys(1, n=7)
    loss.observe_teacher([many, many])  # 7 keys from slot 2: the last 4 land in slots 1, 2, 3, 0
    torch.testing.assert_close(loss.queue, torch.cat([many[6:], many[3:6]]))
    assert int(loss.position) == (2 + 7) % 4


def test_symmetric_enqueues_both_views_keys_the_first_view_first():
    loss = MoCoV2Loss(embedding_dim=3, queue_size=6, symmetric=True).double()
    start = loss.queue.clone()
    t_1, t_2 = _keys(0), _keys(1)
    loss.observe_teacher([t_1, t_2])
    torch.testing.assert_close(loss.queue, torch.cat([t_1, t_2, start[4:]]))


def test_enqueueing_after_the_loss_leaves_its_backward_pass_as_it_was():
    # The stage calls observe_teacher between the loss and backward(): the queue is replaced, not overwritten.
    loss = _loss(5, 8)
    online, target = views(6, 5)
    expected, = torch.autograd.grad(loss(online, target), online)
    value = loss(online, target)
    before = loss.queue
    loss.observe_teacher([target.detach(), target.detach()])
    assert loss.queue is not before and not torch.equal(loss.queue, before)
    got, = torch.autograd.grad(value, online)
    torch.testing.assert_close(got, expected)
    assert loss(online, target).item() != pytest.approx(value.item())  # the next step sees the new keys


def test_the_queue_and_its_position_are_state_that_checkpoints_hold():
    loss = MoCoV2Loss(embedding_dim=4, queue_size=6)
    loss.observe_teacher([torch.randn(4, 4), torch.randn(4, 4)])
    state = loss.state_dict()
    assert set(state) == {"queue", "position"}
    restored = MoCoV2Loss(embedding_dim=4, queue_size=6)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue, loss.queue) and int(restored.position) == 4


def test_keys_of_every_process_enter_the_queue_in_rank_order(monkeypatch):
    # Two ranks: distributed.gather concatenates every rank's keys (tests/distributed runs it for real).
    other = _keys(7)
    monkeypatch.setattr(moco_v2.distributed, "gather", lambda keys: torch.cat([keys, other]))
    loss = MoCoV2Loss(embedding_dim=3, queue_size=8).double()
    start, mine = loss.queue.clone(), _keys(3)
    loss.observe_teacher([mine, 2 * mine])
    torch.testing.assert_close(loss.queue, torch.cat([mine, other, start[4:]]))
    both = MoCoV2Loss(embedding_dim=3, queue_size=8, symmetric=True).double()
    both.observe_teacher([mine, _keys(4)])  # each view gathered on its own: view 1 of every rank, then view 2
    torch.testing.assert_close(both.queue, torch.cat([mine, other, _keys(4), other]))


def test_runs_in_float32_under_autocast():
    loss = _loss(64, 128, dtype=torch.float32)
    online, target = views(16, 64, torch.float32)
    expected = loss(online, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(online, target), expected)
        assert loss(online.bfloat16(), target.bfloat16()).dtype == torch.float32


def test_a_momentum_encoder_with_a_queue_learns_to_tell_its_samples_apart():
    # A linear encoder, its EMA copy as the key encoder, two noisy views of 64 fixed samples, batches of 16:
    # after a first pass fills the queue, the loss of each batch falls.
    torch.manual_seed(0)
    data = torch.randn(64, 10)
    online = torch.nn.Linear(10, 8)
    teacher = torch.nn.Linear(10, 8).requires_grad_(False)
    teacher.load_state_dict(online.state_dict())
    loss = MoCoV2Loss(embedding_dim=8, queue_size=32)
    optimiser = torch.optim.Adam(online.parameters(), lr=0.01)
    values = []
    for step in range(60):
        x = data[(step % 4) * 16:(step % 4 + 1) * 16]
        view_a, view_b = x + 0.3 * torch.randn_like(x), x + 0.3 * torch.randn_like(x)
        value = teacher_view_loss(loss, [online(view_a), online(view_b)], [teacher(view_a), teacher(view_b)],
                                  symmetric=loss.symmetric)
        loss.observe_teacher([teacher(view_a), teacher(view_b)])
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        with torch.no_grad():
            for xi, theta in zip(teacher.parameters(), online.parameters()):
                xi.lerp_(theta, 0.1)
        values.append(value.item())
    assert sum(values[-8:]) < 0.85 * sum(values[4:12]), values  # seeds 0-3 give 0.69, 0.70, 0.80 and 0.68


def test_flags_and_defaults():
    assert MoCoV2Loss.needs_teacher is True and MoCoV2Loss.needs_global_batch is False
    assert ViewLoss.symmetric is True  # every other teacher loss compares both directions
    loss = MoCoV2Loss(embedding_dim=4)
    assert (loss.queue_size, loss.temperature, loss.symmetric) == (65536, 0.2, False)
    assert loss.queue.shape == (65536, 4) and loss.queue.dtype == torch.float32
    torch.testing.assert_close(loss.queue.norm(dim=1), torch.ones(65536))  # random unit keys, as the official code
    assert MoCoV2Loss(embedding_dim=4, symmetric=True).symmetric is True


def test_queue_info_nce_is_the_loss_on_a_given_queue():
    online, target = views(6, 4)
    queue = _unit(9, 4, seed=1)
    assert queue_info_nce(online, target, queue, 0.2).item() == pytest.approx(
        _algorithm_1(online, target, queue, 0.2), rel=1e-12)


@pytest.mark.parametrize("symmetric", [False, True])
def test_conformance(symmetric):
    check_loss(MoCoV2Loss, {"queue_size": 64, "symmetric": symmetric})


def test_errors():
    loss = MoCoV2Loss(embedding_dim=4, queue_size=8)
    with pytest.raises(ValueError, match="^moco_v2: expected two .* of one shape"):
        loss(torch.randn(4, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="^moco_v2: views have D = 5 .* embedding_dim = 4"):
        loss(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match="^moco_v2: views have D = 5 .* embedding_dim = 4"):
        loss.observe_teacher([torch.randn(4, 5), torch.randn(4, 5)])
    for kwargs, key in (({"embedding_dim": 0}, "embedding_dim"), ({"queue_size": 0}, "queue_size"),
                        ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature")):
        with pytest.raises(ValueError, match=f"^moco_v2: {key} must"):
            MoCoV2Loss(**({"embedding_dim": 4} | kwargs))


# --- in the ssl_pretrain stage ------------------------------------------------------------------

def test_the_asymmetric_form_queries_with_the_first_view_and_each_local_view_against_both_keys():
    g = torch.Generator().manual_seed(7)
    o_a, o_b, t_a, t_b, l_1, l_2 = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(6))

    def one_way(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # loss(x, y) != loss(y, x)
        return (online - 2 * target).pow(2).mean()

    pairs = [(o_a, t_b), (l_1, t_a), (l_1, t_b), (l_2, t_a), (l_2, t_b)]  # o_b is no query
    torch.testing.assert_close(teacher_view_loss(one_way, [o_a, o_b], [t_a, t_b], [l_1, l_2], symmetric=False),
                               sum(one_way(o, t) for o, t in pairs) / 5)
    torch.testing.assert_close(teacher_view_loss(one_way, [o_a, o_b], [t_a, t_b], symmetric=False),
                               one_way(o_a, t_b))


MOCO = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    loss: {name: moco_v2, queue_size: 20}
    teacher_momentum: 0.9
    head: {name: mlp, dims: [16, 16]}
    batch_size: 8
    train: {epochs: 2, max_steps: 6, checkpoint_every: 2, log_every: 1}
""", name="moco_v2")


def _run(tmp_path: Path, name: str, text: str = MOCO) -> Path:
    return run_recipe_text(text, tmp_path, name)


@pytest.mark.parametrize("symmetric, calls", [(False, 1), (True, 2)])
def test_each_step_enqueues_the_keys_it_was_scored_with_after_its_loss(tmp_path: Path, monkeypatch, symmetric,
                                                                       calls):
    events: list[tuple] = []
    forward, observe = MoCoV2Loss.forward, MoCoV2Loss.observe_teacher

    def spy_forward(self, online, target):
        events.append(("loss", target.detach().clone(), self.queue.clone()))
        return forward(self, online, target)

    def spy_observe(self, teacher_views):
        events.append(("observe", [t.clone() for t in teacher_views], any(t.requires_grad for t in teacher_views)))
        observe(self, teacher_views)
        events.append(("queue", self.queue.clone()))

    monkeypatch.setattr(MoCoV2Loss, "forward", spy_forward)
    monkeypatch.setattr(MoCoV2Loss, "observe_teacher", spy_observe)
    text = MOCO.replace("queue_size: 20", f"queue_size: 20, symmetric: {str(symmetric).lower()}")
    run_dir = _run(tmp_path, "run", text.replace("max_steps: 6", "max_steps: 4"))
    assert [e[0] for e in events] == (["loss"] * calls + ["observe", "queue"]) * 4  # once per step, after the loss
    per_step = calls + 2
    for step in range(4):
        scored = events[step * per_step:(step + 1) * per_step]
        (_, teacher_views, graded), (_, queue) = scored[calls], scored[calls + 1]
        assert not graded
        assert torch.equal(scored[0][1], teacher_views[1])  # the first query's key: the second view's
        if symmetric:
            assert torch.equal(scored[1][1], teacher_views[0])
        keys = F.normalize(torch.cat(teacher_views if symmetric else teacher_views[1:]), dim=1)
        slots = (torch.arange(len(keys)) + step * len(keys)) % 20
        torch.testing.assert_close(queue[slots], keys)  # the step's keys, where the oldest were
        # the loss was scored against the queue before its own keys came in
        assert all(not torch.isclose(s[2], k).all(dim=1).any() for s in scored[:calls] for k in keys)
    saved = load_checkpoint(run_dir / "stages" / "pretrain" / "last.pt")["modules"]["loss"]
    assert torch.equal(saved["queue"], events[-1][1]) and int(saved["position"]) == 4 * 8 * calls % 20


def test_moco_v2_resumes_to_the_same_result(tmp_path: Path, monkeypatch) -> None:
    straight = _run(tmp_path, "straight")
    updates: list[float] = []

    def fails_once(teacher, online, momentum):
        updates.append(momentum)
        if len(updates) == 4:  # after step 4, before its checkpoint: the last one is step 2's
            raise RuntimeError("injected failure")
        update_teacher(teacher, online, momentum)

    monkeypatch.setattr(ssl_pretrain, "update_teacher", fails_once)
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(tmp_path, "broken")
    broken = tmp_path / "broken"
    run(None, resume=broken, device="cpu", console=lambda _: None)
    a = load_checkpoint(straight / "stages" / "pretrain" / "last.pt")
    b = load_checkpoint(broken / "stages" / "pretrain" / "last.pt")
    assert a["step"] == b["step"] == 6
    for module in ("encoder", "loss", "teacher"):
        for key in a["modules"][module]:
            assert torch.equal(a["modules"][module][key], b["modules"][module][key]), (module, key)
    log = [(row["step"], row["loss"]) for row in read_log(straight / "stages" / "pretrain" / "log.jsonl")]
    assert log == [(row["step"], row["loss"]) for row in read_log(broken / "stages" / "pretrain" / "log.jsonl")]


def test_a_tiny_moco_v2_run_lowers_its_loss(tmp_path: Path) -> None:
    # 48 words, batches of 16, a queue of 32 keys: full from step 3 on, when the random unit keys it started with,
    # easy negatives, are gone (the loss first rises towards log 33); the run is compared from there.
    text = MOCO.replace("queue_size: 20", "queue_size: 32").replace("batch_size: 8", "batch_size: 16").replace(
        "train: {epochs: 2, max_steps: 6, checkpoint_every: 2, log_every: 1}",
        "train: {epochs: 60, max_steps: 60, log_every: 1, optimizer: {name: AdamW, lr: 0.003}}")
    losses = [row["loss"] for row in read_log(_run(tmp_path, "run", text) / "stages" / "pretrain" / "log.jsonl")]
    assert len(losses) == 60
    assert sum(losses[-10:]) < 0.93 * sum(losses[3:13]), losses  # seeds 0 and 1 give 0.87 and 0.81
