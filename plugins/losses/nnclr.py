"""NNCLR: a view's nearest neighbour in a support set of past embeddings is its positive (Dwibedi et al., ICCV 2021).

Dwibedi, Aytar, Tompson, Sermanet & Zisserman, "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations". With z_i the L2-normalised
embedding of one view of sample i, Q a support set of past unit embeddings,
``NN(z_i, Q) = argmax_{q in Q} z_i . q`` its nearest neighbour (cosine), and p_k the
L2-normalised prediction ``g(z_k^+)`` of the other view by the prediction MLP g, the paper's
Eq. 2 (with the prediction head of its Sec. 3.2 in place of z^+) and the term it adds to
symmetrise it are, over the B x B logits ``s_ik = NN(z_i, Q) . p_k / tau``,

    L_i  = -log( exp(s_ii) / sum_k exp(s_ik) )     (the other view's predictions compete)
    L'_i = -log( exp(s_ii) / sum_k exp(s_ki) )     (the neighbours of the other samples compete)

— SimCLR's InfoNCE across the two views with each anchor replaced by its neighbour. The
neighbour is a constant (an entry of Q, stored without gradient): the gradient reaches the
embeddings through the predictions only. After each training step the step's embeddings enter
Q, first in, first out.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from .._ring_buffer import filled, ring_slots, ring_write
from ._precision import full_precision
from ._views import check_views
from .simsiam import check_predictor_input, checked_prediction_mlp


@torch.no_grad()
def nearest_neighbours(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Each unit row of ``z`` replaced by its most cosine-similar unit row of ``support`` (the first of ties).

    An empty support set leaves ``z`` (detached) as it is: SimCLR's anchor.
    """
    if support.shape[0] == 0:
        return z.detach().clone()
    return support[(z @ support.T).argmax(dim=1)]


def neighbour_info_nce(anchors: torch.Tensor, predictions: torch.Tensor, temperature: float) -> torch.Tensor:
    """``mean_i (L_i + L'_i) / 2`` over ``s_ik = a_i . p_k / tau``: cross-entropy of the rows and of the columns at i.

    ``anchors`` (B, D) are unit neighbours, taken as constants; ``predictions`` (B, D) are L2-normalised here.
    """
    logits = anchors.detach() @ F.normalize(predictions, dim=1).T / temperature
    own = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, own) + F.cross_entropy(logits.T, own)) / 2


class NNCLRLoss(ViewLoss):
    """NNCLR (Dwibedi et al. 2021): each global view's nearest neighbour in a support set must pick the other view.

    ``forward(z_a, z_b, *local_views)``: with ``n_g = NN(z_g / ||z_g||, Q)`` for the two global
    views g and ``p_v = g(z_v)`` the prediction of view v (the two global views, then any
    multi-crop local views, all (B, D)),
    ``L = mean over (g, v), v != g, of (L(n_g, p_v) + L'(n_g, p_v)) / 2``
    (:func:`neighbour_info_nce`): ``(l(n_a, p_b) + l(n_b, p_a)) / 2`` with two views, symmetric in
    them as solo-learn's, VISSL's and lightly's NNCLR, and each local view's prediction
    compared with both global views' neighbours (local views are no anchors: a crop of a letter
    or two has no neighbour among whole words). ``ssl_pretrain`` passes every view of a step in
    one call (:attr:`takes_local_views`), so the support set advances once per step.

    The predictor g (:func:`~.simsiam.prediction_mlp`, ``embedding_dim`` → ``predictor_dim`` →
    ``embedding_dim``, default hidden 4096 as in the paper) is a trainable parameter of this
    loss, applied to each view on its own; ``train.loss_lr`` gives it its own learning rate.

    Support set: the last ``support_size`` normalised first-view embeddings z_a (the paper:
    98,304, 384 batches of 256; scale it to the data), a ring buffer
    (:mod:`hvkit_plugins._ring_buffer`) with the count of embeddings ever written, both buffers,
    so checkpoints hold them. It starts empty, and while it is the neighbour is the embedding
    itself (SimCLR's loss; the paper does not say how it starts, VISSL and solo-learn start
    from random unit vectors, whose neighbours are noise); while partly filled the neighbour is
    sought among the filled entries. Every training-mode call, after its loss, writes the
    batch's z_a over the oldest entries, out of place, so the backward pass keeps the set it
    was computed with; eval-mode calls leave it alone.

    ``needs_global_batch``: across processes the stage gathers the views first, so the
    other view's predictions of the whole global batch are the candidates (the paper's
    negatives) and every rank writes the same gathered z_a: one support set, identical on
    every rank, in the order one process on the whole batch would write it. The predictor's
    BatchNorm then normalises over the global batch. Default ``temperature`` tau = 0.1,
    the paper's. Computed in float32 at least, with autocast off.
    """

    needs_global_batch: ClassVar[bool] = True
    takes_local_views: ClassVar[bool] = True

    def __init__(self, embedding_dim: int, support_size: int = 98304, temperature: float = 0.1,
                 predictor_dim: int = 4096) -> None:
        super().__init__()
        self.predictor = checked_prediction_mlp("nnclr", embedding_dim, predictor_dim, default=4096)
        if support_size < 1:
            raise ValueError(f"nnclr: support_size must be at least 1, got {support_size}; the paper uses 98304")
        if temperature <= 0:
            raise ValueError(f"nnclr: temperature must be > 0, got {temperature}; the paper uses 0.1")
        self.embedding_dim, self.support_size, self.temperature = embedding_dim, support_size, temperature
        self.register_buffer("support", torch.zeros(support_size, embedding_dim))
        self.register_buffer("written", torch.zeros((), dtype=torch.int64))

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, *local_views: torch.Tensor) -> torch.Tensor:
        check_views("nnclr", z_a, z_b, min_batch=2, local_views=local_views)
        check_predictor_input("nnclr", z_a, self.embedding_dim)
        predictions = [self.predictor(z) for z in (z_a, z_b, *local_views)]
        support = filled(self.support, self.written).to(z_a.dtype)
        units = [F.normalize(z.detach(), dim=1) for z in (z_a, z_b)]
        anchors = [nearest_neighbours(u, support) for u in units]
        loss = torch.stack([neighbour_info_nce(n, p, self.temperature) for g, n in enumerate(anchors)
                            for v, p in enumerate(predictions) if v != g]).mean()
        if self.training:
            self._write(units[0])
        return loss

    @torch.no_grad()
    def _write(self, z: torch.Tensor) -> None:
        """The step's unit first-view embeddings over the oldest entries of the support set, out of place."""
        slots = ring_slots(self.written, z.shape[0], self.support_size)
        self.support = ring_write(self.support, z, slots, in_place=False)
        self.written += z.shape[0]
