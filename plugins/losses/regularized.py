"""A metric loss plus regularisers of the embeddings and of the loss's class weights (PML's regularizers)."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

from hvkit.api import Component, MetricLoss

from ._classifier import LENGTH_EPS, cosine_matrix

EmbeddingRegularizer = Literal["lp", "zero_mean"]
WeightRegularizer = Literal["regular_face", "center_invariant", "sparse_centers", "lp"]


def _rows(weights: torch.Tensor) -> torch.Tensor:
    """(C, D) or (C, K, D) class weights as (C K, D) rows."""
    return weights.reshape(-1, weights.shape[-1])


def lp_regularizer(rows: torch.Tensor, p: float = 2.0, power: float = 1.0) -> torch.Tensor:
    """``mean_i ||x_i||_p ** power`` over the rows of (N, D) or (C, K, D): PML's LpRegularizer.

    On embeddings, the N-pair loss's L2 penalty (Sohn 2016: p 2, power 2, weight 0.002); on class
    weights, a penalty on their lengths.
    """
    norms = torch.linalg.vector_norm(_rows(rows), ord=p, dim=1)
    return (norms if power == 1 else norms ** power).mean()


def zero_mean_regularizer(embeddings: torch.Tensor) -> torch.Tensor:
    """``mean_i |sum_d x_id|`` over (N, D): PML's ZeroMeanRegularizer (each embedding's components sum to 0)."""
    return embeddings.sum(dim=1).abs().mean()


def regular_face(weights: torch.Tensor) -> torch.Tensor:
    """RegularFace's exclusive regulariser (Zhao et al., CVPR 2019) of class weights (C, D) or (C, K, D).

        R = mean_i max_{j of another class} cos(w_i, w_j)

    pushes each class weight away from its nearest rival; the nearest is chosen without gradient,
    so the gradient is that of the chosen cosines alone. With one weight per class this is PML's
    RegularFaceRegularizer (value and gradient). With K sub-centres per class the mean is over
    all C K of them and a rival is a sub-centre of another class: PML, given the (C K, D) matrix,
    would count a class's own other sub-centres as rivals too and push them apart.
    """
    rows = _rows(weights)
    per_class = 1 if weights.ndim == 2 else weights.shape[1]
    unit = F.normalize(rows, dim=1, eps=LENGTH_EPS)
    with torch.no_grad():
        cosines = unit @ unit.T
        owner = torch.arange(len(rows), device=rows.device) // per_class
        cosines.masked_fill_(owner[:, None] == owner[None, :], torch.finfo(cosines.dtype).min)
        nearest = cosines.max(dim=1).indices
    return (unit * unit[nearest]).sum(dim=1).mean()


def center_invariant(weights: torch.Tensor) -> torch.Tensor:
    """Center-invariant regulariser (Wu et al., "Deep Face Recognition with Center Invariant Loss", 2017).

        R = mean_i (||w_i||^2 - mean_j ||w_j||^2)^2 / 4

    over the C (or C K) class weights: all classes get the same length, so that the classes with
    many samples do not take the larger ones. PML's CenterInvariantRegularizer (the paper sums
    over i where PML, and hvkit, average).
    """
    squared = _rows(weights).pow(2).sum(dim=1)
    return ((squared - squared.mean()) ** 2 / 4).mean()


def sparse_centers(centres: torch.Tensor) -> torch.Tensor:
    """SoftTriple's centre-merging regulariser (Qian et al., ICCV 2019) of K >= 2 centres per class (C, K, D).

        R = sum_c sum_{k<k'} sqrt(2 + tiny - min(2 cos(w_ck, w_ck'), 2)) / (C K (K-1))

    (``tiny`` the dtype's smallest normal number), pulling a class's centres together so that
    redundant ones merge: PML's SparseCentersRegularizer with its DivisorReducer. ``soft_triple``'s
    own ``tau`` term is the official code's form (eps 1e-5, no clamp); with ``tau: 0`` and this
    regulariser it is PML's SoftTripleLoss with a SparseCentersRegularizer. Two coinciding centres
    have an infinite gradient, as in PML.
    """
    classes, k, _ = centres.shape
    first, second = torch.triu_indices(k, k, offset=1, device=centres.device)
    cosines = cosine_matrix(centres, centres)[:, first, second]  # (C, K (K-1) / 2)
    tiny = torch.finfo(cosines.dtype).tiny
    return torch.sqrt(2.0 + tiny - (2.0 * cosines).clamp(max=2)).sum() / (classes * k * (k - 1))


def _lp_options(kind: str, name: str | None, p: float | None, power: float | None) -> dict[str, float]:
    """The options of an ``lp`` regulariser (default p 2, power 1); an error for options given to another."""
    if name != "lp":
        given = [f"{kind}_{o}" for o, v in (("p", p), ("power", power)) if v is not None]
        if given:
            raise ValueError(f"regularized: {' and '.join(given)} only apply to {kind}_regularizer: lp, "
                             f"got {kind}_regularizer: {name}")
        return {}
    p, power = 2.0 if p is None else p, 1.0 if power is None else power
    if p <= 0 or power <= 0:
        raise ValueError(f"regularized: {kind}_p and {kind}_power must be positive, got {p} and {power}")
    return {"p": p, "power": power}


def _check_name(kind: str, name: str | None, choices: tuple[str, ...]) -> None:
    if name is not None and name not in choices:
        raise ValueError(f"regularized: {kind}_regularizer must be one of {', '.join(choices)}, got {name!r}")


EMBEDDING_REGULARIZERS: dict[str, Callable[..., torch.Tensor]] = {
    "lp": lp_regularizer, "zero_mean": zero_mean_regularizer}
WEIGHT_REGULARIZERS: dict[str, Callable[..., torch.Tensor]] = {
    "regular_face": regular_face, "center_invariant": center_invariant, "sparse_centers": sparse_centers,
    "lp": lp_regularizer}


class RegularizedLoss(MetricLoss):
    """A metric loss plus regularisers: ``L = L_loss + λ_e R_e(embeddings) + λ_w R_w(W)`` (PML's regularizers).

    ``loss`` is any metric loss spec (``{name: arcface, margin: 0.5}``), built with the stage's
    context; λ_e = ``embedding_reg_weight``, λ_w = ``weight_reg_weight`` (default 1, PML's). Each
    regulariser is PML's, value and gradient, with its reduction (see the functions above):

    - ``embedding_regularizer``: ``lp`` (mean_i ||x_i||_p ** power; ``embedding_p`` 2,
      ``embedding_power`` 1) or ``zero_mean`` (mean_i |sum_d x_id|), on the embeddings the loss
      gets — not on a reference set's. ``metric_train`` L2-normalises embeddings before the loss
      by default, which makes an ``lp`` penalty with p 2 constant (any p a function of the direction
      alone): an embedding ``lp`` is meaningful with ``normalize: false``.
    - ``weight_regularizer``, on the inner loss's class weights W: ``regular_face`` (Zhao et al.
      2019: mean over classes of the largest cosine to another class's weight), ``center_invariant``
      (Wu et al. 2017: the variance of the squared weight lengths, / 4), ``sparse_centers``
      (SoftTriple's merging of each class's K centres; only for a loss with K >= 2 centres per
      class, e.g. ``soft_triple`` with ``tau: 0``, ``subcenter_arcface``) or ``lp`` (``weight_p``,
      ``weight_power``).

    The inner loss offers its class weights through one method, ``class_weights() -> Tensor``: (C,
    D), or (C, K, D) with K centres per class, a view of its parameter so that the gradient reaches
    it. hvkit's classifier and proxy losses have it (``arcface``, ``cosface``, ``subcenter_arcface``,
    ``sphereface``, ``large_margin_softmax``, ``normalized_softmax``, ``nbc_softmax``, ``contra_x``,
    ``proxy_anchor``, ``proxy_nca``, ``p2sgrad``, ``soft_triple``, ``manifold`` — its proxies);
    a weight regulariser on a loss without it is refused when built. A miner's ``indices_tuple``,
    ``needs_global_batch``, ``accepts_reference`` and ``reads_norms`` are the inner loss's. ``terms()`` gives the
    inner loss's detached value (``loss``), its own terms, and the unweighted ``embedding_reg`` and
    ``weight_reg``. The regularisers run in at least float32, with autocast off. Equal, value and
    gradient, to a PML loss given ``embedding_regularizer=``, ``weight_regularizer=`` and their
    weights, but for ``regular_face`` on sub-centres (see :func:`regular_face`).
    """

    def __init__(self, loss: Component["loss"], embedding_regularizer: EmbeddingRegularizer | None = None,
                 embedding_reg_weight: float = 1.0, weight_regularizer: WeightRegularizer | None = None,
                 weight_reg_weight: float = 1.0, embedding_p: float | None = None,
                 embedding_power: float | None = None, weight_p: float | None = None,
                 weight_power: float | None = None) -> None:
        super().__init__()
        if not isinstance(loss, MetricLoss):
            raise ValueError(f"regularized: loss must be a metric loss (embeddings, labels), got {type(loss).__name__}")
        _check_name("embedding", embedding_regularizer, tuple(EMBEDDING_REGULARIZERS))
        _check_name("weight", weight_regularizer, tuple(WEIGHT_REGULARIZERS))
        if embedding_regularizer is None and weight_regularizer is None:
            raise ValueError("regularized: name an embedding_regularizer or a weight_regularizer (or both); "
                             "without one use the loss alone")
        if embedding_reg_weight < 0 or weight_reg_weight < 0:
            raise ValueError(f"regularized: embedding_reg_weight and weight_reg_weight must be >= 0, got "
                             f"{embedding_reg_weight} and {weight_reg_weight}")
        self.embedding_options = _lp_options("embedding", embedding_regularizer, embedding_p, embedding_power)
        self.weight_options = _lp_options("weight", weight_regularizer, weight_p, weight_power)
        self.loss = loss
        self.embedding_regularizer, self.embedding_reg_weight = embedding_regularizer, embedding_reg_weight
        self.weight_regularizer, self.weight_reg_weight = weight_regularizer, weight_reg_weight
        if weight_regularizer is not None:
            self._check_class_weights()
        self.needs_global_batch = bool(loss.needs_global_batch)
        self.accepts_reference = bool(loss.accepts_reference)
        self.reads_norms = bool(loss.reads_norms)
        self._terms: dict[str, torch.Tensor] = {}

    def _check_class_weights(self) -> None:
        """Raise ValueError unless the inner loss has class weights that suit the weight regulariser."""
        name = getattr(self.loss, "loss_name", type(self.loss).__name__)
        if not callable(getattr(self.loss, "class_weights", None)):
            raise ValueError(f"regularized: weight_regularizer {self.weight_regularizer} needs class weights, and "
                             f"the loss {name} has none (no class_weights() method)")
        weights = self.loss.class_weights()
        if weights.ndim not in (2, 3):
            raise ValueError(f"regularized: {name}.class_weights() must give (C, D) or (C, K, D), got "
                             f"{tuple(weights.shape)}")
        if self.weight_regularizer == "sparse_centers" and (weights.ndim != 3 or weights.shape[1] < 2):
            raise ValueError(f"regularized: weight_regularizer sparse_centers merges several centres per class, and "
                             f"the loss {name} has one (class weights {tuple(weights.shape)}); use soft_triple or "
                             "subcenter_arcface, or another regularizer")
        if self.weight_regularizer == "regular_face" and weights.shape[0] < 2:
            raise ValueError(f"regularized: weight_regularizer regular_face needs at least 2 classes, the loss "
                             f"{name} has {weights.shape[0]}")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        reference = {}
        if ref_emb is not None or ref_labels is not None:
            if not self.accepts_reference:
                raise ValueError(f"regularized: the loss {type(self.loss).__name__} takes no reference set "
                                 "(ref_emb, ref_labels)")
            reference = {"ref_emb": ref_emb, "ref_labels": ref_labels}
        value = self.loss(embeddings, labels, indices_tuple, **reference)
        inner_terms = self.loss.terms() if callable(getattr(self.loss, "terms", None)) else {}
        terms = {"loss": value.detach(), **inner_terms}
        with torch.autocast(embeddings.device.type, enabled=False):
            if self.embedding_regularizer is not None:
                x = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
                reg = EMBEDDING_REGULARIZERS[self.embedding_regularizer](x, **self.embedding_options)
                terms["embedding_reg"] = reg.detach()
                value = value + self.embedding_reg_weight * reg
            if self.weight_regularizer is not None:
                reg = WEIGHT_REGULARIZERS[self.weight_regularizer](self.loss.class_weights(), **self.weight_options)
                terms["weight_reg"] = reg.detach()
                value = value + self.weight_reg_weight * reg
        self._terms = terms
        return value

    def terms(self) -> dict[str, torch.Tensor]:
        """The last call's detached inner ``loss``, its terms and the unweighted ``embedding_reg``, ``weight_reg``."""
        return dict(self._terms)
