"""ElasticFace: ArcFace's and CosFace's margins drawn afresh for every sample (Boutros et al., CVPR-W 2022)."""

from __future__ import annotations

import torch

from ._classifier import AdditiveMarginLoss, cos_plus
from .arcface import check_angular_margin
from .cosface import check_cosine_margin


class _ElasticMargin(AdditiveMarginLoss):
    """The margin of each target drawn from N(``margin``, ``std``) at every forward in training mode (from
    torch's generator, which the trainer seeds and checkpoints); in eval mode the mean ``margin``.

    ``plus`` is the paper's ElasticFace+: the batch's draws sorted and dealt by the targets' cosines, the
    largest margin to the sample farthest from its class centre (lowest ``cos theta_y``), the smallest to
    the nearest, so the push grows with how far a sample still is. (The official code gathers the sorted
    margins by the cosines' sort order, ``margin[order]``, which deals them so only when that permutation
    is its own inverse; here each sample gets the margin of its own rank.)"""

    def __init__(self, embedding_dim: int, num_classes: int, margin: float, scale: float, std: float,
                 plus: bool) -> None:
        if not 0 <= std < 1:
            raise ValueError(f"{self.loss_name}: std is the margins' standard deviation, in [0, 1) (the paper uses "
                             f"0.05), got {std}")
        super().__init__(embedding_dim, num_classes, margin, scale)
        self.std, self.plus = std, plus

    def margins(self, cosine: torch.Tensor) -> torch.Tensor:
        """(B, 1) margins, one a target, from the (B, 1) target cosines."""
        if not self.training or self.std == 0:
            return torch.full_like(cosine, self.margin)
        drawn = torch.normal(self.margin, self.std, cosine.shape, dtype=cosine.dtype, device=cosine.device)
        if not self.plus:
            return drawn
        rank = cosine.detach().argsort(dim=0, descending=True)  # rank[k]: the sample k-th nearest its centre
        return torch.empty_like(drawn).scatter_(0, rank, drawn.sort(dim=0).values)


class ElasticArcFaceLoss(_ElasticMargin):
    """ElasticFace-Arc: target logit ``s cos(theta_y + m_i)``, ``m_i ~ N(m, std)`` a sample (Boutros et al. 2022).

    The others are ``s cos theta_j``, and the loss is the mean cross-entropy. A margin drawn for each sample
    at each step, in place of ArcFace's fixed one, relaxes the fixed decision boundary the paper argues
    against. As in the paper's code, there is no fallback past ``theta_y = pi - m_i`` (ArcFace's has one);
    ``sin theta`` is clamped under its root as in ``arcface`` (:func:`cos_plus`). ``plus: true`` is ElasticFace-Arc+
    (:class:`_ElasticMargin`). Defaults m 0.5, s 64, std 0.05 are the paper's. See :class:`AdditiveMarginLoss`
    for the weights and a miner's ``indices_tuple``.
    """

    loss_name = "elastic_arcface"

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.5, scale: float = 64.0,
                 std: float = 0.05, plus: bool = False) -> None:
        check_angular_margin(margin)
        super().__init__(embedding_dim, num_classes, margin, scale, std, plus)

    def target_cosine(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return cos_plus(cosine, self.margins(cosine))


class ElasticCosFaceLoss(_ElasticMargin):
    """ElasticFace-Cos: target logit ``s (cos theta_y - m_i)``, ``m_i ~ N(m, std)`` a sample (Boutros et al. 2022).

    The others are ``s cos theta_j``, and the loss is the mean cross-entropy: CosFace with a margin drawn for
    each sample at each step; ``plus: true`` is ElasticFace-Cos+ (:class:`_ElasticMargin`). Defaults m 0.35, s 64,
    std 0.05 are the paper's. See :class:`AdditiveMarginLoss` for the weights and a miner's ``indices_tuple``.
    """

    loss_name = "elastic_cosface"

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.35, scale: float = 64.0,
                 std: float = 0.05, plus: bool = False) -> None:
        check_cosine_margin(margin, self.loss_name)
        super().__init__(embedding_dim, num_classes, margin, scale, std, plus)

    def target_cosine(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return cosine - self.margins(cosine)
