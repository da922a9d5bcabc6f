"""Reference sets (``ref_emb``, ``ref_labels``) of the losses that accept them, beyond each loss's PML equality.

The batch as its own reference, with every pair but (i, i) as the tuple, is the plain loss
(without a reference a loss's pairs are exactly those); a missing or misshapen reference is a
one-line error naming the loss.
"""

from __future__ import annotations

import pytest

from hvkit.registry import get_registry
from hvkit_plugins.losses.angular import AngularLoss
from hvkit_plugins.losses.circle import CircleLoss
from hvkit_plugins.losses.contrastive import ContrastiveLoss
from hvkit_plugins.losses.dynamic_soft_margin import DynamicSoftMarginLoss
from hvkit_plugins.losses.intra_pair_variance import IntraPairVarianceLoss
from hvkit_plugins.losses.lifted_structure import GeneralizedLiftedStructureLoss
from hvkit_plugins.losses.multi_similarity import MultiSimilarityLoss
from hvkit_plugins.losses.nca import NCALoss
from hvkit_plugins.losses.snr_contrastive import SNRContrastiveLoss
from hvkit_plugins.losses.supcon import SupConLoss
from hvkit_plugins.losses.threshold_consistent_margin import ThresholdConsistentMarginLoss
from hvkit_plugins.losses.triplet import TripletLoss
from hvkit_plugins.losses.tuplet_margin import TupletMarginLoss
from hvkit_plugins.samplers.xbm import losses_with_reference

from .pair_batch import (ALL_PAIRS_BUT_SELF, LABELS, REFERENCE_ERRORS, assert_same_value_and_gradients, batch,
                         reference_error_args)

SELF_REFERENCE = [  # (registered name, loss factory: a fresh loss per call, as some keep state)
    ("contrastive", lambda: ContrastiveLoss(0.3, 1.1)),
    ("contrastive", lambda: ContrastiveLoss(0.3, 1.1, squared=True, reduction="mean")),
    ("triplet", TripletLoss),  # the pairs, split into triplets, are all the batch's triplets
    ("triplet", lambda: TripletLoss(soft_margin=True, reduction="mean")),
    ("circle", CircleLoss),
    ("generalized_lifted_structure", GeneralizedLiftedStructureLoss),
    ("multi_similarity", lambda: MultiSimilarityLoss(mining=False)),  # a given tuple replaces the mining
    ("supcon", SupConLoss),  # the positives and the denominator are exactly those pairs
    ("tuplet_margin", TupletMarginLoss),
    ("angular", AngularLoss),  # the positive pairs are those pairs, the negatives every other writer
    ("snr_contrastive", lambda: SNRContrastiveLoss(0.5, 2.5, 0.1)),  # the regulariser covers the batch alone
    ("nca", NCALoss),  # the very tensor is the batch (as in PML); the tuple weighs every sample alike
    ("intra_pair_variance", IntraPairVarianceLoss),
    ("threshold_consistent_margin", ThresholdConsistentMarginLoss),
    ("dynamic_soft_margin", DynamicSoftMarginLoss),
]
ACCEPTING = losses_with_reference()


def test_every_loss_that_accepts_a_reference_is_checked_here():
    assert {name for name, _ in SELF_REFERENCE} == set(ACCEPTING)


@pytest.mark.parametrize(("name", "loss"), SELF_REFERENCE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SELF_REFERENCE)])
def test_the_batch_as_its_own_reference_with_every_pair_but_self_is_the_plain_loss(name, loss):
    x = batch()
    a, b = loss()(x, LABELS, ALL_PAIRS_BUT_SELF, ref_emb=x, ref_labels=LABELS), loss()(x, LABELS)
    assert b.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("name", ACCEPTING)
@pytest.mark.parametrize(("ref_shape", "ref_labels", "message"), REFERENCE_ERRORS)
def test_an_incomplete_or_misshapen_reference_raises(name, ref_shape, ref_labels, message):
    loss = get_registry().get("loss", name).factory()
    with pytest.raises(ValueError, match=f"^{name}: {message}"):
        loss(batch(), LABELS, **reference_error_args(ref_shape, ref_labels))
