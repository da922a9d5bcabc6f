"""SupCon: value and gradient against pytorch-metric-learning (with and without mined pairs), formula."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit_plugins.losses.supcon import SupConLoss

from . import pair_batch


def _batch(n: int, d: int, dtype: torch.dtype, labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n + d)
    return torch.randn(n, d, generator=g, dtype=dtype).requires_grad_(), torch.tensor(labels)


def _paper(embeddings: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    """Khosla et al. 2020, Eq. 2 (L_out), averaged over the anchors with a positive."""
    z = torch.nn.functional.normalize(embeddings.detach().double(), dim=1)
    n = z.shape[0]
    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(z[i] @ z[a] / tau) for a in range(n) if a != i)
        per_anchor.append(-sum(math.log(math.exp(z[i] @ z[p] / tau) / denominator) for p in positives)
                          / len(positives))
    return sum(per_anchor) / len(per_anchor)


LABELS = [0, 1, 0, 2, 1, 1, 3, 0, 2, 4]  # classes 3 and 4 are singletons: their anchors have no positive


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [0.1, 0.3])
def test_value_and_gradient_equal_pml(dtype, temperature):
    x, y = _batch(10, 6, dtype, LABELS)
    ours = SupConLoss(temperature)(x, y)
    pml = pml_losses.SupConLoss(temperature=temperature)(x, y)
    torch.testing.assert_close(ours, pml)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(pml, x)[0])


MINED = [
    # pairs (a1, p, a2, n)
    (torch.tensor([0, 2, 1]), torch.tensor([2, 0, 4]),
     torch.tensor([0, 0, 2, 1]), torch.tensor([1, 3, 5, 6])),
    (torch.tensor([0, 1, 4]), torch.tensor([7, 5, 1]), torch.tensor([3, 6, 9])),  # triplets
]


@pytest.mark.parametrize("indices_tuple", MINED)
def test_mined_tuples_equal_pml(indices_tuple):
    x, y = _batch(10, 6, torch.float64, LABELS)
    ours = SupConLoss()(x, y, indices_tuple)
    pml = pml_losses.SupConLoss(temperature=0.1)(x, y, indices_tuple)
    torch.testing.assert_close(ours, pml)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(pml, x)[0])
    assert abs(ours.item() - SupConLoss()(x, y).item()) > 0.1  # the tuple really restricts the pairs


# REF_TUPLES's pairs with a negative for anchors 3 and 10, whose only pair is a positive there (see below)
REF_PAIRS = (*pair_batch.REF_TUPLES[1][:2], torch.cat([pair_batch.REF_TUPLES[1][2], torch.tensor([3, 10])]),
             torch.cat([pair_batch.REF_TUPLES[1][3], torch.tensor([2, 1])]))


@pytest.mark.parametrize("indices_tuple", [None, pair_batch.REF_TUPLES[0], REF_PAIRS])
def test_reference_set_value_and_gradient_equal_pml(indices_tuple):
    x, r = pair_batch.batch(), pair_batch.reference()
    y, ref_labels = pair_batch.LABELS, pair_batch.REF_LABELS
    ours = SupConLoss(0.3)(x, y, indices_tuple, ref_emb=r, ref_labels=ref_labels)
    pml = pml_losses.SupConLoss(temperature=0.3)(x, y, indices_tuple, ref_emb=r, ref_labels=ref_labels)
    assert ours.item() > 0
    pair_batch.assert_same_value_and_gradients(ours, pml, (x, r))


def test_an_anchor_whose_only_pair_is_one_positive_counts_as_zero_where_pml_leaves_it_out():
    x, r = pair_batch.batch(), pair_batch.reference()
    y, ref_labels, pairs = pair_batch.LABELS, pair_batch.REF_LABELS, pair_batch.REF_TUPLES[1]
    ours = SupConLoss()(x, y, pairs, ref_emb=r, ref_labels=ref_labels)
    pml = pml_losses.SupConLoss(temperature=0.1)(x, y, pairs, ref_emb=r, ref_labels=ref_labels)
    torch.testing.assert_close(ours, pml * 2 / 4)  # anchors 0, 3, 5, 10 have a positive; 3 and 10 nothing else


def test_multi_view_against_paper_formula_and_base_temperature():
    views, y = _batch(8, 5, torch.float64, [0, 1, 2, 3, 0, 1, 2, 3])  # 4 images, 2 views each
    torch.testing.assert_close(SupConLoss(0.2)(views, y).item(), _paper(views, y, 0.2))
    scaled = SupConLoss(0.07, base_temperature=0.07 * 2)(views, y).item()
    torch.testing.assert_close(scaled, _paper(views, y, 0.07) / 2)


def test_one_class_batch_gives_the_papers_value():
    x, y = _batch(5, 4, torch.float64, [2] * 5)
    torch.testing.assert_close(SupConLoss()(x, y).item(), _paper(x, y, 0.1))


def test_one_sample_per_class_gives_zero_with_a_zero_gradient():
    x, y = _batch(5, 4, torch.float64, [0, 1, 2, 3, 4])
    loss = SupConLoss()(x, y)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_all_equal_embeddings_give_log_of_candidates():
    x = torch.ones(6, 3, dtype=torch.float64)
    torch.testing.assert_close(SupConLoss()(x, torch.tensor([0, 0, 1, 1, 2, 2])).item(), math.log(5))


def test_gradcheck():
    x, y = _batch(6, 3, torch.float64, [0, 0, 1, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda e: SupConLoss(0.5)(e, y), (x,))


def test_needs_global_batch():
    assert SupConLoss.needs_global_batch is True


def test_errors():
    with pytest.raises(ValueError, match="labels"):
        SupConLoss()(torch.randn(4, 3), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0.0)
    with pytest.raises(ValueError, match="base_temperature"):
        SupConLoss(base_temperature=-1.0)
