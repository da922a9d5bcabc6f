"""P2SGrad: the cosine-space MSE whose gradient is the paper's refined one (Zhang et al., CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._classifier import check_sizes
from ._precision import full_precision
from ._proxies import ProxyLoss


class P2SGradLoss(ProxyLoss):
    """P2SGrad: the squared distance of the class cosines to the one-hot target (Zhang et al. 2019).

    With ``cos θ_ij`` the cosine of embedding x_i and class weight w_j, y_i the sample's class,
    B samples and C classes:

        L = 1/(B C) sum_i sum_j (cos θ_ij - 1[j = y_i])^2

    Its gradients are 2/(B C) times the paper's Eq. 11, ``dL/dx_i = sum_j (cos θ_ij - 1[j = y_i])
    d cos θ_ij / dx_i`` and the same for each w_j: the probability-to-similarity gradient, with
    no scale or margin to tune (the paper's point), the cosines differentiated through both
    normalisations. The class weights (the parameter ``proxies``, (num_classes, embedding_dim),
    float32) start uniform in [-1, 1] and L2-normalised, as in PML and in Xin Wang's code it
    adapts; give them their own rate with ``train.loss_lr``. Value and embedding gradient equal
    pytorch-metric-learning's P2SGradLoss (whose weight ``W`` is our ``proxies`` transposed).
    PML renormalises ``W`` in place before each call, outside autograd, so its weight gradient
    is ``x̂_i`` times the residual, unprojected; here it is the paper's, that gradient's
    component tangent to the unit sphere (equal to PML's where the two coincide, on unit
    weights), and the weights are never rewritten. A miner is refused. The loss is a batch mean:
    each rank's share suffices (no global batch).
    """

    loss_name = "p2sgrad"

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        check_sizes(embedding_dim, num_classes, loss=self.loss_name)
        super().__init__(F.normalize(torch.empty(num_classes, embedding_dim).uniform_(-1, 1), dim=1))

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        cos = self.cosines(embeddings, labels, indices_tuple).clamp(-1, 1)
        return F.mse_loss(cos, F.one_hot(labels, self.num_classes).to(cos.dtype))
