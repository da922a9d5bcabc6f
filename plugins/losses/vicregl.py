"""VICRegL: VICReg on the pooled features and on matched local features (Bardes, Ponce & LeCun, NeurIPS 2022).

Bardes, Ponce & LeCun, "VICRegL: Self-Supervised Learning of Local Visual Features". Besides the
two views' head outputs z_a, z_b (B, D) the loss takes each view's last backbone feature map; a
local projector (an MLP applied to every map cell, owned by the loss) embeds its N cells as
u (B, N, C'). Two matched sets of local embeddings x, y (B, K, C') are compared slot by slot,
each slot a VICReg problem over the batch (the official code's covariance per slot):

    l(x, y) = 1/K sum_k VICReg(x[:, k], y[:, k]).

Matching a -> b: every cell i of a is paired with its nearest cell NN(i) of b, and the K pairs
of smallest distance are kept, in the order of a's cells (:func:`nearest_pairs`). *Location*
matching measures the distance between the cells' centres in the original image (each view's
crop and affine mapped back), keeping K = ``num_matches``; *feature* matching the distance
||u_a,i - u_b,j|| between the local embeddings, keeping every cell (the official
``l2_all_matches``) or K = ``feature_matches``. With the symmetric means
``L_location = (l(a->b) + l(b->a)) / 2`` and ``L_feature`` likewise,

    L = alpha VICReg(z_a, z_b) + (1 - alpha) (L_location + L_feature),

as the official code (``main_vicregl.py``: ``global_loss``, ``local_loss``, ``_local_loss``).
Every VICReg is hvkit's ``vicreg`` with the weights lambda, mu, nu/2: the official code averages the
two views' covariance terms as it does their variance terms (the VICReg paper sums them).

Multi-crop (the official ConvNeXt setting: 2 global views of 224 px, 6 local of 96 px): views
1, 2 global, 3 … V local (V = 2 + k). The official code sums over the 2 (V - 1) ordered pairs
(i, j), i in {1, 2}, j != i: (1, 2) and (2, 1), and each global view with each local view; a
local view is never paired with a local view. Globally, the invariance is averaged over those
pairs and the variance and covariance over the V views, each view once:

    G = lambda / (2V - 2) [2 s(z_1, z_2) + sum_{g, l} s(z_g, z_l)]
        + mu / V sum_v v(z_v) + nu / V sum_v c(z_v),

and locally, with L(a, b) = L_location + L_feature as above (symmetric in a, b),

    L_local = [2 L(1, 2) + sum_{g, l} L(g, l)] / (2V - 2),        L = alpha G + (1 - alpha) L_local.

With V = 2 both are the two-view terms. In a pair (g, l) the matches from the global view's cells
keep ``num_matches`` (feature: ``feature_matches``), those from the local view's cells keep
``local_matches`` (the official ``--num_matches 20 4``: 20 of a 7 x 7 map's 49 cells, 4 of a 3 x 3
map's 9); feature matching from a local view keeps every cell when ``feature_matches`` is None (the
official ``l2_all_matches``), else ``local_matches``. Between the two global views both directions
keep ``num_matches``, as in the two-view loss (the official code keeps 4 in the second direction
there too). The official code before its issue #6 fix overwrote, instead of summing, the local
term of each pair; this is the fixed code's sum.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views
from .vicreg import VICRegLoss, covariance_term, invariance_term, variance_term


@torch.no_grad()
def nearest_pairs(distances: torch.Tensor, num_matches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(queries, partners)`` (B, K) from distances (B, N, M): each query's nearest candidate, K best kept.

    ``partners[b, k]`` is the candidate nearest to query ``queries[b, k]``; the K = ``num_matches``
    queries (all N if None) whose nearest distance is smallest are kept, listed in query order.
    Ties go to the lower index.
    """
    nearest, partner = distances.min(dim=2)
    n = distances.shape[1]
    if num_matches is None or num_matches == n:
        queries = torch.arange(n, device=distances.device).expand(distances.shape[0], n)
    else:
        queries = torch.sort(nearest, dim=1, stable=True).indices[:, :num_matches].sort(dim=1).values
    return queries, partner.gather(1, queries)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, k]]`` for (B, N, C) ``x`` and (B, K) ``index``: (B, K, C)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))


class VICRegLLoss(ViewLoss):
    """VICRegL (Bardes et al. 2022): VICReg on the pooled outputs plus VICReg on matched map cells.

    ``forward(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b))``, given by ``ssl_pretrain``
    (:attr:`takes_feature_maps`): the head outputs (B, D), the backbone's last feature maps
    (B, ``map_channels``, h, w) and each cell centre's (x, y) in the original image (B, h, w, 2).
    With multi-crop (:attr:`takes_local_views`, ``ssl_pretrain``'s ``local_views``: k > 0) every
    view of the step comes in one call, ``forward(z_1, z_2, *local, maps=(m_1, m_2, *local_maps),
    positions=(p_1, p_2, *local_positions))``, global views first, each map at its own size, and the
    pairs are the official code's (module docstring). ``alpha`` 0.75 weighs the global term (the
    paper's ResNet-50 setting; 0.9 trades segmentation for classification). ``matching``: ``both``
    (the paper), ``location`` or ``feature`` alone (the paper's ablations); without positions (a
    transform that cannot say where its views came from) only ``feature`` works. ``num_matches``
    location matches per direction (the paper: 20 of a 7 x 7 map's 49 cells; scale it with the
    map), at most the cells of a global map; ``feature_matches`` likewise for feature matching,
    None for every cell (the official default). ``local_matches``: the matches kept from a local
    view's cells (the official 4 of a 3 x 3 map's 9), at most the cells of a local map.
    ``local_dims``: the local projector, Linear-BatchNorm-ReLU layers then a last Linear without
    bias, applied to every cell (its BatchNorm over the batch's cells of one view at a time; the
    paper's 512-512-512). ``invariance_weight``, ``variance_weight``, ``covariance_weight``:
    VICReg's 25, 25, 1 (the covariance averaged over the views, see the module docstring). The
    projector is this loss's parameter, trained with the encoder (``train.loss_lr`` sets its own
    learning rate). Computed in float32 at least, with autocast off.

    Multi-crop on the VICRegL recipe (``small_cnn`` at 64 px: 8 x 8 global maps; 32 px local views:
    4 x 4): ``hvkit run recipes/losses/vicregl.yaml --set stages.pretrain.local_views=2``, and
    ``--set stages.pretrain.loss.local_matches=7`` for the official share of a local map's cells.
    """

    needs_global_batch: ClassVar[bool] = True
    takes_feature_maps: ClassVar[bool] = True
    takes_local_views: ClassVar[bool] = True

    def __init__(self, map_channels: int, alpha: float = 0.75,
                 matching: Literal["both", "location", "feature"] = "both", num_matches: int = 20,
                 feature_matches: int | None = None, local_matches: int = 4,
                 local_dims: list[int] = [512, 512, 512],
                 invariance_weight: float = 25.0, variance_weight: float = 25.0,
                 covariance_weight: float = 1.0) -> None:
        super().__init__()
        if map_channels < 1:
            raise ValueError(f"vicregl: map_channels must be at least 1, got {map_channels}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"vicregl: alpha must lie in [0, 1], got {alpha}; the paper uses 0.75")
        if matching not in ("both", "location", "feature"):
            raise ValueError(f"vicregl: matching must be 'both', 'location' or 'feature', got {matching!r}; "
                             "the paper uses both")
        if num_matches < 1 or (feature_matches is not None and feature_matches < 1):
            raise ValueError(f"vicregl: num_matches={num_matches} and feature_matches={feature_matches} must be "
                             "at least 1; the paper keeps 20 location matches of 49 cells and every feature match")
        if local_matches < 1:
            raise ValueError(f"vicregl: local_matches={local_matches} must be at least 1; the official code keeps "
                             "4 of a local view's 9 cells")
        if not local_dims or min(local_dims) < 1:
            raise ValueError(f"vicregl: local_dims={local_dims} must list at least one width >= 1; "
                             "the paper uses [512, 512, 512]")
        for name, value, paper in (("invariance_weight", invariance_weight, 25),
                                   ("variance_weight", variance_weight, 25),
                                   ("covariance_weight", covariance_weight, 1)):
            if value < 0:
                raise ValueError(f"vicregl: {name} must be >= 0, got {value}; the paper uses {paper}")
        self.map_channels, self.alpha, self.matching = map_channels, alpha, matching
        self.num_matches, self.feature_matches, self.local_matches = num_matches, feature_matches, local_matches
        self.vicreg = VICRegLoss(invariance_weight, variance_weight, covariance_weight / 2)
        layers: list[nn.Module] = []
        for width_in, width in zip([map_channels, *local_dims[:-1]], local_dims[:-1]):
            layers += [nn.Linear(width_in, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        self.projector = nn.Sequential(*layers, nn.Linear(([map_channels] + local_dims)[-2], local_dims[-1],
                                                          bias=False))

    def local_embeddings(self, maps: torch.Tensor) -> torch.Tensor:
        """The local projector on every cell of a (B, C, h, w) map: (B, h w, C'), cells in raster order."""
        b, c = maps.shape[:2]
        cells = self.projector(maps.flatten(2).transpose(1, 2).reshape(-1, c))
        return cells.view(b, -1, cells.shape[1])

    def local_vicreg(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``1/K sum_k VICReg(x[:, k], y[:, k])`` over the K match slots of (B, K, C') ``x`` and ``y``.

        The invariance and variance terms' means over the slots are those of the flattened
        (B, K C') slots, computed at once; the covariance is taken slot by slot.
        """
        v, slots = self.vicreg, x.shape[1]
        variance = (variance_term(x.flatten(1), v.gamma, v.eps) + variance_term(y.flatten(1), v.gamma, v.eps)) / 2
        covariance = sum(covariance_term(x[:, k]) + covariance_term(y[:, k]) for k in range(slots)) / slots
        return (v.invariance_weight * invariance_term(x, y) + v.variance_weight * variance
                + v.covariance_weight * covariance)

    def matched(self, u_a: torch.Tensor, u_b: torch.Tensor, distances: torch.Tensor,
                matches_a: int | None, matches_b: int | None) -> torch.Tensor:
        """``(l(a -> b) + l(b -> a)) / 2`` for the distances (B, N_a, N_b) between the cells of a and b.

        a -> b keeps ``matches_a`` of a's cells, b -> a ``matches_b`` of b's (None: every cell).
        """
        total = u_a.new_zeros(())
        for x, y, d, k in ((u_a, u_b, distances, matches_a), (u_b, u_a, distances.transpose(1, 2), matches_b)):
            queries, partners = nearest_pairs(d, k)
            total = total + self.local_vicreg(_rows(x, queries), _rows(y, partners))
        return total / 2

    def pair_local(self, u_a: torch.Tensor, u_b: torch.Tensor, p_a: torch.Tensor | None, p_b: torch.Tensor | None,
                   b_is_local: bool = False) -> torch.Tensor:
        """``L(a, b) = L_location + L_feature`` for views a (global) and b, their cells' (B, N, C') and (B, N, 2)."""
        local = u_a.new_zeros(())
        if self.matching != "feature":
            back = self.local_matches if b_is_local else self.num_matches
            local = local + self.matched(u_a, u_b, (p_a[:, :, None] - p_b[:, None]).square().sum(3),
                                         self.num_matches, back)
        if self.matching != "location":
            with torch.no_grad():
                distances = torch.cdist(u_a, u_b)
            back = self.local_matches if b_is_local and self.feature_matches is not None else self.feature_matches
            local = local + self.matched(u_a, u_b, distances, self.feature_matches, back)
        return local

    def global_vicreg(self, views: list[torch.Tensor]) -> torch.Tensor:
        """``G``: invariance over the official pairs (1, 2), (2, 1), (g, l); variance, covariance over the views."""
        v, (z_1, z_2, *local) = self.vicreg, views
        pairs = [(z_1, z_2), (z_2, z_1)] + [(g, z) for g in (z_1, z_2) for z in local]
        invariance = sum(invariance_term(a, b) for a, b in pairs) / len(pairs)
        variance = sum(variance_term(z, v.gamma, v.eps) for z in views) / len(views)
        covariance = sum(covariance_term(z) for z in views) / len(views)
        return (v.invariance_weight * invariance + v.variance_weight * variance
                + 2 * v.covariance_weight * covariance)  # v.covariance_weight is nu / 2

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, *local_views: torch.Tensor,
                maps: tuple[torch.Tensor, ...] | None = None,
                positions: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        check_views("vicregl", z_a, z_b, min_batch=2, local_views=local_views)
        if maps is None:
            raise ValueError("vicregl: needs the views' feature maps, forward(z_a, z_b, maps=(m_a, m_b), "
                             "positions=...); ssl_pretrain gives them to a loss that takes_feature_maps")
        self._check(z_a, len(local_views), maps, positions)
        u = [self.local_embeddings(m.to(z_a.dtype)) for m in maps]
        p = [None] * len(u) if positions is None else [q.to(z_a.dtype).flatten(1, 2) for q in positions]
        if not local_views:  # equal to the general form below, whose gradient differs in the last bit: kept bit-stable
            return self.alpha * self.vicreg(z_a, z_b) + (1 - self.alpha) * self.pair_local(u[0], u[1], p[0], p[1])
        pairs = [(0, j) for j in range(2, len(u))] + [(1, j) for j in range(2, len(u))]
        local = 2 * self.pair_local(u[0], u[1], p[0], p[1])
        for i, j in pairs:
            local = local + self.pair_local(u[i], u[j], p[i], p[j], b_is_local=True)
        local = local / (2 + len(pairs))
        return self.alpha * self.global_vicreg([z_a, z_b, *local_views]) + (1 - self.alpha) * local

    def _check(self, z_a: torch.Tensor, num_local: int, maps: tuple[torch.Tensor, ...],
               positions: tuple[torch.Tensor, ...] | None) -> None:
        views = 2 + num_local
        if len(maps) != views or any(m.ndim != 4 or m.shape[:2] != (z_a.shape[0], self.map_channels) for m in maps):
            raise ValueError(f"vicregl: maps must be {views} (B, {self.map_channels}, h, w) maps, one per view, for "
                             f"a batch of {z_a.shape[0]}, got {[tuple(m.shape) for m in maps]}; "
                             "set map_channels to the backbone's")
        cells = min(m.shape[2] * m.shape[3] for m in maps[:2])
        location, feature = self.matching != "feature", self.matching != "location"
        wanted = [k for k, on in ((self.num_matches, location), (self.feature_matches, feature))
                  if on and k is not None]
        if wanted and max(wanted) > cells:
            size = "x".join(map(str, min(maps[:2], key=lambda m: m.shape[2] * m.shape[3]).shape[2:]))
            raise ValueError(f"vicregl: num_matches={self.num_matches} (feature_matches={self.feature_matches}) "
                             f"exceeds the {cells} cells of a {size} feature map; keep at most {cells} "
                             "(the paper: 20 of 49)")
        if num_local and (location or (feature and self.feature_matches is not None)):
            small = min(maps[2:], key=lambda m: m.shape[2] * m.shape[3])
            if self.local_matches > small.shape[2] * small.shape[3]:
                raise ValueError(f"vicregl: local_matches={self.local_matches} exceeds the "
                                 f"{small.shape[2] * small.shape[3]} cells of a local view's "
                                 f"{small.shape[2]}x{small.shape[3]} feature map; lower local_matches or raise "
                                 "local_size (the official code: 4 of 9)")
        if not location:
            return
        if positions is None:
            raise ValueError(f"vicregl: matching={self.matching!r} needs each map cell's position in the original "
                             "image, but the transform (or local_transform) gives none; use one with with_geometry "
                             "(handwriting_views) or set matching: feature")
        if len(positions) != views:
            raise ValueError(f"vicregl: {len(positions)} positions for {views} views; give one (B, h, w, 2) per view")
        for m, p in zip(maps, positions):
            if p.shape != (m.shape[0], *m.shape[2:], 2):
                raise ValueError(f"vicregl: positions of shape {tuple(p.shape)} for a map of shape {tuple(m.shape)}; "
                                 "expected (B, h, w, 2)")
