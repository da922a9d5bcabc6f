"""Contra-X: cross-entropy + SupCon against torch and pytorch-metric-learning, the released KL variant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from hvkit_plugins.losses.contra_x import ContraXLoss

LABELS = torch.tensor([0, 1, 0, 2, 1, 1, 2, 0])


def _embeddings(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(8, 5, generator=torch.Generator().manual_seed(3), dtype=dtype).requires_grad_()


def _loss(**params) -> ContraXLoss:
    torch.manual_seed(0)
    return ContraXLoss(embedding_dim=5, num_classes=3, **params).double()


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_supcon_variant_equals_cross_entropy_plus_pml_supcon(weight):
    x, loss = _embeddings(), _loss(contrastive_weight=weight, temperature=0.2)
    cross_entropy = F.cross_entropy(loss.classifier(x), LABELS)
    supcon = pml_losses.SupConLoss(temperature=0.2)(x, LABELS)
    torch.testing.assert_close(loss(x, LABELS), cross_entropy + weight * supcon)
    torch.testing.assert_close(loss.terms()["cross_entropy"], cross_entropy.detach())
    torch.testing.assert_close(loss.terms()["contrastive"], supcon.detach())


def test_kl_variant_against_released_formula():
    x, loss = _embeddings(), _loss(contrastive="kl", temperature=0.1)
    z = F.normalize(x.detach(), dim=1)
    n, tau = len(LABELS), 0.1
    kl = 0.0
    for i in range(n):
        p = torch.softmax(z[i] @ z.T / tau, dim=0)
        q = torch.softmax((LABELS[i] == LABELS).double() / tau, dim=0)
        kl += sum(float(q[j]) * math.log(float(q[j]) / float(p[j])) for j in range(n))
    expected = F.cross_entropy(loss.classifier(x), LABELS).item() + kl / n
    torch.testing.assert_close(loss(x, LABELS).item(), expected)


@pytest.mark.parametrize("contrastive", ["supcon", "kl"])
def test_gradcheck_and_classifier_is_trained(contrastive):
    x, loss = _embeddings(), _loss(contrastive=contrastive, temperature=0.5)
    assert torch.autograd.gradcheck(lambda e: loss(e, LABELS), (x,))
    loss(x, LABELS).backward()
    assert loss.classifier.weight.grad is not None and loss.classifier.weight.grad.abs().sum() > 0


def test_one_sample_per_class_leaves_only_cross_entropy():
    x, loss = _embeddings()[:3], _loss()
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(loss(x, labels), F.cross_entropy(loss.classifier(x), labels))


def test_needs_global_batch():
    assert ContraXLoss.needs_global_batch is True


def test_errors():
    with pytest.raises(ValueError, match="num_classes"):
        ContraXLoss(embedding_dim=5, num_classes=1)
    with pytest.raises(ValueError, match="contrastive_weight"):
        ContraXLoss(embedding_dim=5, num_classes=3, contrastive_weight=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        ContraXLoss(embedding_dim=5, num_classes=3, temperature=0.0)
    with pytest.raises(ValueError, match="contrastive must be"):
        ContraXLoss(embedding_dim=5, num_classes=3, contrastive="triplet")
    loss = _loss(contrastive="kl")
    with pytest.raises(ValueError, match="miner"):
        loss(_embeddings(), LABELS, (torch.tensor([0]), torch.tensor([2]), torch.tensor([1])))
    with pytest.raises(ValueError, match="labels must lie"):
        loss(_embeddings(), torch.tensor([0, 1, 0, 2, 1, 1, 2, 3]))
