"""MagFace: the margin grows with the embedding's magnitude, which learns image quality (Meng et al., CVPR 2021)."""

from __future__ import annotations

import torch

from ._classifier import AdditiveMarginLoss, cos_plus
from ._precision import full_precision


class MagFaceLoss(AdditiveMarginLoss):
    """MagFace: ArcFace with a margin that grows with the embedding's norm, and a regulariser on that norm
    (Meng, Zhao, Huang & Zhang 2021).

    With ``a = clamp(||z||, l_a, u_a)`` the magnitude of the (unnormalised) embedding, the margin is
    ``m(a) = l_m + (u_m - l_m) (a - l_a) / (u_a - l_a)``. The target logit is ``s cos(theta_y + m(a))`` where
    ``cos theta_y > 0`` and ``s cos theta_y`` elsewhere (the official code's easy margin); the others are
    ``s cos theta_j``. The loss is the mean cross-entropy plus ``lambda_g mean(g(a))``,
    ``g(a) = a / u_a^2 + 1 / a``, which pushes the magnitudes up. The larger margin of a large magnitude
    then pulls confident images closer to their class centre, so the norm comes to rank image quality.
    Gradients reach the magnitudes through both terms, inside [l_a, u_a]; outside it the clamp stops
    them, so the embeddings should start near that range (the official ResNets' do; a small head's
    norms of a few units sit at ``l_a``, where MagFace is ArcFace with the margin ``l_m``). Defaults
    l_a 10, u_a 110, l_m 0.45, u_m 0.8, s 64, lambda_g 20 are the official code's (the paper reports 35).
    The embeddings keep their norm (``reads_norms``). ``terms()`` gives the two parts. See
    :class:`AdditiveMarginLoss` for the class weights and a miner's ``indices_tuple``, which weighs the
    cross-entropy only.
    """

    loss_name = "magface"
    reads_norms = True

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, l_a: float = 10.0,
                 u_a: float = 110.0, l_margin: float = 0.45, u_margin: float = 0.8, lambda_g: float = 20.0) -> None:
        if not 0 < l_a < u_a:
            raise ValueError(f"magface: the magnitude bounds need 0 < l_a < u_a (the paper: 10 and 110), got "
                             f"l_a={l_a}, u_a={u_a}")
        if not 0 <= l_margin <= u_margin < 1.5:
            raise ValueError(f"magface: the margins need 0 <= l_margin <= u_margin < 1.5 rad (the paper: 0.45 "
                             f"and 0.8), got l_margin={l_margin}, u_margin={u_margin}")
        if lambda_g < 0:
            raise ValueError(f"magface: lambda_g must be non-negative (the code uses 20), got {lambda_g}")
        super().__init__(embedding_dim, num_classes, l_margin, scale)
        self.l_a, self.u_a, self.l_margin, self.u_margin, self.lambda_g = l_a, u_a, l_margin, u_margin, lambda_g
        self._terms: dict[str, torch.Tensor] = {}

    def magnitudes(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The (B, 1) magnitudes ``a``, clamped to [l_a, u_a]."""
        return embeddings.norm(dim=1, keepdim=True).clamp(self.l_a, self.u_a)

    def target_cosine(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        a = self.magnitudes(embeddings)
        m = self.l_margin + (self.u_margin - self.l_margin) * (a - self.l_a) / (self.u_a - self.l_a)
        return torch.where(cosine > 0, cos_plus(cosine, m), cosine)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        identity = super().forward(embeddings, labels, indices_tuple)
        a = self.magnitudes(embeddings.to(self.weight.dtype))
        magnitude = (a / self.u_a ** 2 + 1 / a).mean()
        self._terms = {"identity": identity.detach(), "magnitude": magnitude.detach()}
        return identity + self.lambda_g * magnitude

    def terms(self) -> dict[str, torch.Tensor]:
        """The last call's detached ``identity`` (the cross-entropy) and (unweighted) ``magnitude`` (mean g(a))."""
        return dict(self._terms)
