"""CrossBatchMemoryLoss (XBM): against PML's CrossBatchMemory over steps that fill and wrap the queue, with miners
mining the batch against the memory and with enqueue_mask; by hand; state."""

import io
import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses, miners as pml_miners

from hvkit.api import MetricLoss
from hvkit.engine.context import build
from hvkit.registry import get_registry
from hvkit.testing import check_loss
from hvkit_plugins.losses.contrastive import ContrastiveLoss
from hvkit_plugins.losses.multi_similarity import MultiSimilarityLoss
from hvkit_plugins.losses.triplet import TripletLoss
from hvkit_plugins.miners.angular import AngularMiner
from hvkit_plugins.miners.batch_easy_hard import BatchEasyHardMiner
from hvkit_plugins.miners.batch_hard import BatchHardMiner
from hvkit_plugins.miners.distance_weighted import DistanceWeightedMiner
from hvkit_plugins.miners.hdc import HDCMiner
from hvkit_plugins.miners.multi_similarity import MultiSimilarityMiner
from hvkit_plugins.miners.pair_margin import PairMarginMiner
from hvkit_plugins.miners.pml import PMLMiner
from hvkit_plugins.miners.semi_hard import SemiHardMiner
from hvkit_plugins.miners.triplet_margin import TripletMarginMiner
from hvkit_plugins.miners.uniform_histogram import UniformHistogramMiner
from hvkit_plugins.samplers.xbm import CrossBatchMemoryLoss, losses_with_reference

DIM, MEMORY, BATCH, STEPS = 6, 20, 8, 6  # 20 is no multiple of 8: the third batch wraps mid-way


def batches(steps=STEPS, b=BATCH, d=DIM, classes=4, seed=0):
    """P x K-like batches (every label twice or more), float64, a new draw each step."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        labels = torch.randint(classes, (b // 2,), generator=g).repeat(2)
        yield torch.randn(b, d, generator=g, dtype=torch.float64), labels


def _value_and_grad(loss, x, y, **kwargs):
    x = x.clone().requires_grad_(True)
    value = loss(x, y, **kwargs)
    value.backward()
    return value.detach(), x.grad


LOSSES = {
    "contrastive": (lambda: ContrastiveLoss(), lambda: pml_losses.ContrastiveLoss()),
    "multi_similarity": (lambda: MultiSimilarityLoss(), lambda: pml_losses.MultiSimilarityLoss()),
    "triplet": (lambda: TripletLoss(0.2), lambda: pml_losses.TripletMarginLoss(0.2)),
}
MINERS = {  # hvkit's miner, mining the batch against the memory, and PML's counterpart
    None: (lambda: None, lambda: None),
    "multi_similarity": (lambda: MultiSimilarityMiner(), lambda: pml_miners.MultiSimilarityMiner()),
    "triplet_margin": (lambda: TripletMarginMiner(margin=0.3), lambda: pml_miners.TripletMarginMiner(margin=0.3)),
    "pair_margin": (lambda: PairMarginMiner(pos_margin=0.5, neg_margin=0.9),
                    lambda: pml_miners.PairMarginMiner(pos_margin=0.5, neg_margin=0.9)),
    "batch_hard": (lambda: BatchHardMiner(), lambda: pml_miners.BatchHardMiner()),
    "semi_hard": (lambda: SemiHardMiner(margin=0.5),
                  lambda: pml_miners.TripletMarginMiner(margin=0.5, type_of_triplets="semihard")),
    "angular": (lambda: AngularMiner(35.0, normalize=False), lambda: pml_miners.AngularMiner(35.0)),
    "hdc": (lambda: HDCMiner(0.3), lambda: pml_miners.HDCMiner(filter_percentage=0.3)),  # ranks all pairs at once
    "batch_easy_hard": (lambda: BatchEasyHardMiner(), lambda: pml_miners.BatchEasyHardMiner()),  # own copy easiest
    "uniform_histogram": (lambda: UniformHistogramMiner(num_bins=5, pos_per_bin=3, neg_per_bin=4),
                          lambda: pml_miners.UniformHistogramMiner(num_bins=5, pos_per_bin=3, neg_per_bin=4)),
    "pml": (lambda: PMLMiner("HDCMiner"), lambda: pml_miners.HDCMiner()),
}
SKIPPED = {("triplet", "batch_easy_hard")}  # every easy positive is the own copy: no triplet (see below)
CASES = {f"{loss}+{miner}" if miner else loss: (loss, miner) for loss in LOSSES for miner in MINERS
         if (loss, miner) not in SKIPPED
         and (miner is None or loss != "multi_similarity" or miner in ("multi_similarity", "batch_easy_hard", "pml"))}


def _steps(ours, pml, data, **kwargs):
    """Both over the same steps, each under the same torch seed: (value, gradient) pairs, one a step."""
    for step, (x, y, *mask) in enumerate(data):
        extra = {**kwargs, **({"enqueue_mask": mask[0]} if mask else {})}
        torch.manual_seed(step)
        first = _value_and_grad(ours, x, y, **extra)
        torch.manual_seed(step)
        yield step, first, _value_and_grad(pml, x, y, **extra)


@pytest.mark.parametrize("case", list(CASES))
def test_value_and_gradient_equal_pml_cross_batch_memory_over_steps(case):
    loss, miner = CASES[case]
    ours = CrossBatchMemoryLoss(LOSSES[loss][0](), DIM, MEMORY, miner=MINERS[miner][0]()).double()
    pml = pml_losses.CrossBatchMemory(LOSSES[loss][1](), DIM, memory_size=MEMORY, miner=MINERS[miner][1]())
    nonzero = 0
    for step, (a, grad_a), (b, grad_b) in _steps(ours, pml, batches()):
        torch.testing.assert_close(a, b, msg=lambda m: f"{case} step {step}: {m}")
        torch.testing.assert_close(grad_a, grad_b, msg=lambda m: f"{case} step {step} gradient: {m}")
        nonzero += bool(a)
    assert nonzero >= STEPS - 1  # the comparison is not between zeros
    assert torch.equal(ours.memory, pml.embedding_memory) and torch.equal(ours.memory_labels, pml.label_memory)


def test_an_anchors_own_copy_is_its_easiest_positive_and_dropped_as_in_pml():
    ours = CrossBatchMemoryLoss(TripletLoss(0.2), DIM, MEMORY, miner=BatchEasyHardMiner("easy", "hard")).double()
    pml = pml_losses.CrossBatchMemory(pml_losses.TripletMarginLoss(0.2), DIM, memory_size=MEMORY,
                                      miner=pml_miners.BatchEasyHardMiner("easy", "hard"))
    for _, (a, grad_a), (b, grad_b) in _steps(ours, pml, batches()):
        assert a == b == 0 and not grad_a.any() and not grad_b.any()
    x, y = next(batches(seed=1))
    slots = ours.enqueue(x, y)
    a1, p, a2, n = ours.pairs(x, y, ours.memory, ours.memory_labels, slots)
    assert len(a1) == 0 and len(a2) == BATCH  # the negatives stay
    hard = CrossBatchMemoryLoss(TripletLoss(0.2), DIM, MEMORY, miner=BatchEasyHardMiner("hard", "hard")).double()
    assert hard(x, y) > 0


class Legacy:
    """A miner written for plugin API 1.3: ``miner(embeddings, labels)`` only, no accepts_reference."""

    def __init__(self, miner):
        self.miner = miner

    def __call__(self, embeddings, labels):
        return self.miner(embeddings, labels)


@pytest.mark.parametrize("miner, pml_miner", [
    (lambda: TripletMarginMiner(margin=0.3), lambda: pml_miners.TripletMarginMiner(margin=0.3)),
    (lambda: PairMarginMiner(pos_margin=0.5, neg_margin=0.9),
     lambda: pml_miners.PairMarginMiner(pos_margin=0.5, neg_margin=0.9)),
])
def test_a_miner_without_a_reference_set_mines_the_memory_alone_equal_for_pairwise_miners(miner, pml_miner):
    ours = CrossBatchMemoryLoss(ContrastiveLoss(), DIM, MEMORY, miner=Legacy(miner())).double()
    pml = pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(), DIM, memory_size=MEMORY, miner=pml_miner())
    for step, (a, grad_a), (b, grad_b) in _steps(ours, pml, batches()):
        torch.testing.assert_close(a, b, msg=lambda m: f"step {step}: {m}")
        torch.testing.assert_close(grad_a, grad_b, msg=lambda m: f"step {step} gradient: {m}")
        assert a > 0


def test_a_miner_without_a_reference_set_sees_the_memory_a_ranking_miner_differs():
    seen = []
    ours = CrossBatchMemoryLoss(ContrastiveLoss(), DIM, MEMORY, miner=Legacy(HDCMiner(0.3))).double()
    ours.miner.miner.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    new = CrossBatchMemoryLoss(ContrastiveLoss(), DIM, MEMORY, miner=HDCMiner(0.3)).double()
    differs = [not torch.equal(ours(x, y), new(x, y)) for x, y in batches()]
    assert seen == [8, 16, 20, 20, 20, 20] and any(differs)  # F x F mining, so another top 30%


def enqueue_batches(steps=STEPS, b=BATCH, d=DIM, classes=4, seed=0):
    """MoCo-like steps: B query rows and B key rows of the same labels, keys masked for the queue; or a random mask."""
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        labels = torch.randint(classes, (b,), generator=g)
        x = torch.randn(2 * b, d, generator=g, dtype=torch.float64)
        mask = torch.arange(2 * b) >= b if step % 2 == 0 else torch.rand(2 * b, generator=g) < 0.4
        yield x, labels.repeat(2), mask


@pytest.mark.parametrize("loss, miner", [("contrastive", None), ("multi_similarity", None), ("triplet", None),
                                         ("multi_similarity", "multi_similarity"), ("contrastive", "batch_hard"),
                                         ("triplet", "pair_margin"), ("contrastive", "batch_easy_hard"),
                                         ("contrastive", "hdc"), ("triplet", "uniform_histogram")])
def test_enqueue_mask_equals_pml_over_steps(loss, miner):
    ours = CrossBatchMemoryLoss(LOSSES[loss][0](), DIM, MEMORY, miner=MINERS[miner][0]()).double()
    pml = pml_losses.CrossBatchMemory(LOSSES[loss][1](), DIM, memory_size=MEMORY, miner=MINERS[miner][1]())
    data = list(enqueue_batches())
    for step, (a, grad_a), (b, grad_b) in _steps(ours, pml, data):
        torch.testing.assert_close(a, b, msg=lambda m: f"step {step}: {m}")
        torch.testing.assert_close(grad_a, grad_b, msg=lambda m: f"step {step} gradient: {m}")
        assert a > 0 and not grad_a[data[step][2]].any()  # the enqueued rows get no gradient
    assert torch.equal(ours.memory, pml.embedding_memory) and torch.equal(ours.memory_labels, pml.label_memory)
    assert int(ours.enqueued) == sum(int(mask.sum()) for _, _, mask in data)


def test_enqueue_mask_anchors_meet_their_own_key_and_only_keys_are_stored():
    seen = []
    inner = ContrastiveLoss(0.0, 1.0)
    inner.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    xbm = CrossBatchMemoryLoss(inner, embedding_dim=2, memory_size=4).double()
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    keys = torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    value = xbm(torch.cat([queries, keys]), labels, enqueue_mask=torch.tensor([False, False, True, True]))
    (anchors, anchor_labels, (a1, p, a2, n)), reference = seen[-1]
    assert torch.equal(anchors, queries) and anchor_labels.tolist() == [0, 1]
    assert torch.equal(xbm.memory[:2], keys) and int(xbm.enqueued) == 2 and torch.equal(reference["ref_emb"], keys)
    assert list(zip(a1.tolist(), p.tolist())) == [(0, 0), (1, 1)]  # each query with its own key: nothing dropped
    # positives sqrt(0.8) apart, negatives sqrt(0.4) < 1
    assert value.item() == pytest.approx(math.sqrt(0.8) + 2 * (1 - math.sqrt(0.4)) / 2, rel=1e-12)


def test_enqueue_mask_during_warm_up_pairs_the_anchors_with_this_batchs_keys_and_stores_nothing():
    x, y, mask = next(enqueue_batches())
    xbm = CrossBatchMemoryLoss(ContrastiveLoss(), DIM, MEMORY, miner=BatchHardMiner(), start_step=1).double()
    value = xbm(x, y, enqueue_mask=mask)
    mined = BatchHardMiner()(x[~mask], y[~mask], ref_emb=x[mask], ref_labels=y[mask])
    expected = ContrastiveLoss()(x[~mask], y[~mask], mined, ref_emb=x[mask], ref_labels=y[mask])
    assert torch.equal(value, expected) and int(xbm.enqueued) == 0 and not xbm.memory.any()


def test_distance_weighted_mines_the_batch_against_the_memory_without_own_copies():
    seen = []
    xbm = CrossBatchMemoryLoss(TripletLoss(0.2), DIM, MEMORY, miner=DistanceWeightedMiner(0.3, 1.9)).double()
    xbm.loss.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[2]), with_kwargs=True)
    data = list(batches(3))
    for x, y in data:
        xbm(x, y)
    a, p, n = seen[-1]
    own = (2 * BATCH + torch.arange(BATCH)) % MEMORY
    y = data[-1][1]
    assert a.max() < BATCH and p.max() >= BATCH and not (p == own[a]).any()
    assert (y[a] == xbm.memory_labels[p]).all() and (y[a] != xbm.memory_labels[n]).all()
    same = (y[:, None] == xbm.memory_labels[None, :]).sum()
    assert len(a) == same - BATCH  # every (anchor, memory positive) pair once, but the own copy


@pytest.mark.parametrize("mask, message", [
    (torch.ones(BATCH, dtype=torch.bool), "leaving no anchor"),
    (torch.zeros(BATCH), "bool tensor of shape \\(8,\\), one flag a row, got torch.float32 of shape \\(8,\\)"),
    (torch.zeros(BATCH - 1, dtype=torch.bool), "got torch.bool of shape \\(7,\\)"),
    ([True] * BATCH, "got list"),
])
def test_bad_enqueue_masks_raise(mask, message):
    xbm = CrossBatchMemoryLoss(ContrastiveLoss(), DIM, MEMORY)
    with pytest.raises(ValueError, match="^xbm: .*" + message):
        xbm(torch.randn(BATCH, DIM), torch.arange(BATCH) % 4, enqueue_mask=mask)
    assert int(xbm.enqueued) == 0 and int(xbm.steps) == 0


def test_enqueue_mask_needs_a_miner_taking_a_reference_set():
    xbm = CrossBatchMemoryLoss(ContrastiveLoss(), DIM, MEMORY, miner=Legacy(PairMarginMiner()))
    with pytest.raises(ValueError, match="^xbm: enqueue_mask needs a miner that accepts a reference set"):
        xbm(torch.randn(BATCH, DIM), torch.arange(BATCH) % 4, enqueue_mask=torch.arange(BATCH) >= 4)
    too_many = CrossBatchMemoryLoss(ContrastiveLoss(), DIM, memory_size=4)
    with pytest.raises(ValueError, match="a batch of 5 embeddings to enqueue does not fit memory_size 4"):
        too_many(torch.randn(BATCH, DIM), torch.arange(BATCH) % 4, enqueue_mask=torch.arange(BATCH) >= 3)
    assert too_many(torch.randn(BATCH, DIM), torch.arange(BATCH) % 4, enqueue_mask=torch.arange(BATCH) >= 4) >= 0


def test_multi_similarity_averages_over_the_batch_anchors_unscaled():
    x, y = next(batches())
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(), DIM, MEMORY).double()
    xbm(x, y)  # after the next call the memory holds this batch twice: 8 anchors, 16 partners
    seen = []
    xbm.loss.register_forward_hook(lambda module, args, out: seen.append(out))
    value = xbm(x, y)
    assert torch.equal(value, seen[0])
    pairs = xbm.pairs(x, y, xbm.memory[:16], xbm.memory_labels[:16], torch.arange(8, 16))
    assert value.item() == pytest.approx(MultiSimilarityLoss()(x, y, pairs, ref_emb=xbm.memory[:16],
                                                               ref_labels=xbm.memory_labels[:16]).item())


def test_hand_computed_contrastive_on_two_steps():
    xbm = CrossBatchMemoryLoss(ContrastiveLoss(0.0, 1.0), embedding_dim=2, memory_size=4).double()
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    # First step: the memory is the batch; each anchor's only positive is its own copy, skipped,
    # and the one negative is sqrt(2) > 1 away.
    assert xbm(first, labels).item() == 0.0
    a = torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64, requires_grad=True)
    value = xbm(a, labels)
    # Positives (a0, first0) and (a1, first1), both sqrt(0.8) apart; negatives (a0, first1) and
    # (a1, first0) at sqrt(0.4), (a0, a1) and (a1, a0) at sqrt(0.08): every term non-zero.
    expected = math.sqrt(0.8) + (2 * (1 - math.sqrt(0.4)) + 2 * (1 - math.sqrt(0.08))) / 4
    assert value.item() == pytest.approx(expected, rel=1e-12)
    value.backward()
    # Only the anchor side carries gradient: d/da0 of |a0 - f0| / 2 - (|a0 - f1| + |a0 - a1'|) / 4, a1'
    # the stored copy; a0 is a unit vector, so the normalisation removes the gradient's radial part.
    a0, a1 = a[0].detach(), a[1].detach()
    unit = [(a0 - r) / (a0 - r).norm() for r in (first[0], first[1], a1)]
    direct = unit[0] / 2 - (unit[1] + unit[2]) / 4
    torch.testing.assert_close(a.grad[0], direct - (direct @ a0) * a0)


def test_inner_loss_gets_the_batch_as_anchors_the_memory_as_reference_and_no_own_copy():
    seen = []
    inner = ContrastiveLoss()
    inner.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    xbm = CrossBatchMemoryLoss(inner, DIM, MEMORY).double()
    data = list(batches(3))
    for x, y in data:
        xbm(x, y)
    (embeddings, labels, (a1, p, a2, n)), reference = seen[-1]
    assert torch.equal(embeddings, data[-1][0]) and torch.equal(labels, data[-1][1])
    assert torch.equal(reference["ref_emb"], xbm.memory) and not reference["ref_emb"].requires_grad
    assert torch.equal(reference["ref_labels"], xbm.memory_labels)
    assert a1.max() < BATCH and a2.max() < BATCH and p.max() < MEMORY and n.max() < MEMORY
    own_copy = (2 * BATCH + torch.arange(BATCH)) % MEMORY
    assert not (p == own_copy[a1]).any()
    assert (labels[a1] == xbm.memory_labels[p]).all() and (labels[a2] != xbm.memory_labels[n]).all()
    # every other pair is there: positives of all memory rows of the same label but the own copy
    same = (labels[:, None] == xbm.memory_labels[None, :]).sum()
    assert len(a1) == same - BATCH and len(a2) == BATCH * MEMORY - same


def test_queue_is_fifo_after_wrap_around():
    xbm = CrossBatchMemoryLoss(ContrastiveLoss(), embedding_dim=1, memory_size=5)
    for step in range(4):  # pushes 0..7 of value k and label k
        xbm(torch.tensor([[2.0 * step], [2.0 * step + 1]]), torch.tensor([2 * step, 2 * step + 1]))
    # slots 0-2 hold pushes 5, 6, 7 (written after the wrap), slots 3-4 the older pushes 3, 4
    assert xbm.memory.squeeze(1).tolist() == [5.0, 6.0, 7.0, 3.0, 4.0]
    assert xbm.memory_labels.tolist() == [5, 6, 7, 3, 4]
    assert int(xbm.enqueued) == 8 and int(xbm.steps) == 4


def test_partly_filled_memory_uses_only_written_entries():
    seen = []
    xbm = CrossBatchMemoryLoss(ContrastiveLoss(), DIM, MEMORY)
    xbm.loss.register_forward_pre_hook(lambda module, args, kwargs: seen.append(len(kwargs["ref_emb"])),
                                       with_kwargs=True)
    for x, y in batches(3):
        xbm(x.float(), y)
    assert seen == [BATCH, 2 * BATCH, MEMORY]


def test_state_dict_round_trip_resumes_identically():
    data = list(batches(STEPS))
    run = CrossBatchMemoryLoss(MultiSimilarityLoss(), DIM, MEMORY, miner=MultiSimilarityMiner()).double()
    for x, y in data[:3]:
        run(x, y)
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)
    buffer.seek(0)
    resumed = CrossBatchMemoryLoss(MultiSimilarityLoss(), DIM, MEMORY, miner=MultiSimilarityMiner()).double()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert set(run.state_dict()) == {"memory", "memory_labels", "enqueued", "steps"}
    fresh = CrossBatchMemoryLoss(MultiSimilarityLoss(), DIM, MEMORY, miner=MultiSimilarityMiner()).double()
    differs = []
    for x, y in data[3:]:
        a, b, c = run(x, y), resumed(x, y), fresh(x, y)
        assert torch.equal(a, b)
        differs.append(not torch.equal(a, c))
    assert differs[:2] == [True, True]  # the memory matters: a fresh one gives other values until it fills
    assert torch.equal(run.memory, resumed.memory)


def test_start_step_warms_up_on_the_batch_alone():
    data = list(batches(3))
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(), DIM, MEMORY, start_step=2).double()
    for x, y in data[:2]:
        assert torch.equal(xbm(x, y), MultiSimilarityLoss()(x, y))
    assert int(xbm.enqueued) == 0 and not xbm.memory.any()
    x, y = data[2]
    xbm(x, y)
    assert int(xbm.enqueued) == BATCH and torch.equal(xbm.memory[:BATCH], x)


def test_is_a_metric_loss_needing_the_global_batch():
    xbm = CrossBatchMemoryLoss(ContrastiveLoss(), DIM)
    assert isinstance(xbm, MetricLoss) and xbm.needs_global_batch


def test_built_from_a_recipe_spec_with_its_context():
    xbm = build(get_registry(), "loss", {"name": "xbm", "loss": "contrastive", "miner": "multi_similarity",
                                         "memory_size": 64}, embedding_dim=DIM, num_classes=4)
    assert isinstance(xbm.loss, ContrastiveLoss) and xbm.memory.shape == (64, DIM)


@pytest.mark.parametrize("name", ["proxy_anchor", "proxy_nca", "soft_triple", "arcface", "cosface",
                                  "subcenter_arcface", "sphereface", "nbc_softmax", "contra_x", "ntxent", "vicreg",
                                  "lifted_structure", "margin", "npairs"])
def test_losses_without_a_reference_set_are_refused(name):
    if name not in get_registry().names("loss"):
        pytest.skip(f"{name} is not registered")
    if getattr(get_registry().get("loss", name).factory, "accepts_reference", False):
        pytest.skip(f"{name} accepts a reference set now")
    accepting = ", ".join(losses_with_reference())  # each checked in tests/losses/test_reference_sets.py
    assert {"contrastive", "generalized_lifted_structure"} <= set(losses_with_reference())
    with pytest.raises(ValueError, match=rf"^xbm: \w+ takes no reference set .*: {accepting}$"):
        build(get_registry(), "loss", {"name": "xbm", "loss": name}, embedding_dim=DIM, num_classes=4)


def test_a_third_party_loss_is_accepted_by_its_declaration_alone():
    class Declared(ContrastiveLoss):
        pass

    class Undeclared(ContrastiveLoss):
        accepts_reference = False

    CrossBatchMemoryLoss(Declared(), DIM)
    with pytest.raises(ValueError, match="^xbm: Undeclared takes no reference set"):
        CrossBatchMemoryLoss(Undeclared(), DIM)


@pytest.mark.parametrize("name", ["circle", "generalized_lifted_structure", "supcon"])
def test_the_other_reference_losses_equal_pml_cross_batch_memory(name):
    ours_loss = get_registry().get("loss", name).factory()
    pml_loss = {"circle": pml_losses.CircleLoss, "supcon": pml_losses.SupConLoss,
                "generalized_lifted_structure": pml_losses.GeneralizedLiftedStructureLoss}[name]()
    ours = CrossBatchMemoryLoss(ours_loss, DIM, MEMORY).double()
    pml = pml_losses.CrossBatchMemory(pml_loss, DIM, memory_size=MEMORY)
    for step, (x, y) in enumerate(batches()):
        (a, grad_a), (b, grad_b) = _value_and_grad(ours, x, y), _value_and_grad(pml, x, y)
        torch.testing.assert_close(a, b, msg=lambda m: f"{name} step {step}: {m}")
        torch.testing.assert_close(grad_a, grad_b, msg=lambda m: f"{name} step {step} gradient: {m}")
        assert a > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(memory_size=0), "memory_size must be > 0"),
    (dict(memory_size=-3), "memory_size must be > 0"),
    (dict(start_step=-1), "start_step"),
    (dict(embedding_dim=0), "embedding_dim"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrossBatchMemoryLoss(**{"loss": ContrastiveLoss(), "embedding_dim": DIM, **kwargs})


def test_bad_inputs_raise():
    xbm = CrossBatchMemoryLoss(ContrastiveLoss(), DIM, memory_size=4)
    with pytest.raises(ValueError, match="does not fit memory_size 4"):
        xbm(torch.randn(5, DIM), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        xbm(torch.randn(4, DIM + 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="own miner"):
        xbm(torch.randn(4, DIM), torch.tensor([0, 0, 1, 1]), (torch.tensor([0]), torch.tensor([1]),
                                                               torch.tensor([2])))
    assert int(xbm.enqueued) == 0  # nothing stored by a refused call


@pytest.mark.parametrize("miner", [None, "multi_similarity"])
def test_conforms_to_the_loss_contract(miner):
    check_loss(CrossBatchMemoryLoss, {"loss": "multi_similarity", "miner": miner})
