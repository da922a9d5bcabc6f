"""W-MSE: the normalised MSE of whitened views (Ermolov, Siarohin, Sangineto & Sebe, ICML 2021).

Ermolov et al., "Whitening for Self-Supervised Representation Learning". The views' embeddings
are whitened batch-wise, which scatters them to an identity covariance so they cannot
collapse, and the views of each image are then pulled together by the normalised MSE
``||a / |a| - b / |b| ||^2 = 2 - 2 cos(a, b)``; no negatives are needed.

Whitening as the official code does it (github.com/htdt/self-supervised, ``methods/w_mse.py``
and ``methods/whitening.py``): a random permutation splits the B images into B / w sub-batches
of w = ``w_size`` images, and each sub-batch of each view v is whitened on its own, X its
(w, D) rows:

    mu = mean(X),  Sigma = (X - mu)^T (X - mu) / (w - 1),  L L^T = (1 - eps) Sigma + eps I  (Cholesky),
    whiten(X) = (X - mu) L^{-T}                                                (identity covariance at eps 0)

with the gradient through mu, Sigma and L. Over every pair of the V views and ``w_iter`` such
partitions, each drawn anew,

    L = 1 / (w_iter V (V - 1) / 2) sum_partitions sum_{i < j} mean_b (2 - 2 cos(whiten(z_i)_b, whiten(z_j)_b)).
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views


def whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cholesky whitening of each (..., n, D) block of rows: ``(X - mu) L^{-T}``, ``L L^T = (1 - eps) Sigma + eps I``.

    Sigma is the block's unbiased covariance. Raises ValueError where a covariance is not
    positive definite (fewer than D + 1 rows, or collapsed embeddings, with eps 0).
    """
    rows, dim = x.shape[-2:]
    centred = x - x.mean(dim=-2, keepdim=True)
    covariance = centred.mT @ centred / (rows - 1)
    covariance = covariance.lerp(torch.eye(dim, dtype=x.dtype, device=x.device), eps)
    factor, info = torch.linalg.cholesky_ex(covariance)
    if info.any():
        raise ValueError(f"w_mse: the covariance of {rows} embeddings in {dim} dimensions is not positive "
                         "definite (collapsed or linearly dependent embeddings); set eps > 0, e.g. 1e-4")
    return torch.linalg.solve_triangular(factor.mT, centred, upper=True, left=False)


class WMSELoss(ViewLoss):
    """W-MSE (Ermolov et al. 2021): 2 - 2 cos between the views of each image after batch whitening.

    ``forward(z_a, z_b, *local_views)``: every view of a step in one call
    (:attr:`takes_local_views`), as the official code takes its ``num_samples`` views: one
    partition per ``w_iter`` shared by all views, every pair of views compared (W-MSE 4 is
    four views, local views included; ``ssl_pretrain``'s other losses never compare two local
    views). Each view's sub-batches are whitened separately, as the official code's final
    version (:func:`whiten`); ``joint_whitening`` whitens the V views' rows of a sub-batch
    together instead (V w rows, one mean and one matrix for all views, as the repository's first
    version did with one sub-batch): the loss is then invariant to any invertible linear map of the embeddings, where
    separate whitening is invariant to maps whose Cholesky factor it undoes (upper-triangular
    ones, in row-vector form) and per-view shifts.

    Defaults are the official code's: ``w_iter`` 1, ``eps`` 0; ``w_size`` None takes the whole
    batch as one sub-batch (its ``--w_size`` unset; the paper: 128 of a batch of 256 for CIFAR,
    256 for the larger sets, with embeddings of 64 and 128). A sub-batch needs more rows than
    the D dimensions (``w_size`` >= D + 1), else its covariance is singular, unless ``eps`` > 0
    shrinks it towards the identity. The partition of the k-th call is
    ``randperm(B, generator seeded seed + k)``, ``seed`` drawn from torch's global generator
    when the loss is built (so it follows the recipe's seed and is the same on every process)
    and the call count k kept, with it, in buffers a checkpoint holds: a resumed run draws the
    same partitions, and every process the same (the stage gathers the global batch,
    ``needs_global_batch``). A single sub-batch draws none. Computed in float32 at least, with
    autocast off.
    """

    takes_local_views = True

    def __init__(self, embedding_dim: int, w_size: int | None = None, w_iter: int = 1, eps: float = 0.0,
                 joint_whitening: bool = False) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"w_mse: embedding_dim must be at least 1, got {embedding_dim}")
        if not 0 <= eps < 1:
            raise ValueError(f"w_mse: eps must lie in [0, 1), got {eps}; the paper uses 0")
        if w_size is not None and w_size < 2:
            raise ValueError(f"w_mse: w_size must be at least 2, got {w_size}; the paper uses 128")
        if w_size is not None and w_size <= embedding_dim and eps == 0:
            raise ValueError(f"w_mse: w_size = {w_size} must exceed embedding_dim = {embedding_dim}, or the "
                             "sub-batch covariance is singular; the paper uses w_size 128 for 64 dimensions "
                             "(or set eps > 0)")
        if w_iter < 1:
            raise ValueError(f"w_mse: w_iter must be at least 1, got {w_iter}; the paper uses 1")
        self.embedding_dim, self.w_size, self.w_iter = embedding_dim, w_size, w_iter
        self.eps, self.joint_whitening = eps, joint_whitening
        self.register_buffer("seed", torch.randint(2 ** 31, ()))
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, *local_views: torch.Tensor) -> torch.Tensor:
        check_views("w_mse", z_a, z_b, min_batch=2, local_views=local_views)
        views = torch.stack([z_a, z_b, *local_views])
        count, batch, dim = views.shape
        if dim != self.embedding_dim:
            raise ValueError(f"w_mse: views have {dim} features but embedding_dim = {self.embedding_dim}; "
                             "set embedding_dim to the head's out_dim")
        size = self.w_size or batch
        if batch % size:
            raise ValueError(f"w_mse: a batch of {batch} does not split into sub-batches of w_size = {size}; "
                             "use a batch size that is a multiple of w_size")
        rows = size * count if self.joint_whitening else size
        if rows <= dim and self.eps == 0:
            raise ValueError(f"w_mse: sub-batches of {rows} embeddings cannot be whitened in {dim} dimensions "
                             f"(their covariance is singular); whiten at least {dim + 1} (a larger batch or "
                             "w_size) or set eps > 0")
        total = z_a.new_zeros(())
        for _ in range(self.w_iter):
            blocks = views[:, self._partition(batch, views.device)] if size < batch else views
            blocks = blocks.view(count, batch // size, size, dim)
            if self.joint_whitening:
                joint = blocks.transpose(0, 1).reshape(batch // size, count * size, dim)
                white = whiten(joint, self.eps).view(batch // size, count, size, dim).transpose(0, 1)
            else:
                white = whiten(blocks, self.eps)
            unit = F.normalize(white, dim=-1).reshape(count, batch, dim)
            for i, j in combinations(range(count), 2):
                total = total + 2 - 2 * (unit[i] * unit[j]).sum(dim=-1).mean()
        return total / (self.w_iter * count * (count - 1) // 2)

    def _partition(self, batch: int, device: torch.device) -> torch.Tensor:
        """This call's random order of the batch, from the generator seeded ``seed + draws``; one draw on."""
        generator = torch.Generator().manual_seed(int(self.seed) + int(self.draws))
        self.draws += 1
        return torch.randperm(batch, generator=generator).to(device)
