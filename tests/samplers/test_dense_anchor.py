"""DenseAnchorLoss (DAS): produced embeddings, class statistics, and what the wrapped loss sees."""

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

from hvkit.api import MetricLoss
from hvkit.testing import check_loss
from hvkit_plugins.losses.adaface import AdaFaceLoss
from hvkit_plugins.samplers.dense_anchor import DenseAnchorLoss


class Spy(torch.nn.Module):
    """A loss or miner that records what it is called with."""

    def __init__(self, result=None):
        super().__init__()
        self.calls = []
        self.result = result

    def forward(self, *args):
        self.calls.append(args)
        return self.result if self.result is not None else args[0].sum()


def batch(b=8, d=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.arange(b) % classes


def test_is_a_metric_loss():
    assert isinstance(DenseAnchorLoss(Spy(), num_classes=4, embedding_dim=16), MetricLoss)


def test_loss_receives_real_then_produced_embeddings_with_repeated_labels():
    spy = Spy()
    das = DenseAnchorLoss(spy, num_classes=4, embedding_dim=16)
    x, y = batch()
    x.requires_grad_(True)
    das(x, y)
    (embeddings, labels, indices), = spy.calls
    assert embeddings.shape == (32, 16) and indices is None
    assert torch.equal(labels, y.repeat(4))
    assert torch.equal(embeddings[:8], x)
    assert torch.allclose(embeddings[8:].norm(dim=1), torch.ones(24))


def test_produced_embeddings_are_detached():
    spy = Spy()
    das = DenseAnchorLoss(spy, num_classes=4, embedding_dim=16)
    x, y = batch()
    x.requires_grad_(True)
    das(x, y).backward()
    embeddings = spy.calls[0][0]
    assert embeddings.requires_grad
    assert not das.produce(x, y).requires_grad
    assert torch.equal(x.grad, torch.ones_like(x))  # d(sum)/dx through the real rows only


def test_passes_an_outside_indices_tuple_without_a_miner_and_refuses_both():
    spy = Spy()
    x, y = batch()
    indices = (torch.tensor([0]), torch.tensor([4]), torch.tensor([1]))
    DenseAnchorLoss(spy, num_classes=4, embedding_dim=16)(x, y, indices)
    assert spy.calls[0][2] is indices
    with pytest.raises(ValueError, match="one place"):
        DenseAnchorLoss(spy, num_classes=4, embedding_dim=16, miner=Spy())(x, y, indices)


def test_miner_and_loss_see_the_augmented_batch_with_pml_components():
    torch.manual_seed(0)
    x, y = batch(b=12, d=16, classes=3)
    loss, miner = losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()
    seen = []
    loss.register_forward_pre_hook(lambda module, args: seen.append(args))
    das = DenseAnchorLoss(loss, num_classes=3, embedding_dim=16, miner=miner)
    value = das(x, y)
    embeddings, labels, indices = seen[0]
    assert embeddings.shape == (48, 16)
    expected_indices = miners.MultiSimilarityMiner()(embeddings, labels)
    assert all(torch.equal(a, b) for a, b in zip(indices, expected_indices))
    assert (indices[0] >= 12).any()
    expected = losses.MultiSimilarityLoss()(embeddings, labels, expected_indices)
    assert torch.allclose(value, expected)


def test_channel_counts_accumulate_each_embeddings_top_k_channels():
    das = DenseAnchorLoss(Spy(), num_classes=2, embedding_dim=6, top_k=2)
    x = torch.tensor([[0.0, 0.1, 5.0, 0.2, 0.3, 4.0],
                      [0.1, 0.0, 3.0, 0.2, 2.0, 0.3],
                      [9.0, 8.0, 0.0, 0.0, 0.0, 0.0]])
    das(x, torch.tensor([0, 0, 1]))
    das(x[:1], torch.tensor([0]))
    assert das.channel_counts.tolist() == [[0, 0, 3, 0, 1, 2], [1, 1, 0, 0, 0, 0]]


def test_scaling_touches_only_the_class_frequent_channels():
    torch.manual_seed(1)
    das = DenseAnchorLoss(Spy(), num_classes=1, embedding_dim=6, top_k=2, scale_range=0.5,
                          shift_scale=0.0, num_produce=5)
    history = torch.tensor([[0.1, 0.2, 5.0, 0.3, 0.4, 4.0]] * 3)
    das(history, torch.zeros(3, dtype=torch.long))
    x = torch.tensor([[6.0, 5.0, 1.0, 1.5, 2.0, 1.0]])  # its own top channels are 0 and 1
    produced = das.produce(x, torch.zeros(1, dtype=torch.long))
    ratio = produced / x
    other = ratio[:, [0, 1, 3, 4]]
    assert torch.allclose(other, other[:, :1].expand_as(other))
    gamma = ratio[:, [2, 5]] / other[:, :1]
    assert ((gamma >= 0.5) & (gamma <= 1.5)).all()
    assert (gamma - 1).abs().min() > 1e-4


def test_bank_is_a_fifo_of_within_class_differences():
    das = DenseAnchorLoss(Spy(), num_classes=3, embedding_dim=4, bank_size=4)
    y = torch.tensor([0, 0, 1, 2])
    steps = [torch.randn(4, 4) for _ in range(3)]
    for x in steps:
        das(x, y)
    newest = [steps[1][0] - steps[1][1], steps[1][1] - steps[1][0],
              steps[2][0] - steps[2][1], steps[2][1] - steps[2][0]]
    assert das.bank_pushed.tolist() == [6, 0, 0]
    assert torch.allclose(das.bank[0], torch.stack([newest[2], newest[3], newest[0], newest[1]]))
    assert not das.bank[1:].any()


def test_bank_keeps_the_last_pairs_of_a_large_class_and_skips_zero_differences():
    das = DenseAnchorLoss(Spy(), num_classes=2, embedding_dim=3, top_k=2, bank_size=4)
    x = torch.randn(3, 3)
    das(torch.cat([x, x[:1]]), torch.tensor([0, 0, 0, 1]))
    das(torch.cat([x[:1], x[:1]]), torch.tensor([1, 1]))
    last_four = [x[1] - x[0], x[1] - x[2], x[2] - x[0], x[2] - x[1]]  # pushes 2..5 of 0..5
    assert das.bank_pushed.tolist() == [6, 0]
    assert torch.allclose(das.bank[0], torch.stack(last_four[2:] + last_four[:2]))


def test_shift_adds_a_scaled_entry_of_the_class_bank():
    torch.manual_seed(2)
    das = DenseAnchorLoss(Spy(), num_classes=2, embedding_dim=5, scale_range=0.0,
                          shift_scale=0.5, num_produce=6)
    x, y = torch.randn(4, 5), torch.tensor([0, 0, 1, 1])
    produced = das.produce(x, y).reshape(6, 4, 5)
    for b in range(4):
        candidates = F.normalize(x[b] + 0.5 * das.bank[y[b], :2], dim=1)
        for t in range(6):
            assert torch.isclose(candidates, produced[t, b]).all(dim=1).any()


def test_empty_bank_shifts_nothing():
    das = DenseAnchorLoss(Spy(), num_classes=2, embedding_dim=5, scale_range=0.0)
    x = torch.randn(2, 5)
    produced = das.produce(x, torch.tensor([0, 1]))
    assert torch.allclose(produced, F.normalize(x, dim=1).repeat(3, 1))


def test_state_is_in_buffers_and_reproducible():
    das = DenseAnchorLoss(Spy(), num_classes=4, embedding_dim=16)
    x, y = batch()
    das(x, y)
    restored = DenseAnchorLoss(Spy(), num_classes=4, embedding_dim=16)
    restored.load_state_dict(das.state_dict())
    torch.manual_seed(7)
    first = das.produce(x, y)
    torch.manual_seed(7)
    assert torch.equal(first, restored.produce(x, y))


def test_needs_global_batch_and_reads_norms_follow_the_wrapped_loss():
    class Global(Spy):
        needs_global_batch = True

    assert DenseAnchorLoss(Global(), num_classes=2, embedding_dim=4).needs_global_batch
    assert not DenseAnchorLoss(Spy(), num_classes=2, embedding_dim=4).needs_global_batch
    assert DenseAnchorLoss(AdaFaceLoss(4, 2), num_classes=2, embedding_dim=4).reads_norms
    assert not DenseAnchorLoss(Spy(), num_classes=2, embedding_dim=4).reads_norms


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_produce=0), "num_produce"),
    (dict(top_k=17), "top_k"),
    (dict(bank_size=0), "bank_size"),
    (dict(scale_range=1.0), "scale_range"),
    (dict(shift_scale=-0.1), "shift_scale"),
    (dict(num_classes=0), "num_classes"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DenseAnchorLoss(Spy(), **{"num_classes": 4, "embedding_dim": 16, **kwargs})


def test_bad_inputs_raise():
    das = DenseAnchorLoss(Spy(), num_classes=4, embedding_dim=16)
    with pytest.raises(ValueError, match="shape"):
        das(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        das(torch.randn(2, 16), torch.tensor([0, 4]))


@pytest.mark.parametrize("miner", [None, miners.MultiSimilarityMiner()])
def test_conforms_to_the_loss_contract(miner):
    check_loss(DenseAnchorLoss, {"loss": losses.MultiSimilarityLoss(), "miner": miner})
