"""Multi-similarity: value and gradient against PML's miner + loss (with a reference set too), given tuples,
gradcheck, edges, errors."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses, miners as pml_miners

from hvkit.testing import check_loss
from hvkit_plugins.losses.multi_similarity import MultiSimilarityLoss

from .pair_batch import ALL_PAIRS_BUT_SELF, LABELS, REF_LABELS, REF_TUPLES, assert_same_value_and_gradients, reference


def _batch(n: int = 12, d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_()


def _pml(x: torch.Tensor, labels: torch.Tensor, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
         epsilon: float | None = 0.1, indices_tuple: tuple | None = None) -> torch.Tensor:
    if epsilon is not None:
        indices_tuple = pml_miners.MultiSimilarityMiner(epsilon=epsilon)(x, labels)
    return pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)(x, labels, indices_tuple)


def _assert_same_value_and_gradient(ours: torch.Tensor, reference: torch.Tensor, x: torch.Tensor) -> None:
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(reference, x)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mining_equals_pml_miner_then_loss(dtype, epsilon, seed):
    x = _batch(dtype=dtype, seed=seed)
    _assert_same_value_and_gradient(MultiSimilarityLoss(epsilon=epsilon)(x, LABELS),
                                    _pml(x, LABELS, epsilon=epsilon), x)


@pytest.mark.parametrize(("alpha", "beta", "base"), [(2.0, 40.0, 0.5), (1.0, 10.0, 0.3)])
def test_without_mining_equals_pml_loss_on_all_pairs(alpha, beta, base):
    x = _batch()
    ours = MultiSimilarityLoss(alpha=alpha, beta=beta, base=base, mining=False)(x, LABELS)
    _assert_same_value_and_gradient(ours, _pml(x, LABELS, alpha, beta, base, epsilon=None), x)
    assert ours.item() != pytest.approx(MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)(x, LABELS).item())


@pytest.mark.parametrize("indices_tuple", [
    (torch.tensor([0, 3, 5]), torch.tensor([3, 8, 6]), torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 0, 11])),
    (torch.tensor([0, 1, 2]), torch.tensor([8, 5, 10]), torch.tensor([4, 4, 9])),
])
def test_a_given_tuple_replaces_the_mining(indices_tuple):
    x = _batch()
    _assert_same_value_and_gradient(MultiSimilarityLoss()(x, LABELS, indices_tuple),
                                    _pml(x, LABELS, epsilon=None, indices_tuple=indices_tuple), x)


@pytest.mark.parametrize(("epsilon", "indices_tuple"), [(0.1, None), (0.5, None), (None, None),
                                                     *((None, t) for t in REF_TUPLES)])
def test_reference_set_value_and_gradient_equal_pml(epsilon, indices_tuple):
    """The mining (epsilon; None: no mining) or the given tuple over batch x reference, as PML's miner and loss."""
    x, r = _batch(), reference()
    if epsilon is not None:
        indices_tuple = pml_miners.MultiSimilarityMiner(epsilon=epsilon)(x, LABELS, r, REF_LABELS)
        ours = MultiSimilarityLoss(epsilon=epsilon)(x, LABELS, ref_emb=r, ref_labels=REF_LABELS)
    else:
        ours = MultiSimilarityLoss(mining=False)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    pml = pml_losses.MultiSimilarityLoss()(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    assert ours.item() > 0
    assert_same_value_and_gradients(ours, pml, (x, r))


def test_a_given_tuple_replaces_the_mining_even_with_the_batch_as_its_own_reference():
    """So the batch as its own reference with every pair but self is the plain loss with ``mining=False`` only
    (test_reference_sets.py)."""
    x, mined = _batch(), MultiSimilarityLoss()
    assert mined(x, LABELS, ALL_PAIRS_BUT_SELF, ref_emb=x, ref_labels=LABELS).item() != \
        pytest.approx(mined(x, LABELS).item())


def test_gradcheck():
    x = _batch()
    assert torch.autograd.gradcheck(lambda x: MultiSimilarityLoss(beta=10.0)(x, LABELS), (x,))


@pytest.mark.parametrize("labels", [[3] * 12, list(range(12))])
def test_batches_without_negatives_or_positives_give_zero(labels):
    x = _batch()
    loss = MultiSimilarityLoss()(x, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_all_equal_embeddings_give_a_finite_value_and_gradient():
    x = torch.ones(12, 6, requires_grad=True)
    loss = MultiSimilarityLoss()(x, LABELS)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("params", [{}, {"mining": False}])
def test_conforms_on_edge_batches(params):
    check_loss(MultiSimilarityLoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"alpha": 0.0}, "alpha"), ({"beta": -1.0}, "beta"), ({"epsilon": -0.1}, "epsilon"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiSimilarityLoss(**kwargs)
