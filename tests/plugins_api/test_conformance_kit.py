"""hvkit.testing catches deliberately broken components, each with a message naming the broken rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from hvkit.api import MetricLoss, ViewLoss
from hvkit.testing import (check_backbone, check_evaluator, check_head, check_loss, check_miner,
                           check_sampler, check_transform, tiny_recipe)


# --- losses -----------------------------------------------------------------------------------

class PullPush(MetricLoss):
    """Squared distance of same-label pairs, hinge on other pairs (a correct loss to break)."""

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def terms(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        squared = (embeddings[:, None] - embeddings[None]).pow(2).sum(-1)
        same = labels[:, None] == labels[None]
        push = (self.margin - squared.clamp_min(1e-12).sqrt()).clamp_min(0).pow(2)
        return torch.where(same, squared, push)

    def forward(self, embeddings, labels, indices_tuple=None):
        return self.terms(embeddings, labels).mean()


class Vector(PullPush):
    """Forgets to reduce."""

    def forward(self, embeddings, labels, indices_tuple=None):
        return self.terms(embeddings, labels).mean(dim=1)


class NaNLoss(PullPush):
    """Divides by zero."""

    def forward(self, embeddings, labels, indices_tuple=None):
        return self.terms(embeddings, labels).mean() / 0.0 * 0.0


class Detached(PullPush):
    """Detaches the embeddings."""

    def forward(self, embeddings, labels, indices_tuple=None):
        return self.terms(embeddings.detach(), labels).mean()


class NaiveDistance(PullPush):
    """sqrt of a zero distance: an infinite gradient on the diagonal."""

    def forward(self, embeddings, labels, indices_tuple=None):
        distance = (embeddings[:, None] - embeddings[None]).pow(2).sum(-1).sqrt()
        return distance.mean()


class UnusedParameter(PullPush):
    """Has a weight it never uses."""

    def __init__(self, margin: float = 1.0):
        super().__init__(margin)
        self.scale = nn.Parameter(torch.ones(1))


class Float32(PullPush):
    """Computes in float32 whatever it is given."""

    def forward(self, embeddings, labels, indices_tuple=None):
        return self.terms(embeddings.float(), labels).mean()


class NeedsTwoClasses(PullPush):
    """Indexes the first negative without checking that there is one."""

    def forward(self, embeddings, labels, indices_tuple=None):
        first_negative = torch.nonzero(labels != labels[0])[0, 0]
        return self.terms(embeddings, labels).mean() + 0 * embeddings[first_negative].sum()


class ConstantWhenEmpty(PullPush):
    """Returns a constant without a gradient path when the batch has no positive pair."""

    def forward(self, embeddings, labels, indices_tuple=None):
        if len(labels.unique()) == len(labels):
            return torch.tensor(0.0, dtype=embeddings.dtype)
        return self.terms(embeddings, labels).mean()


class TripletsOnly(PullPush):
    """Unpacks the indices_tuple as triplets only."""

    def forward(self, embeddings, labels, indices_tuple=None):
        if indices_tuple is not None:
            anchor, positive, negative = indices_tuple
        return self.terms(embeddings, labels).mean()


class RefusesMiners(PullPush):
    """Uses every sample of the batch and says so when given a miner's indices."""

    def forward(self, embeddings, labels, indices_tuple=None):
        if indices_tuple is not None:
            raise ValueError("this loss uses every sample of the batch: remove the miner")
        return super().forward(embeddings, labels)


class Reference(PullPush):
    """PullPush over (anchor, partner) pairs: the batch's, a reference set's or a miner's (a correct reference loss)."""

    accepts_reference = True

    def reference_terms(self, embeddings, labels, ref_emb, ref_labels):
        squared = (embeddings[:, None] - ref_emb[None]).pow(2).sum(-1)
        push = (self.margin - squared.clamp_min(1e-12).sqrt()).clamp_min(0).pow(2)
        return torch.where(labels[:, None] == ref_labels[None], squared, push)

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        if ref_emb is None:
            ref_emb, ref_labels = embeddings, labels
        terms = self.reference_terms(embeddings, labels, ref_emb, ref_labels)
        if indices_tuple is None:
            return terms.mean()
        a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels)
        return torch.cat([terms[a1, p], terms[a2, n]]).mean()


class NoReferenceArguments(PullPush):
    """Declares a reference set but takes none."""

    accepts_reference = True


class DiagonalReference(Reference):
    """Leaves out the reference's diagonal, as if its row i were anchor i."""

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        if ref_emb is None or indices_tuple is not None:
            return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        terms = self.reference_terms(embeddings, labels, ref_emb, ref_labels)
        return terms[~torch.eye(*terms.shape, dtype=torch.bool)].mean()


class IgnoresTupleWithReference(Reference):
    """Uses every pair when given a reference set, the miner's tuple notwithstanding."""

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        return super().forward(embeddings, labels, None if ref_emb is not None else indices_tuple, ref_emb, ref_labels)


class PartnersFromTheBatch(Reference):
    """Takes a tuple's partners from the batch even when given a reference set."""

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        if indices_tuple is None:
            return super().forward(embeddings, labels, None, ref_emb, ref_labels)
        return super().forward(embeddings, labels, indices_tuple)


class DetachedReference(Reference):
    """Detaches the reference set."""

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        ref_emb = None if ref_emb is None else ref_emb.detach()
        return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)


class NotABool(PullPush):
    """Declares accepts_reference as a string."""

    accepts_reference = "yes"


class PlainModule(nn.Module):
    """A loss that is neither a MetricLoss nor a ViewLoss."""

    def forward(self, x):
        return x.sum()


class OneView(ViewLoss):
    """Uses only the first view."""

    def forward(self, z_a, z_b):
        return z_a.pow(2).mean()


class Alignment(ViewLoss):
    """Mean squared distance of the views (a correct view loss)."""

    def forward(self, z_a, z_b):
        return (z_a - z_b).pow(2).sum(dim=1).mean()


class TeacherAlignment(ViewLoss):
    """Mean squared distance of the online view to the teacher's, which passes no gradient (a correct teacher loss)."""

    needs_teacher = True

    def forward(self, z_a, z_b):
        return (z_a - z_b.detach()).pow(2).sum(dim=1).mean()


class TeacherOnly(ViewLoss):
    """Needs a teacher but uses only the teacher's view."""

    needs_teacher = True

    def forward(self, z_a, z_b):
        return z_b.pow(2).mean()


class BrokenObserver(TeacherAlignment):
    """A teacher loss whose per-step update of its teacher state poisons it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.zeros(()))

    def forward(self, z_a, z_b):
        return super().forward(z_a, z_b) + self.shift

    def observe_teacher(self, teacher_views):
        self.shift.fill_(float("nan"))


def undocumented(margin: float = 1.0):
    return PullPush(margin)


def unhinted(margin=1.0):
    """A factory whose parameter has no type hint."""
    return PullPush(margin)


def unresolvable(margin: "Margin" = 1.0):  # noqa: F821 — the point of the test
    """A factory whose type hint names nothing."""
    return PullPush(margin)


def test_a_correct_loss_passes_as_factory_and_as_instance():
    check_loss(PullPush)
    check_loss(PullPush, {"margin": 0.5})
    check_loss(PullPush(margin=2.0))
    check_loss(RefusesMiners)
    check_loss(Reference)
    check_loss(Alignment)
    check_loss(TeacherAlignment)


@pytest.mark.parametrize("loss, message", [
    (Vector, r"returned shape \(16,\), expected a scalar"),
    (NaNLoss, r"returned nan, expected a finite loss"),
    (Detached, r"no gradient path \(requires_grad is False\)"),
    (NaiveDistance, r"the gradient of the embeddings is not finite"),
    (UnusedParameter, r"parameter 'scale' gets no gradient"),
    (Float32, r"returned torch.float32 for torch.float64 inputs"),
    (NeedsTwoClasses, r"on a batch of one class \(torch.float32\) it raised IndexError"),
    (ConstantWhenEmpty, r"on one sample per class \(torch.float32\) the loss has no gradient path"),
    (TripletsOnly, r"it takes a triplet indices_tuple but on a pair one \(torch.float32\) it raised "
                   r"ValueError: too many values to unpack"),
    (NoReferenceArguments, r"accepts_reference is True but forward takes no ref_emb and ref_labels"),
    (DiagonalReference, r"shuffling the rows of ref_emb and ref_labels changed the loss"),
    (IgnoresTupleWithReference, r"with the batch's triplet indices_tuple it gave .* the tuple must index"),
    (PartnersFromTheBatch, r"on a reference set of 19 rows and triplet indices_tuple \(torch.float32\) it raised "
                           r"IndexError"),
    (DetachedReference, r"on a reference set of 19 rows and no indices_tuple \(torch.float32\) no gradient "
                        r"reaches ref_emb"),
    (NotABool, r"accepts_reference must be a bool"),
    (OneView, r"no gradient reaches z_b"),
    (TeacherOnly, r"no gradient reaches z_a"),
    (BrokenObserver, r"on two views after observe_teacher \(torch.float32\) it returned nan"),
    (PlainModule, r"neither a MetricLoss nor a ViewLoss"),
    (undocumented, r"the factory has no docstring"),
    (unhinted, r"parameter 'margin' has no type hint"),
    (unresolvable, r"cannot read the factory's parameters \(NameError: name 'Margin'"),
])
def test_a_broken_loss_fails_with_the_broken_rule(loss, message):
    with pytest.raises(AssertionError, match=r"^check_loss\(" + loss.__qualname__ + r"\): .*" + message):
        check_loss(loss)


def test_building_failure_names_the_arguments():
    with pytest.raises(AssertionError, match=r"building it with \['margin'\] raised TypeError"):
        check_loss(Alignment, {"margin": 1.0})


def test_a_loss_with_its_own_inputs():
    class Reconstruction(nn.Module):
        """Mean squared error of a reconstruction."""

        def forward(self, x, recon):
            return (x - recon).pow(2).mean()

    check_loss(Reconstruction, inputs=lambda dtype, g: (torch.rand(3, 4, generator=g, dtype=dtype),
                                                        torch.rand(3, 4, generator=g, dtype=dtype)))


# --- samplers ---------------------------------------------------------------------------------

class Shuffled:
    """Shuffled full batches by (seed, epoch), dealt out to ranks (a correct sampler to break)."""

    def __init__(self, labels: list[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.n, self.batch_size, self.seed = len(labels), batch_size, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size // self.world_size

    def order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def batches(self) -> np.ndarray:
        return self.order()[: len(self) * self.world_size * self.batch_size].reshape(-1, self.batch_size)

    def __iter__(self):
        for batch in self.batches()[self.rank::self.world_size]:
            yield batch.tolist()


class IgnoresSeed(Shuffled):
    def order(self):
        return np.random.default_rng(self.epoch).permutation(self.n)


class IgnoresEpoch(Shuffled):
    def order(self):
        return np.random.default_rng(self.seed).permutation(self.n)


class GlobalRandom(Shuffled):
    def order(self):
        return np.random.permutation(self.n)


class IgnoresRank(Shuffled):
    def __iter__(self):
        for batch in self.batches()[: len(self)]:
            yield batch.tolist()


class ShufflesPerRank(Shuffled):
    def __len__(self):
        return self.n // self.batch_size // self.world_size

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch, self.rank]).permutation(self.n)
        for batch in order[: len(self) * self.batch_size].reshape(-1, self.batch_size):
            yield batch.tolist()


class UnevenRanks(Shuffled):
    def __len__(self):
        return len(range(self.rank, self.n // self.batch_size, self.world_size))

    def __iter__(self):
        whole = self.order()[: self.n // self.batch_size * self.batch_size].reshape(-1, self.batch_size)
        for batch in whole[self.rank::self.world_size]:
            yield batch.tolist()


class WrongLength(Shuffled):
    def __len__(self):
        return super().__len__() + 1


class OffByOne(Shuffled):
    def __iter__(self):
        for batch in super().__iter__():
            yield [i + 1 for i in batch]


class Repeats(Shuffled):
    def __iter__(self):
        for batch in super().__iter__():
            yield batch[:-1] + batch[:1]


def test_a_correct_sampler_passes():
    check_sampler(Shuffled)
    check_sampler(Shuffled, labels=list(range(40)), batch_size=5, world_size=4)


@pytest.mark.parametrize("sampler, message, labels", [
    (IgnoresSeed, r"seeds 0 and 1 gave the same batches; the sampler ignores its seed", None),
    (IgnoresEpoch, r"epochs 0 and 1 gave the same batches", None),
    (GlobalRandom, r"iterating epoch 0 twice gave different batches", None),
    (IgnoresRank, r"ranks 0 and 1 both yield batch", None),
    (ShufflesPerRank, r"its 2 ranks repeat \d+ indices where padding explains 0", None),
    (UnevenRanks, r"ranks yield \[6, 5\] batches; every rank must yield the same number", range(88)),
    (WrongLength, r"an epoch yielded 12 batches but len\(\) is 13", None),
    (OffByOne, r"batch \d+ holds an index outside 0\.\.95", None),
    (Repeats, r"batch 0 holds an index twice", None),
])
def test_a_broken_sampler_fails_with_the_broken_rule(sampler, message, labels):
    with pytest.raises(AssertionError, match=r"^check_sampler\(" + sampler.__qualname__ + r"\): " + message):
        check_sampler(sampler, labels=labels)


def test_repeats_can_be_allowed():
    check_sampler(Repeats, allow_repeats=True)


def test_a_built_sampler_is_refused():
    with pytest.raises(TypeError, match="check_sampler takes the factory"):
        check_sampler(Shuffled(list(range(8)), 4))


# --- miners -----------------------------------------------------------------------------------

class AllPairs(nn.Module):
    """Every positive and negative pair of the batch (a correct miner to break)."""

    def forward(self, embeddings, labels):
        same = labels[:, None] == labels[None]
        a1, p = torch.nonzero(same & ~torch.eye(len(labels), dtype=torch.bool), as_tuple=True)
        a2, n = torch.nonzero(~same, as_tuple=True)
        return a1, p, a2, n


class SwappedNegatives(AllPairs):
    def forward(self, embeddings, labels):
        a1, p, a2, n = super().forward(embeddings, labels)
        return a1, p, a1, p


class AsList(AllPairs):
    def forward(self, embeddings, labels):
        return list(super().forward(embeddings, labels))


class Int32(AllPairs):
    def forward(self, embeddings, labels):
        return tuple(t.int() for t in super().forward(embeddings, labels))


class NumpyRandom(AllPairs):
    def forward(self, embeddings, labels):
        a1, p, a2, n = super().forward(embeddings, labels)
        keep = torch.from_numpy(np.random.rand(len(a2)) < 0.5)
        return a1, p, a2[keep], n[keep]


class InPlace(AllPairs):
    def forward(self, embeddings, labels):
        embeddings.div_(embeddings.norm(dim=1, keepdim=True))
        return super().forward(embeddings, labels)


class ReferencePairs(nn.Module):
    """Every (batch row, reference row) pair, (i, i) included: a correct miner accepting a reference set."""

    accepts_reference = True

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        if ref_emb is None:
            return AllPairs()(embeddings, labels)
        same = labels[:, None] == ref_labels[None]
        return (*torch.nonzero(same, as_tuple=True), *torch.nonzero(~same, as_tuple=True))


class RandomReferencePairs(ReferencePairs):
    """Half the pairs, drawn by torch: a correct random miner, spared the shuffled-reference rule."""

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        a1, p, a2, n = super().forward(embeddings, labels, ref_emb, ref_labels)
        keep, drop = torch.rand(len(a1)) < 0.5, torch.rand(len(a2)) < 0.5
        return a1[keep], p[keep], a2[drop], n[drop]


class NoReferenceMinerArguments(AllPairs):
    """Declares a reference set but takes none."""

    accepts_reference = True


class IgnoresTheReference(ReferencePairs):
    """Mines the batch whatever the reference."""

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        return super().forward(embeddings, labels)


class AnchorsFromTheReference(ReferencePairs):
    """Swaps the roles: anchors from the reference, partners from the batch."""

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        if ref_emb is None:
            return super().forward(embeddings, labels)
        a1, p, a2, n = super().forward(ref_emb, ref_labels, embeddings, labels)
        return a1, p, a2, n


class DiagonalReferenceMiner(ReferencePairs):
    """Leaves out the pairs (i, i) of a reference set too, as if its row i were anchor i."""

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        a1, p, a2, n = super().forward(embeddings, labels, ref_emb, ref_labels)
        return a1[a1 != p], p[a1 != p], a2, n


class NormalisesTheReference(ReferencePairs):
    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        if ref_emb is not None:
            ref_emb.div_(ref_emb.norm(dim=1, keepdim=True))
        return super().forward(embeddings, labels, ref_emb, ref_labels)


class MinerFlagNotABool(AllPairs):
    accepts_reference = "yes"


def test_a_correct_miner_passes():
    check_miner(AllPairs)
    check_miner(AllPairs())
    check_miner(ReferencePairs)
    check_miner(RandomReferencePairs)


@pytest.mark.parametrize("miner, message", [
    (SwappedNegatives, r"a negative has its anchor's label"),
    (AsList, r"returned list; expected a tuple of 3 .* or 4"),
    (Int32, r"an index tensor has shape \(\d+,\) and dtype torch.int32; expected 1-D int64"),
    (NumpyRandom, r"two calls under the same torch seed mined different indices"),
    (InPlace, r"it modified the embeddings in place"),
    (NoReferenceMinerArguments, r"accepts_reference is True but it takes no ref_emb and ref_labels"),
    (IgnoresTheReference, r"on a reference set of one class \(torch.float32\) a positive has another label than "
                          r"its anchor \(a positive's label is ref_labels\[p\]\)"),
    (AnchorsFromTheReference, r"on a reference set of one class \(torch.float32\) an anchor index is outside "
                              r"0..15, the batch's rows; anchors index embeddings, partners ref_emb"),
    (DiagonalReferenceMiner, r"shuffling the rows of ref_emb and ref_labels changed the tuples it mined"),
    (NormalisesTheReference, r"it modified the ref_emb in place"),
    (MinerFlagNotABool, r"accepts_reference must be a bool"),
])
def test_a_broken_miner_fails_with_the_broken_rule(miner, message):
    with pytest.raises(AssertionError, match=r"^check_miner\(" + miner.__qualname__ + r"\): .*" + message):
        check_miner(miner)


# --- transforms -------------------------------------------------------------------------------

class Brighten:
    """Adds a random brightness per image from the generator (a correct transform to break)."""

    def __init__(self, strength: float = 0.2):
        self.strength = strength

    def shift(self, images, generator):
        return self.strength * torch.rand(images.shape[0], 1, 1, 1, generator=generator)

    def __call__(self, images, generator):
        return (images + self.shift(images, generator)).clamp(0, 1)


class GlobalRNG(Brighten):
    def shift(self, images, generator):
        return self.strength * torch.rand(images.shape[0], 1, 1, 1)


class Unclamped(Brighten):
    def __call__(self, images, generator):
        return images + self.shift(images, generator)


class InPlaceTransform(Brighten):
    def __call__(self, images, generator):
        return images.add_(self.shift(images, generator)).clamp_(0, 1)


class Cropping(Brighten):
    def __call__(self, images, generator):
        return super().__call__(images, generator)[..., 1:-1, 1:-1]


class Identity:
    """Returns its input: deterministic."""

    def __call__(self, images, generator):
        return images.clone()


def test_a_correct_transform_passes():
    check_transform(Brighten)
    check_transform(Identity, random=False)


@pytest.mark.parametrize("transform, message", [
    (GlobalRNG, r"the same generator seed gave another output"),
    (Unclamped, r"values leave \[0, 1\]"),
    (InPlaceTransform, r"it modified its input in place"),
    (Cropping, r"returned \(4, 1, 30, 30\) torch.float32 for \(4, 1, 32, 32\)"),
    (Identity, r"generator seeds 0 and 1 gave the same output; pass random=False"),
])
def test_a_broken_transform_fails_with_the_broken_rule(transform, message):
    with pytest.raises(AssertionError, match=r"^check_transform\(" + transform.__qualname__ + r"\).*: " + message):
        check_transform(transform)


# --- backbones and heads ----------------------------------------------------------------------

class Pool(nn.Module):
    """Global average pooling and a linear map (a correct backbone to break)."""

    def __init__(self, in_channels: int, embedding_dim: int = 8):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.linear = nn.Linear(in_channels, embedding_dim)

    def forward(self, images):
        return self.linear(images.mean(dim=(2, 3)))


class Unflattened(Pool):
    def forward(self, images):
        return super().forward(images)[:, :, None, None]


class NoDim(Pool):
    def __init__(self, in_channels: int):
        super().__init__(in_channels)
        del self.embedding_dim


class BatchCentred(Pool):
    def forward(self, images):
        out = super().forward(images)
        return out - out.mean(dim=0)


class Projection(nn.Module):
    """A linear head (correct)."""

    def __init__(self, in_dim: int, out_dim: int = 4):
        super().__init__()
        self.out_dim = out_dim
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        return self.linear(x)


class Frozen(Projection):
    def forward(self, x):
        return self.linear(x).detach() + 0 * x.sum()


def test_a_correct_backbone_and_head_pass():
    check_backbone(Pool)
    check_head(Projection)


@pytest.mark.parametrize("factory, check, message", [
    (Unflattened, check_backbone, r"with 1 channel\(s\): mapped input \(4, 1, 64, 64\) to \(4, 8, 1, 1\), expected \(4, 8\)"),
    (NoDim, check_backbone, r"embedding_dim is None; expose it as a positive int"),
    (BatchCentred, check_backbone, r"in eval mode a sample's output depends on the rest of its batch"),
    (Frozen, check_head, r"none of its trainable parameters gets a gradient"),
])
def test_a_broken_backbone_or_head_fails_with_the_broken_rule(factory, check, message):
    with pytest.raises(AssertionError, match=message):
        check(factory)


# --- evaluators -------------------------------------------------------------------------------

class NearestWriter:
    """Precision@1 of the nearest reference embedding, and a file it writes (a correct evaluator)."""

    requires = frozenset({"knn"})

    def __call__(self, data, shared):
        if data.reference_embeddings is None:
            raise ValueError("needs reference embeddings")
        out = {"precision_at_1": np.mean(shared["knn"].labels(k=1)[:, 0] == data.labels),
               "queries": len(data.labels)}
        if data.out_dir is not None:
            (data.out_dir / "note.txt").write_text("written")
            out["file"] = "note.txt"
        return out


class UnknownRequirement(NearestWriter):
    requires = frozenset({"knnn"})


class SetRequirement(NearestWriter):
    requires = {"knn"}


class ReturnsNone(NearestWriter):
    def __call__(self, data, shared):
        return {"precision_at_1": None}


class ReturnsNaN(NearestWriter):
    def __call__(self, data, shared):
        return {"nested": {"precision_at_1": float("nan")}}


class Unseeded(NearestWriter):
    def __call__(self, data, shared):
        return {"sampled": float(np.random.rand())}


class NamesNoFile(NearestWriter):
    def __call__(self, data, shared):
        return {"plot": "roc.png"}


class BareCrash(NearestWriter):
    def __call__(self, data, shared):
        return {"val_size": len(data.val_labels)}


def test_a_correct_evaluator_passes():
    check_evaluator(NearestWriter)


@pytest.mark.parametrize("evaluator, message", [
    (UnknownRequirement, r"requires is frozenset\(\{'knnn'\}\); declare a frozenset of all_pairs, clusters, knn"),
    (SetRequirement, r"requires is \{'knn'\}; declare a frozenset"),
    (ReturnsNone, r"precision_at_1 is None; metrics must be int, float or bool"),
    (ReturnsNaN, r"nested.precision_at_1 is nan on separable writers"),
    (Unseeded, r"two runs on the same data gave different metrics"),
    (NamesNoFile, r"plot is the string 'roc.png', which names no file it wrote to out_dir"),
    (BareCrash, r"it raised TypeError: object of type 'NoneType' has no len\(\)"),
])
def test_a_broken_evaluator_fails_with_the_broken_rule(evaluator, message):
    with pytest.raises(AssertionError, match=r"^check_evaluator\(" + evaluator.__qualname__ + r"\): " + message):
        check_evaluator(evaluator)


# --- recipes ------------------------------------------------------------------------------------

STAGES = """
pretrain:
  stage: ssl_pretrain
  loss: {name: nnclr, support_size: 20}
  batch_size: 8
tuned:
  stage: metric_train
  init_from: pretrain
"""
PARSED = {"pretrain": {"stage": "ssl_pretrain", "loss": {"name": "nnclr", "support_size": 20}, "batch_size": 8},
          "tuned": {"stage": "metric_train", "init_from": "pretrain"}}


def test_tiny_recipe_puts_the_stages_under_a_header_of_embedded_synthetic_writers():
    assert yaml.safe_load(tiny_recipe(STAGES)) == {
        "name": "tiny", "seed": 0, "model": {"backbone": "small_cnn"}, "stages": PARSED,
        "data": {"name": "cedar_and", "synthetic_writers": 12, "synthetic_samples_per_writer": 4, "image_size": 32}}
    recipe = yaml.safe_load(tiny_recipe(STAGES, name="mine", seed=3, backbone="{name: vit, layers: 1}", writers=6,
                                        samples_per_writer=2, image_size=None))
    assert recipe["name"] == "mine" and recipe["seed"] == 3
    assert recipe["data"] == {"name": "cedar_and", "synthetic_writers": 6, "synthetic_samples_per_writer": 2}
    assert recipe["model"] == {"backbone": {"name": "vit", "layers": 1}}


@pytest.mark.parametrize("indent", ["", "  ", "      "])
def test_tiny_recipe_takes_the_stages_at_any_common_indentation(indent):
    stages = "\n".join(indent + line if line else line for line in STAGES.splitlines())
    text = tiny_recipe(stages)
    assert yaml.safe_load(text)["stages"] == PARSED
    assert "stages:\n  pretrain:\n    stage: ssl_pretrain\n" in text


@pytest.mark.parametrize("stages, message", [
    ("  pretrain:\nstage: ssl_pretrain\n", "the recipe is not valid YAML"),
    ("  pretrain:\n  stage: ssl_pretrain\n", r"stages read as \{'pretrain': None, 'stage': 'ssl_pretrain'\}"),
    ("pretrain: ssl_pretrain\n", r"stages read as \{'pretrain': 'ssl_pretrain'\}"),
    ("\n", "stages read as None"),
])
def test_tiny_recipe_refuses_stages_with_settings_not_indented_under_their_stage(stages, message):
    with pytest.raises(ValueError, match=message + ".*; give the stages one common indentation and each stage's "
                                                   "settings a deeper one"):
        tiny_recipe(stages)
