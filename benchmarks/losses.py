"""Forward+backward time of hvkit's own losses against their reference, measured in the same run.

    python benchmarks/losses.py                      # batch 512, dims 128 and 2048, all cases
    python benchmarks/losses.py --only vicreg supcon --dims 2048 --repeats 21

Prints a markdown table: median milliseconds of ``loss(*inputs).backward()`` after warm-up, for
hvkit's implementation and the reference (pytorch-metric-learning where it has the loss), and
the speed-up ``reference / ours`` (above 1: hvkit is faster). Ours and the reference alternate
within each repeat on identical inputs, so machine load affects both alike. Torch uses every
core unless ``--threads`` says otherwise; ``--clock cpu --threads 1`` times process CPU time
instead of wall time, which other jobs on a shared machine do not inflate.

To add a row, append a :class:`Case` to ``CASES``: two factories ``(dim, num_classes) -> callable``
whose callables take the inputs of ``inputs`` (see ``INPUTS``) and return a scalar loss.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from _timing import alternate
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances, losses as pml, miners as pml_miners, \
    regularizers as pml_regularizers

from hvkit_plugins.losses.angular import AngularLoss
from hvkit_plugins.losses.adaface import AdaFaceLoss
from hvkit_plugins.losses.arcface import ArcFaceLoss
from hvkit_plugins.losses.barlow_twins import BarlowTwinsLoss
from hvkit_plugins.losses.circle import CircleLoss
from hvkit_plugins.losses.contra_x import ContraXLoss
from hvkit_plugins.losses.contrastive import ContrastiveLoss
from hvkit_plugins.losses.cosface import CosFaceLoss
from hvkit_plugins.losses.curricularface import CurricularFaceLoss
from hvkit_plugins.losses.dcl import DCLLoss
from hvkit_plugins.losses.dynamic_soft_margin import DynamicSoftMarginLoss
from hvkit_plugins.losses.elasticface import ElasticArcFaceLoss
from hvkit_plugins.losses.fast_ap import FastAPLoss
from hvkit_plugins.losses.histogram import HistogramLoss
from hvkit_plugins.losses.instance import InstanceLoss
from hvkit_plugins.losses.intra_pair_variance import IntraPairVarianceLoss
from hvkit_plugins.losses.large_margin_softmax import LargeMarginSoftmaxLoss
from hvkit_plugins.losses.lifted_structure import GeneralizedLiftedStructureLoss, LiftedStructureLoss
from hvkit_plugins.losses.magface import MagFaceLoss
from hvkit_plugins.losses.manifold import ManifoldLoss
from hvkit_plugins.losses.moco_v2 import MoCoV2Loss
from hvkit_plugins.losses.multi_similarity import MultiSimilarityLoss
from hvkit_plugins.losses.nbc_softmax import NBCSoftmaxLoss
from hvkit_plugins.losses.nca import NCALoss
from hvkit_plugins.losses.normalized_softmax import NormalizedSoftmaxLoss
from hvkit_plugins.losses.npairs import NPairsLoss
from hvkit_plugins.losses.ntxent import NTXentLoss
from hvkit_plugins.losses.p2sgrad import P2SGradLoss
from hvkit_plugins.losses.pnp import PNPLoss
from hvkit_plugins.losses.proxy_anchor import ProxyAnchorLoss
from hvkit_plugins.losses.proxy_nca import ProxyNCALoss
from hvkit_plugins.losses.ranked_list import RankedListLoss
from hvkit_plugins.losses.smooth_ap import SmoothAPLoss
from hvkit_plugins.losses.snr_contrastive import SNRContrastiveLoss
from hvkit_plugins.losses.soft_triple import SoftTripleLoss
from hvkit_plugins.losses.sphereface import SphereFaceLoss
from hvkit_plugins.losses.subcenter_arcface import SubCenterArcFaceLoss
from hvkit_plugins.losses.supcon import SupConLoss
from hvkit_plugins.losses.swav import SwAVLoss
from hvkit_plugins.losses.threshold_consistent_margin import ThresholdConsistentMarginLoss
from hvkit_plugins.losses.tico import TiCoLoss
from hvkit_plugins.losses.triplet import TripletLoss
from hvkit_plugins.losses.tuplet_margin import TupletMarginLoss
from hvkit_plugins.losses.vicreg import VICRegLoss
from hvkit_plugins.losses.w_mse import WMSELoss
from hvkit_plugins.losses.weighted_sum import WeightedSumLoss
from hvkit_plugins.samplers.xbm import CrossBatchMemoryLoss

LossFactory = Callable[[int, int], Callable[..., torch.Tensor]]


@dataclass(frozen=True)
class Case:
    """One table row per dim: ``ours`` against ``reference`` on inputs of kind ``inputs``.

    ``batch``, when set, replaces the command line's batch size for this case (say why in ``note``);
    ``max_dim``, when set, skips the larger dims (say why in ``note``).
    """

    name: str
    ours: LossFactory
    reference: LossFactory
    reference_name: str
    inputs: str
    batch: int | None = None
    note: str = ""
    max_dim: int | None = None


def views(batch: int, dim: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Two correlated (batch, dim) views of one batch: ``loss(z_a, z_b)``."""
    z_a = torch.randn(batch, dim, device=device)
    z_b = z_a + 0.5 * torch.randn(batch, dim, device=device)
    return z_a.requires_grad_(), z_b.requires_grad_()


def labelled(batch: int, dim: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(batch, dim) embeddings with ``batch // 4`` classes of 4, shuffled: ``loss(embeddings, labels)``."""
    labels = torch.arange(batch, device=device) // 4
    embeddings = torch.randn(batch, dim, device=device).requires_grad_()
    return embeddings, labels[torch.randperm(batch, device=device)]


INPUTS: dict[str, Callable[[int, int, torch.device], tuple[torch.Tensor, ...]]] = {
    "views": views, "labelled": labelled,
}


def num_classes(kind: str, batch: int, classes: int | None = None) -> int:
    """The classes a classifier loss is built for: the batch's ``batch // 4``, or ``classes`` when more
    (the batch then holds the first ``batch // 4`` of them, as a batch of a large training set does)."""
    return max(batch // 4, classes or 0) if kind == "labelled" else 0


def _pml_vicreg(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    loss = pml.VICRegLoss()
    return lambda z_a, z_b: loss(z_a, ref_emb=z_b)


def _pml_ntxent(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    loss = pml.NTXentLoss(temperature=0.1)

    def call(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        instance = torch.arange(z_a.shape[0], device=z_a.device)
        return loss(torch.cat([z_a, z_b]), torch.cat([instance, instance]))
    return call


def _official_barlow_twins(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """The official Barlow Twins recipe: BatchNorm1d(affine=False), (D, D) C, strided off-diagonal view."""
    bn = torch.nn.BatchNorm1d(dim, affine=False)

    def call(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        bn.to(z_a.device)
        c = bn(z_a).T @ bn(z_b) / z_a.shape[0]
        on_diag = torch.diagonal(c).add(-1).pow(2).sum()
        off_diag = c.flatten()[:-1].view(dim - 1, dim + 1)[:, 1:].flatten().pow(2).sum()
        return on_diag + 5e-3 * off_diag
    return call


SWAV_PROTOTYPES = 3000  # the paper's K


def _official_swav(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """The official SwAV step: prototypes renormalised in place, a loop over the crops, Sinkhorn in float32."""
    prototypes = torch.nn.Linear(dim, SWAV_PROTOTYPES, bias=False)

    def sinkhorn(out: torch.Tensor) -> torch.Tensor:
        q = torch.exp(out / 0.05).t()
        k, b = q.shape
        q /= torch.sum(q)
        for _ in range(3):
            q /= torch.sum(q, dim=1, keepdim=True)
            q /= k
            q /= torch.sum(q, dim=0, keepdim=True)
            q /= b
        return (q * b).t()

    def call(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        prototypes.to(z_a.device)
        with torch.no_grad():
            prototypes.weight.copy_(F.normalize(prototypes.weight, dim=1))
        output, bs = prototypes(F.normalize(torch.cat([z_a, z_b]), dim=1)), z_a.shape[0]
        loss = 0
        for crop in range(2):
            with torch.no_grad():
                q = sinkhorn(output[bs * crop:bs * (crop + 1)].detach())
            for v in range(2):
                if v != crop:
                    loss -= torch.mean(torch.sum(q * F.log_softmax(output[bs * v:bs * (v + 1)] / 0.1, dim=1), dim=1))
        return loss / 2
    return call


W_MSE_SIZE = 256  # the paper's sub-batch for 128-d embeddings: two sub-batches of a batch of 512


def _official_w_mse(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """The official W-MSE step: a loop over sub-batches and views, each whitened by Whitening2d (Cholesky, the inverse
    factor by a triangular solve against I, applied as a 1x1 convolution), then the normalised MSE."""
    def whitening(x: torch.Tensor) -> torch.Tensor:
        xn = (x - x.mean(0))[:, :, None, None]
        t = xn.permute(1, 0, 2, 3).reshape(dim, -1)
        eye = torch.eye(dim, dtype=x.dtype, device=x.device)
        inv_sqrt = torch.linalg.solve_triangular(torch.linalg.cholesky(t @ t.T / (t.shape[-1] - 1)), eye, upper=False)
        return F.conv2d(xn, inv_sqrt[:, :, None, None]).squeeze(3).squeeze(2)

    def call(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        bs, h = z_a.shape[0], torch.cat([z_a, z_b])
        z = torch.empty_like(h)
        for idx in torch.randperm(bs).view(-1, W_MSE_SIZE).to(h.device):
            for i in range(2):
                z[idx + i * bs] = whitening(h[idx + i * bs])
        return 2 - 2 * (F.normalize(z[:bs]) * F.normalize(z[bs:])).sum(dim=-1).mean()
    return call


def _official_tico(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """TiCo's Algorithm 1 as the unofficial code and lightly write it: C = beta C + (1 - beta) z^T z / N, then
    -mean z . z' + rho mean((z C) * z), C detached and kept for the next call."""
    state = {"C": torch.zeros(dim, dim)}

    def call(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        z_1, z_2 = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
        c = 0.9 * state["C"].to(z_1.device) + 0.1 * z_1.T @ z_1 / z_1.shape[0]
        state["C"] = c.detach()
        return -(z_1 * z_2).sum(dim=1).mean() + 20.0 * ((z_1 @ c) * z_1).sum(dim=1).mean()
    return call


MOCO_QUEUE = 16384  # a quarter of the paper's K = 65536


def _official_moco_v2(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """The official MoCo code's loss (Algorithm 1): l_pos and l_neg by einsum against a (D, K) queue, concatenated."""
    queue = F.normalize(torch.randn(dim, MOCO_QUEUE), dim=0)

    def call(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        q, k = F.normalize(z_a, dim=1), F.normalize(z_b.detach(), dim=1)
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", q, queue.to(q.device))
        logits = torch.cat([l_pos, l_neg], dim=1) / 0.2
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.int64, device=q.device))
    return call


def _one_hot(labels: torch.Tensor, classes: int, values: torch.Tensor | float) -> torch.Tensor:
    """The official margin heads' (B, C) zeros with ``values`` scattered into the target columns."""
    hot = torch.zeros(len(labels), classes, device=labels.device)
    if isinstance(values, float):
        return hot.scatter_(1, labels[:, None], values)
    return hot.scatter_(1, labels[:, None], values.to(hot.dtype))


def _official_kernel_cosines(dim: int, classes: int) -> tuple[torch.nn.Parameter, Callable[..., torch.Tensor]]:
    """The official margin heads' (D, C) kernel and their cosines: both sides normalised, then one product."""
    kernel = torch.nn.Parameter(torch.randn(dim, classes) * 0.01)

    def cosines(embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=1) @ F.normalize(kernel.to(embeddings.device), dim=0)
    return kernel, cosines


def _official_adaface(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """The official AdaFace head (mk-minchul/AdaFace head.py) as its code runs: the norm statistics, then two
    one-hot (B, C) margin matrices, ``acos`` and ``cos`` of every (B, C) cosine, and the cross-entropy."""
    _, cosines = _official_kernel_cosines(dim, classes)
    stats = {"mean": 20.0, "std": 100.0}

    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = cosines(embeddings).clamp(-1 + 1e-3, 1 - 1e-3)
        norms = embeddings.norm(dim=1, keepdim=True).clip(0.001, 100).clone().detach()
        stats["mean"] = norms.mean().item() * 0.01 + 0.99 * stats["mean"]
        stats["std"] = norms.std().item() * 0.01 + 0.99 * stats["std"]
        scaler = ((norms - stats["mean"]) / (stats["std"] + 1e-3) * 0.333).clip(-1, 1)
        m_arc = _one_hot(labels, classes, 1.0) * (0.4 * scaler * -1)
        theta_m = (cosine.acos() + m_arc).clip(1e-3, math.pi - 1e-3)
        m_cos = _one_hot(labels, classes, 1.0) * (0.4 + 0.4 * scaler)
        return F.cross_entropy((theta_m.cos() - m_cos) * 64.0, labels)
    return call


def _official_curricularface(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """The official CurricularFace head (HuangYG123/CurricularFace) as its code runs: a mask over every (B, C)
    cosine, the hard ones gathered, modulated and written back in place, the targets scattered in."""
    _, cosines = _official_kernel_cosines(dim, classes)
    state = {"t": 0.0}
    m = 0.5

    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = cosines(embeddings).clamp(-1, 1)
        target = cosine[torch.arange(len(labels), device=labels.device), labels].view(-1, 1)
        shifted = target * math.cos(m) - torch.sqrt(1.0 - target ** 2) * math.sin(m)
        mask = cosine > shifted
        final = torch.where(target > math.cos(math.pi - m), shifted, target - math.sin(math.pi - m) * m)
        hard = cosine[mask]
        state["t"] = target.mean().item() * 0.01 + 0.99 * state["t"]
        cosine[mask] = hard * (state["t"] + hard)
        cosine.scatter_(1, labels.view(-1, 1), final)
        return F.cross_entropy(cosine * 64.0, labels)
    return call


def _official_elastic_arcface(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """The official ElasticArcFace head (fdbtrs/ElasticFace utils/losses.py) as its code runs: the drawn margins
    in a one-hot (B, C) matrix, ``acos`` of every cosine in place, the margins added, ``cos`` in place."""
    _, cosines = _official_kernel_cosines(dim, classes)

    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = cosines(embeddings).clamp(-1, 1)
        margin = torch.normal(mean=0.5, std=0.05, size=(len(labels), 1), device=labels.device)
        hot = _one_hot(labels, classes, margin)
        cosine.acos_()
        cosine += hot
        return F.cross_entropy(cosine.cos_().mul_(64.0), labels)
    return call


def _official_magface(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """The official MagFace head and loss (IrvingMeng/MagFace models/magface.py) as its code runs: the margin
    applied to every (B, C) cosine (``sin`` of each), the easy-margin choice, both scaled, a one-hot blend,
    the cross-entropy plus lambda_g mean g(a)."""
    _, cosines = _official_kernel_cosines(dim, classes)

    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x_norm = embeddings.norm(dim=1, keepdim=True).clamp(10, 110)
        margin = (0.8 - 0.45) / (110 - 10) * (x_norm - 10) + 0.45
        cos_theta = cosines(embeddings).clamp(-1, 1)
        sin_theta = torch.sqrt(1.0 - cos_theta ** 2)
        cos_theta_m = torch.where(cos_theta > 0, cos_theta * margin.cos() - sin_theta * margin.sin(), cos_theta)
        one_hot = _one_hot(labels, classes, 1.0)
        output = one_hot * (64.0 * cos_theta_m) + (1.0 - one_hot) * (64.0 * cos_theta)
        return F.cross_entropy(output, labels) + 20.0 * (x_norm / 110 ** 2 + 1 / x_norm).mean()
    return call


def _contra_x_reference(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    classifier, supcon = torch.nn.Linear(dim, classes), pml.SupConLoss(temperature=0.1)

    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        classifier.to(embeddings.device)
        return F.cross_entropy(classifier(embeddings), labels) + supcon(embeddings, labels)
    return call


def _pml_multi_similarity(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    miner, loss = pml_miners.MultiSimilarityMiner(epsilon=0.1), pml.MultiSimilarityLoss()
    return lambda embeddings, labels: loss(embeddings, labels, miner(embeddings, labels))


def _pml_soft_triple(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """PML's SoftTripleLoss plus tau * R computed as the official SoftTriple code does."""
    loss, k = pml.SoftTripleLoss(classes, dim), 10
    pairs = torch.zeros(classes * k, classes * k, dtype=torch.bool)
    for c in range(classes):
        for j in range(k):
            pairs[c * k + j, c * k + j + 1:(c + 1) * k] = True

    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        centres = F.normalize(loss.fc, dim=0)
        gram = centres.T @ centres
        spread = torch.sqrt(2 + 1e-5 - 2 * gram[pairs.to(gram.device)]).sum() / (classes * k * (k - 1))
        return loss(embeddings, labels) + 0.2 * spread
    return call


def _kernel_histogram(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """The histogram loss as a (pairs x nodes) kernel: every pair's triangular weight on each of the 101 nodes."""
    nodes = torch.linspace(-1, 1, 101)

    def histogram(cosines: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - (cosines[:, None] - nodes.to(cosines)).abs() / 0.02).sum(0) / len(cosines)

    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings, dim=1)
        cos, same = x @ x.T, labels[:, None] == labels[None, :]
        upper = torch.ones_like(same).triu(1)
        return (histogram(cos[~same & upper]) * histogram(cos[same & upper]).cumsum(0)).sum()
    return call


def _pml_large_margin_softmax(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """PML's LargeMarginSoftmaxLoss with W started as hvkit's (MSRA, std sqrt(2 / dim)), not standard normal."""
    loss = pml.LargeMarginSoftmaxLoss(classes, dim, margin=4)
    torch.nn.init.kaiming_normal_(loss.W.data, mode="fan_out")  # W is (dim, classes): fan_out = dim
    return loss


def _pml_dynamic_soft_margin(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """PML's DynamicSoftMarginLoss, its histogram detached after each call (it keeps the graph: a second backward
    through the previous call's graph would fail)."""
    loss = pml.DynamicSoftMarginLoss()

    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        value = loss(embeddings, labels)
        loss.hist_ = loss.hist_.detach()
        return value
    return call


def _pml_manifold(dim: int, classes: int) -> Callable[..., torch.Tensor]:
    """PML's ManifoldLoss with 50 proxies: it takes no labels (its meta-classes are drawn at random per call)."""
    loss = pml.ManifoldLoss(dim, K=50)
    return lambda embeddings, labels: loss(embeddings)


XBM_MEMORY = 1024  # two batches of 512: full after the warm-up calls, as it is for most of a run

CASES: list[Case] = [
    Case("vicreg", lambda dim, classes: VICRegLoss(), _pml_vicreg, "PML VICRegLoss", "views"),
    Case("barlow_twins", lambda dim, classes: BarlowTwinsLoss(), _official_barlow_twins,
         "official recipe (BatchNorm1d, strided off-diagonal)", "views"),
    Case("ntxent", lambda dim, classes: NTXentLoss(0.1), _pml_ntxent, "PML NTXentLoss, instance labels",
         "views", batch=256,
         note="256 images (512 embeddings): PML's NTXentLoss builds a (2B, 4B^2) mask, ~20 GB at B=512"),
    Case("dcl", lambda dim, classes: DCLLoss(0.1), _pml_ntxent, "PML NTXentLoss, instance labels (cost reference)",
         "views", batch=256,
         note="PML has no DCL: its NT-Xent over the same 2B x 2B similarities is the like-for-like cost; batch 256 "
              "as ntxent's"),
    Case("supcon", lambda dim, classes: SupConLoss(0.1), lambda dim, classes: pml.SupConLoss(temperature=0.1),
         "PML SupConLoss", "labelled"),
    Case("swav", lambda dim, classes: SwAVLoss(dim, SWAV_PROTOTYPES), _official_swav,
         "official code (PML has none), K 3000", "views",
         note="two views, no queue; ours runs Sinkhorn in float64, the official code in float32"),
    Case("moco_v2", lambda dim, classes: MoCoV2Loss(dim, MOCO_QUEUE), _official_moco_v2,
         "official code's loss (PML has none), queue 16384", "views",
         note="the loss alone, no enqueueing: one (B, K) logit matrix against the queue in both"),
    Case("w_mse", lambda dim, classes: WMSELoss(dim, W_MSE_SIZE), _official_w_mse,
         "official code (PML has none), w_size 256", "views", max_dim=W_MSE_SIZE - 1,
         note="two views, w_iter 1; dims below 256 only: a sub-batch of 256 whitens at most 255 dimensions"),
    Case("tico", lambda dim, classes: TiCoLoss(dim), _official_tico, "Algorithm 1 (PML has none), β 0.9, ρ 20",
         "views", note="stateful in both: each call moves the running covariance"),
    Case("contra_x", lambda dim, classes: ContraXLoss(dim, classes), _contra_x_reference,
         "CE + PML SupConLoss", "labelled"),
    Case("multi_similarity", lambda dim, classes: MultiSimilarityLoss(), _pml_multi_similarity,
         "PML MultiSimilarityMiner + MultiSimilarityLoss", "labelled"),
    Case("triplet", lambda dim, classes: TripletLoss(0.2),
         lambda dim, classes: pml.TripletMarginLoss(margin=0.2, triplets_per_anchor="all"),
         "PML TripletMarginLoss, all triplets", "labelled"),
    Case("triplet_soft", lambda dim, classes: TripletLoss(0.0, soft_margin=True),
         lambda dim, classes: pml.TripletMarginLoss(margin=0.0, smooth_loss=True, triplets_per_anchor="all"),
         "PML TripletMarginLoss smooth_loss, all triplets", "labelled"),
    Case("nbc_softmax", lambda dim, classes: NBCSoftmaxLoss(dim, classes),
         lambda dim, classes: pml.NormalizedSoftmaxLoss(classes, dim),
         "PML NormalizedSoftmaxLoss, same size (cost reference)", "labelled",
         note="NBC-Softmax has no PML counterpart: the reference is a softmax classifier loss of the same size, "
              "i.e. what the cross-entropy part alone costs"),
    Case("sphereface", lambda dim, classes: SphereFaceLoss(dim, classes),
         lambda dim, classes: pml.SphereFaceLoss(classes, dim, margin=4), "PML SphereFaceLoss (no annealing)",
         "labelled"),
    Case("large_margin_softmax", lambda dim, classes: LargeMarginSoftmaxLoss(dim, classes),
         _pml_large_margin_softmax, "PML LargeMarginSoftmaxLoss, W started as ours", "labelled",
         note="weights of the same scale in both: with PML's standard normal W the logits reach thousands at dim "
              "2048, the softmax saturates and its underflowing gradients slow both losses several times"),
    Case("normalized_softmax", lambda dim, classes: NormalizedSoftmaxLoss(dim, classes),
         lambda dim, classes: pml.NormalizedSoftmaxLoss(classes, dim), "PML NormalizedSoftmaxLoss", "labelled"),
    Case("arcface", lambda dim, classes: ArcFaceLoss(dim, classes),
         lambda dim, classes: pml.ArcFaceLoss(classes, dim, margin=28.6479, scale=64), "PML ArcFaceLoss",
         "labelled"),
    Case("subcenter_arcface", lambda dim, classes: SubCenterArcFaceLoss(dim, classes),
         lambda dim, classes: pml.SubCenterArcFaceLoss(num_classes=classes, embedding_size=dim, margin=28.6479,
                                                       scale=64, sub_centers=3),
         "PML SubCenterArcFaceLoss", "labelled"),
    Case("cosface", lambda dim, classes: CosFaceLoss(dim, classes),
         lambda dim, classes: pml.CosFaceLoss(classes, dim, margin=0.35, scale=64), "PML CosFaceLoss", "labelled"),
    Case("adaface", lambda dim, classes: AdaFaceLoss(dim, classes), _official_adaface,
         "the official head's code (PML has none)", "labelled"),
    Case("curricularface", lambda dim, classes: CurricularFaceLoss(dim, classes), _official_curricularface,
         "the official head's code (PML has none)", "labelled"),
    Case("elastic_arcface", lambda dim, classes: ElasticArcFaceLoss(dim, classes), _official_elastic_arcface,
         "the official head's code (PML has none)", "labelled"),
    Case("magface", lambda dim, classes: MagFaceLoss(dim, classes), _official_magface,
         "the official head's code (PML has none)", "labelled"),
    Case("proxy_anchor", lambda dim, classes: ProxyAnchorLoss(dim, classes),
         lambda dim, classes: pml.ProxyAnchorLoss(classes, dim), "PML ProxyAnchorLoss", "labelled"),
    Case("proxy_nca", lambda dim, classes: ProxyNCALoss(dim, classes),
         lambda dim, classes: pml.ProxyNCALoss(classes, dim, softmax_scale=9), "PML ProxyNCALoss, softmax_scale 9",
         "labelled"),
    Case("soft_triple", lambda dim, classes: SoftTripleLoss(dim, classes, tau=0.0),
         lambda dim, classes: pml.SoftTripleLoss(classes, dim), "PML SoftTripleLoss (K 10; tau 0: PML has no R)",
         "labelled"),
    Case("soft_triple_reg", lambda dim, classes: SoftTripleLoss(dim, classes), _pml_soft_triple,
         "PML SoftTripleLoss + the official code's tau * R", "labelled",
         note="PML's SoftTripleLoss has no centre-merging term R; soft_triple_reg adds it to the reference "
              "as the official code computes it, from the (CK, CK) Gram of all centres"),
    Case("circle", lambda dim, classes: CircleLoss(), lambda dim, classes: pml.CircleLoss(), "PML CircleLoss",
         "labelled"),
    Case("contrastive", lambda dim, classes: ContrastiveLoss(0.0, 1.0),
         lambda dim, classes: pml.ContrastiveLoss(0.0, 1.0), "PML ContrastiveLoss, all pairs", "labelled"),
    Case("fast_ap", lambda dim, classes: FastAPLoss(10),
         lambda dim, classes: pml.FastAPLoss(10), "PML FastAPLoss, 10 bins", "labelled"),
    Case("histogram", lambda dim, classes: HistogramLoss(), lambda dim, classes: pml.HistogramLoss(),
         "PML HistogramLoss, 100 bins", "labelled"),
    Case("histogram_kernel", lambda dim, classes: HistogramLoss(), _kernel_histogram,
         "(pairs x nodes) triangular kernels, 100 bins", "labelled",
         note="the same loss with every pair's kernel evaluated on all 101 nodes, "
              "as against scattering each cosine onto its two"),
    Case("smooth_ap", lambda dim, classes: SmoothAPLoss(), lambda dim, classes: pml.SmoothAPLoss(),
         "PML SmoothAPLoss, τ 0.01", "labelled", batch=256,
         note="batch 256: PML's SmoothAPLoss builds several (B, B, B) tensors, 0.5 GB each in float32 at B=512; "
              "it takes the shuffled classes of 4 (equal sizes) but groups by position, a cost reference only"),
    Case("tuplet_margin", lambda dim, classes: TupletMarginLoss(),
         lambda dim, classes: pml.TupletMarginLoss(), "PML TupletMarginLoss, all pairs", "labelled", batch=256,
         note="batch 256: PML's TupletMarginLoss builds (positive pairs x negative pairs) matrices, "
              "4e8 entries each at B=512"),
    Case("angular", lambda dim, classes: AngularLoss(), lambda dim, classes: pml.AngularLoss(),
         "PML AngularLoss, all pairs", "labelled"),
    Case("snr_contrastive", lambda dim, classes: SNRContrastiveLoss(),
         lambda dim, classes: pml.SignalToNoiseRatioContrastiveLoss(), "PML SignalToNoiseRatioContrastiveLoss",
         "labelled", batch=256,
         note="batch 256: PML's SNRDistance builds (B, B, D) differences; its peak is 1.5 GB at B=256, "
              "dim 2048, about 6 GB at B=512"),
    Case("lifted_structure", lambda dim, classes: LiftedStructureLoss(),
         lambda dim, classes: pml.LiftedStructureLoss(), "PML LiftedStructureLoss, all pairs", "labelled", batch=256,
         note="batch 256: PML's LiftedStructureLoss builds (positive pairs x negative pairs) matrices, "
              "4e8 entries each at B=512"),
    Case("generalized_lifted_structure", lambda dim, classes: GeneralizedLiftedStructureLoss(),
         lambda dim, classes: pml.GeneralizedLiftedStructureLoss(), "PML GeneralizedLiftedStructureLoss",
         "labelled"),
    Case("npairs", lambda dim, classes: NPairsLoss(),
         lambda dim, classes: pml.NPairsLoss(
             distance=pml_distances.DotProductSimilarity(normalize_embeddings=False),
             embedding_regularizer=pml_regularizers.LpRegularizer(power=2), embedding_reg_weight=0.002),
         "PML NPairsLoss, raw dot product + LpRegularizer(power=2)", "labelled"),
    Case("ranked_list", lambda dim, classes: RankedListLoss(0.4, 10.0),
         lambda dim, classes: pml.RankedListLoss(margin=0.4, Tn=10.0), "PML RankedListLoss, m 0.4, T_n 10",
         "labelled"),
    Case("pnp", lambda dim, classes: PNPLoss(), lambda dim, classes: pml.PNPLoss(), "PML PNPLoss, variant O",
         "labelled", batch=256,
         note="batch 256: PML's PNPLoss builds several (B, B, B) tensors, 0.5 GB each in float32 at B=512"),
    Case("p2sgrad", lambda dim, classes: P2SGradLoss(dim, classes),
         lambda dim, classes: pml.P2SGradLoss(dim, classes), "PML P2SGradLoss", "labelled"),
    Case("threshold_consistent_margin", lambda dim, classes: ThresholdConsistentMarginLoss(),
         lambda dim, classes: pml.ThresholdConsistentMarginLoss(), "PML ThresholdConsistentMarginLoss, all pairs",
         "labelled", batch=256,
         note="batch 256: PML's ThresholdConsistentMarginLoss gathers both embeddings of every pair, "
              "(B^2, D) tensors, 2 GB each at B=512, dim 2048"),
    Case("dynamic_soft_margin", lambda dim, classes: DynamicSoftMarginLoss(),
         _pml_dynamic_soft_margin, "PML DynamicSoftMarginLoss, all triplets", "labelled",
         note="stateful: each call updates the histogram; PML's keeps its autograd graph, so the reference's "
              "histogram is detached after each call (its second backward would fail)"),
    Case("manifold", lambda dim, classes: ManifoldLoss(dim, classes, num_proxies=50),
         _pml_manifold, "PML ManifoldLoss, K 50", "labelled",
         note="50 proxies in both; PML draws its meta-classes at random per call and ignores the labels"),
    Case("xbm", lambda dim, classes: CrossBatchMemoryLoss(ContrastiveLoss(0.0, 1.0), dim, XBM_MEMORY),
         lambda dim, classes: pml.CrossBatchMemory(pml.ContrastiveLoss(0.0, 1.0), dim, memory_size=XBM_MEMORY),
         "PML CrossBatchMemory(ContrastiveLoss), memory 1024", "labelled",
         note="stateful: each call enqueues the batch, so the memory (1024) is full after the warm-up; "
              "both hand the inner loss the memory as its reference set (ref_emb): a B x M distance matrix"),
    Case("nca", lambda dim, classes: NCALoss(), lambda dim, classes: pml.NCALoss(), "PML NCALoss, softmax_scale 1",
         "labelled"),
    Case("instance", lambda dim, classes: InstanceLoss(), lambda dim, classes: pml.InstanceLoss(),
         "PML InstanceLoss, γ 64", "labelled",
         note="the shuffled classes of 4 are not in PML's order (one sample of each label first, ascending), so "
              "PML's targets and values differ from ours: a cost reference, the work is the same"),
    Case("intra_pair_variance", lambda dim, classes: IntraPairVarianceLoss(),
         lambda dim, classes: pml.IntraPairVarianceLoss(), "PML IntraPairVarianceLoss, all pairs", "labelled"),
    Case("weighted_sum", lambda dim, classes: WeightedSumLoss([TupletMarginLoss(), IntraPairVarianceLoss()]),
         lambda dim, classes: pml.MultipleLosses([pml.TupletMarginLoss(), pml.IntraPairVarianceLoss()]),
         "PML MultipleLosses(TupletMarginLoss, IntraPairVarianceLoss)", "labelled", batch=256,
         note="batch 256: PML's TupletMarginLoss builds (positive pairs x negative pairs) matrices, "
              "4e8 entries each at B=512"),
]


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _time_once(loss: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...],
               device: torch.device, clock: Callable[[], float]) -> float:
    for x in inputs:
        x.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    loss(*inputs).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def measure(case: Case, batch: int, dim: int, repeats: int, warmup: int, device: torch.device,
            clock: Callable[[], float] = time.perf_counter, classes: int | None = None) -> tuple[float, float]:
    """Median seconds of (ours, reference), alternating which goes first in each repeat."""
    batch = case.batch or batch
    torch.manual_seed(0)
    inputs = INPUTS[case.inputs](batch, dim, device)
    classes = num_classes(case.inputs, batch, classes)
    ours = case.ours(dim, classes)
    reference = case.reference(dim, classes)
    if isinstance(ours, torch.nn.Module):
        ours.to(device)
    if isinstance(reference, torch.nn.Module):
        reference.to(device)
    return alternate(lambda: _time_once(ours, inputs, device, clock),
                     lambda: _time_once(reference, inputs, device, clock), repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 2048])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=None, help="case names to run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (all cores)")
    parser.add_argument("--classes", type=int, default=None,
                        help="classes of the classifier losses (default and least: batch / 4, the batch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or process CPU time (with --threads 1: robust to a loaded machine)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if args.only is None or c.name in args.only]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"{args.clock} clock, median of {args.repeats} after {args.warmup} warm-up"
          + (f", classifiers of {args.classes} classes" if args.classes else ""))
    print()
    print("| loss | reference | batch | dim | ours (ms) | reference (ms) | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    notes = []
    for case in cases:
        for dim in [d for d in args.dims if case.max_dim is None or d <= case.max_dim]:
            ours, reference = measure(case, args.batch, dim, args.repeats, args.warmup, device,
                                      CLOCKS[args.clock], args.classes)
            print(f"| {case.name} | {case.reference_name} | {case.batch or args.batch} | {dim} | "
                  f"{ours * 1e3:.2f} | {reference * 1e3:.2f} | {reference / ours:.2f}x |", flush=True)
        if case.note:
            notes.append(f"- {case.name}: {case.note}")
    if notes:
        print()
        print("\n".join(notes))


if __name__ == "__main__":
    main()
