"""DistanceWeightedMiner: the 1/q(d) sampling distribution (chi-square), structure, determinism."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners
from scipy.stats import chi2

from hvkit.testing import check_miner
from hvkit_plugins.miners.distance_weighted import DistanceWeightedMiner

DIM = 6


def sphere_batch(per_class=4, classes=4, dim=DIM, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(per_class * classes, dim, generator=g), torch.arange(classes).repeat_interleave(per_class)


def analytic_probabilities(x, y, cutoff=0.5, nonzero_loss_cutoff=1.4, r=None, ry=None):
    """P(n | a) ∝ 1/q(max(d, cutoff)) over the negatives (rows of the reference r, default x) with
    d < nonzero_loss_cutoff, in float64."""
    r, ry = (x, y) if r is None else (r, ry)
    z, zr = F.normalize(x.double(), dim=1), F.normalize(r.double(), dim=1)
    n = z.shape[1]
    d = torch.cdist(z, zr)
    dc = d.clamp(min=cutoff)
    inv_q = dc ** (-(n - 2)) * (1 - dc ** 2 / 4) ** (-(n - 3) / 2)
    w = inv_q * ((y[:, None] != ry[None, :]) & (d < nonzero_loss_cutoff))
    return (w / w.sum(dim=1, keepdim=True)).numpy()


def chi_square_p_value(anchors, negatives, probabilities):
    """Pooled Pearson chi-square over anchors of the drawn negatives against ``probabilities``."""
    stat, dof = 0.0, 0
    for a in np.unique(anchors):
        p = probabilities[a]
        support = p > 0
        observed = np.bincount(negatives[anchors == a], minlength=len(p))
        assert observed[~support].sum() == 0, "drew an ineligible negative"
        expected = observed.sum() * p[support]
        stat += ((observed[support] - expected) ** 2 / expected).sum()
        dof += support.sum() - 1
    return chi2.sf(stat, dof)


def draws(miner, x, y, calls, generator=None, **reference):
    out = [miner(x, y, generator=generator, **reference) if generator else miner(x, y, **reference)
           for _ in range(calls)]
    return (torch.cat([a for a, _, _ in out]).numpy(), torch.cat([n for _, _, n in out]).numpy())


@pytest.fixture(scope="module")
def setting():
    x, y = sphere_batch()
    p = analytic_probabilities(x, y)
    assert ((p > 0).sum(axis=1) >= 3).all() and (p.max(axis=1) / p.max() > 0.1).all()
    return x, y, p


def test_negatives_follow_inverse_q_weights(setting):
    x, y, p = setting
    anchors, negatives = draws(DistanceWeightedMiner(), x, y, calls=800,
                               generator=torch.Generator().manual_seed(0))
    assert chi_square_p_value(anchors, negatives, p) > 1e-3
    uniform = (p > 0) / (p > 0).sum(axis=1, keepdims=True)
    assert chi_square_p_value(anchors, negatives, uniform) < 1e-6


def test_pml_draws_from_the_same_distribution(setting):
    x, y, p = setting
    torch.manual_seed(0)
    anchors, negatives = draws(miners.DistanceWeightedMiner(), x, y, calls=400)
    assert chi_square_p_value(anchors, negatives, p) > 1e-3


def test_every_positive_pair_once_with_an_eligible_negative():
    x, y = sphere_batch(per_class=3, classes=5, dim=8, seed=1)
    a, p, n = DistanceWeightedMiner()(x, y)
    pairs = sorted(zip(a.tolist(), p.tolist()))
    expected = [(i, j) for i in range(15) for j in range(15) if i != j and y[i] == y[j]]
    assert pairs == expected
    assert (y[n] != y[a]).all()
    assert (torch.cdist(F.normalize(x), F.normalize(x))[a, n] < 1.4).all()


@pytest.fixture(scope="module")
def reference_setting():
    """A batch of 8 (two per class) and a reference set of 20 rows of the same 4 classes plus a fifth."""
    x, y = sphere_batch(per_class=2, seed=2)
    g = torch.Generator().manual_seed(3)
    r, ry = torch.randn(20, DIM, generator=g), torch.arange(20) % 5
    p = analytic_probabilities(x, y, r=r, ry=ry)
    assert ((p > 0).sum(axis=1) >= 3).all()
    return x, y, r, ry, p


def test_with_a_reference_negatives_follow_the_weights_over_its_rows(reference_setting):
    x, y, r, ry, p = reference_setting
    anchors, negatives = draws(DistanceWeightedMiner(), x, y, calls=600, generator=torch.Generator().manual_seed(1),
                               ref_emb=r, ref_labels=ry)
    assert chi_square_p_value(anchors, negatives, p) > 1e-3
    uniform = (p > 0) / (p > 0).sum(axis=1, keepdims=True)
    assert chi_square_p_value(anchors, negatives, uniform) < 1e-6


def test_pml_draws_from_the_same_distribution_given_a_reference(reference_setting):
    x, y, r, ry, p = reference_setting
    torch.manual_seed(0)
    out = [miners.DistanceWeightedMiner()(x, y, r, ry) for _ in range(300)]
    anchors, negatives = torch.cat([a for a, _, _ in out]).numpy(), torch.cat([n for _, _, n in out]).numpy()
    assert chi_square_p_value(anchors, negatives, p) > 1e-3


def test_with_a_reference_every_anchor_reference_positive_pair_once(reference_setting):
    x, y, r, ry, _ = reference_setting
    a, p, n = DistanceWeightedMiner()(x, y, ref_emb=r, ref_labels=ry)
    assert sorted(zip(a.tolist(), p.tolist())) == [(i, j) for i in range(8) for j in range(20) if y[i] == ry[j]]
    assert (ry[n] != y[a]).all() and n.max() >= 8  # negatives index the reference, past the batch's rows
    # with a copy of the batch as reference, (i, i) is a pair: the reference is another set
    a, p, _ = DistanceWeightedMiner()(x, y, ref_emb=x.clone(), ref_labels=y.clone())
    assert (a == p).sum() == 8 and len(a) == 16


def test_a_reference_without_labels_raises():
    x, y = sphere_batch()
    with pytest.raises(ValueError, match="distance_weighted: ref_emb was given without ref_labels"):
        DistanceWeightedMiner()(x, y, ref_emb=x)


def test_anchors_without_eligible_negatives_give_no_triplets():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1, 2])  # classes 0 and 1 are antipodal, 2 is at 1.414 from both
    a, p, n = DistanceWeightedMiner()(x, y)
    assert a.numel() == 0 and p.numel() == 0 and n.numel() == 0
    a, p, n = DistanceWeightedMiner(nonzero_loss_cutoff=1.5)(x, y)
    assert sorted(zip(a.tolist(), p.tolist())) == [(0, 1), (1, 0), (2, 3), (3, 2)]
    assert (n == 4).all()


def test_high_dimensions_keep_anchors_far_from_the_closest_pair():
    e = torch.eye(512)
    x = torch.stack([e[0], e[0], e[0] + 0.52 * e[1], e[0] + 0.5 * e[1] + 0.2 * e[3],
                     0.3 * e[0] + e[5], 0.3 * e[0] + e[5] + 0.1 * e[6]])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    a, _, n = DistanceWeightedMiner()(x, y)
    assert a.tolist() == [0, 1, 2, 3, 4, 5]
    assert (y[n] != y[a]).all()


def test_draws_are_reproducible_from_a_generator_or_the_global_seed():
    x, y = sphere_batch()
    miner = DistanceWeightedMiner()
    first = miner(x, y, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(u, v) for u, v in zip(first, miner(x, y, generator=torch.Generator().manual_seed(4))))
    assert not torch.equal(first[2], miner(x, y, generator=torch.Generator().manual_seed(5))[2])
    torch.manual_seed(4)
    again = miner(x, y)
    torch.manual_seed(4)
    assert torch.equal(again[2], miner(x, y)[2])


def test_conforms_to_the_miner_contract():
    check_miner(DistanceWeightedMiner)
    check_miner(DistanceWeightedMiner, {"cutoff": 0.3, "nonzero_loss_cutoff": 1.8}, embedding_dim=3)


def test_float64_and_float16_inputs():
    x, y = sphere_batch()
    for dtype in (torch.float64, torch.float16):
        a, p, n = DistanceWeightedMiner()(x.to(dtype), y)
        assert len(a) == 48 and (y[n] != y[a]).all()


@pytest.mark.parametrize("cutoff, nonzero", [(0.0, 1.4), (1.5, 1.4), (-0.1, 1.0)])
def test_invalid_cutoffs_raise(cutoff, nonzero):
    with pytest.raises(ValueError, match="cutoff"):
        DistanceWeightedMiner(cutoff=cutoff, nonzero_loss_cutoff=nonzero)
