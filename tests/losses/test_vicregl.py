"""VICRegL: matching and loss (two views and multi-crop) against a float64 loop reference of the official code,
hand cases, errors, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hvkit.testing import check_loss
from hvkit_plugins.losses.vicreg import VICRegLoss
from hvkit_plugins.losses.vicregl import VICRegLLoss, nearest_pairs


def _grid(batch: int, h: int, w: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Cell centres of an (h, w) map over the whole image, (B, h, w, 2) normalised (x, y)."""
    ys = torch.tensor([(2 * i + 1) / h - 1 for i in range(h)], dtype=dtype)
    xs = torch.tensor([(2 * j + 1) / w - 1 for j in range(w)], dtype=dtype)
    return torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], -1).expand(batch, h, w, 2)


def _inputs(b: int, d: int, c: int, h: int, w: int, dtype: torch.dtype, seed: int = 0, h_b: int | None = None):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(b, d, generator=g, dtype=torch.float64)
    z_b = 0.6 * z_a + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64)
    h_b = h if h_b is None else h_b
    m_a = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    m_b = torch.randn(b, c, h_b, w, generator=g, dtype=torch.float64)
    m_b[:, :, :min(h, h_b)] += m_a[:, :, :min(h, h_b)]
    zoom = 0.6 + 0.4 * torch.rand(b, 1, 1, 1, generator=g, dtype=torch.float64)
    shift = 0.3 * torch.randn(b, 1, 1, 2, generator=g, dtype=torch.float64)
    p_a, p_b = _grid(b, h, w), zoom * _grid(b, h_b, w) + shift
    leaves = [t.to(dtype).requires_grad_() for t in (z_a, z_b, m_a, m_b)]
    return leaves, (p_a.to(dtype), p_b.to(dtype))


def _loss(c: int, dtype: torch.dtype = torch.float64, **kwargs) -> VICRegLLoss:
    torch.manual_seed(0)
    loss = VICRegLLoss(c, **{"local_dims": [5, 3], **kwargs}).to(dtype)
    for m in loss.projector:  # non-trivial BatchNorm affine parameters
        if isinstance(m, nn.BatchNorm1d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return loss


# --- the float64 reference, in loops, from the official code (main_vicregl.py) ---------------------

def _ref_embed(loss: VICRegLLoss, maps: torch.Tensor) -> list[list[torch.Tensor]]:
    """The projector cell by cell (raster order), each BatchNorm over every cell of the batch (train mode)."""
    b, c, h, w = maps.shape
    rows = [maps[i, :, y, x] for i in range(b) for y in range(h) for x in range(w)]
    for layer in loss.projector:
        if isinstance(layer, nn.Linear):
            rows = [layer.weight.double() @ r + (0 if layer.bias is None else layer.bias.double()) for r in rows]
        elif isinstance(layer, nn.BatchNorm1d):
            mean = sum(rows) / len(rows)
            var = sum((r - mean) ** 2 for r in rows) / len(rows)
            rows = [(r - mean) / torch.sqrt(var + layer.eps) * layer.weight.double() + layer.bias.double()
                    for r in rows]
        else:
            rows = [torch.relu(r) for r in rows]
    return [rows[i * h * w:(i + 1) * h * w] for i in range(b)]


def _ref_vicreg(x: list[torch.Tensor], y: list[torch.Tensor], lam: float, mu: float, nu: float) -> torch.Tensor:
    """The official ``_vicreg_loss`` for one slot: B vectors a view; variance and covariance averaged over views."""
    n, d = len(x), x[0].shape[0]
    inv = sum(((x[i] - y[i]) ** 2).sum() for i in range(n)) / (n * d)

    def var_cov(z):
        mean = sum(z) / n
        zc = [v - mean for v in z]
        std = [torch.sqrt(sum(v[j] ** 2 for v in zc) / (n - 1) + 1e-4) for j in range(d)]
        cov = sum((sum(v[j] * v[k] for v in zc) / (n - 1)) ** 2 for j in range(d) for k in range(d) if j != k)
        return sum(torch.relu(1 - s) for s in std) / d, cov / d

    (v_x, c_x), (v_y, c_y) = var_cov(x), var_cov(y)
    return lam * inv + mu * (v_x + v_y) / 2 + nu * (c_x + c_y) / 2


def _ref_matches(dist, n_q: int, n_c: int, keep: int | None) -> list[tuple[int, int]]:
    """Each query's nearest candidate (lowest index on ties), the ``keep`` nearest pairs, in query order."""
    best = []
    for i in range(n_q):
        j = min(range(n_c), key=lambda j: (float(dist(i, j).detach()), j))
        best.append((float(dist(i, j).detach()), i, j))
    kept = sorted(best)[:keep if keep is not None else n_q]
    return sorted((i, j) for _, i, j in kept)


def _ref_direction(u_x, u_y, dist_fn, keep, weights) -> torch.Tensor:
    """Slot k holds each sample's k-th kept match; the mean over slots of the per-slot VICReg."""
    pairs = [_ref_matches(lambda i, j: dist_fn(s, i, j), len(u_x[s]), len(u_y[s]), keep) for s in range(len(u_x))]
    slots = len(pairs[0])
    return sum(_ref_vicreg([u_x[s][pairs[s][k][0]] for s in range(len(u_x))],
                           [u_y[s][pairs[s][k][1]] for s in range(len(u_x))], *weights)
               for k in range(slots)) / slots


def _reference(loss: VICRegLLoss, z_a, z_b, m_a, m_b, p_a, p_b, alpha, num_matches, feature_matches=None,
               matching="both", weights=(25.0, 25.0, 1.0)) -> torch.Tensor:
    z_a, z_b, m_a, m_b, p_a, p_b = (t.double() for t in (z_a, z_b, m_a, m_b, p_a, p_b))
    glob = _ref_vicreg(list(z_a), list(z_b), *weights)
    u_a, u_b = _ref_embed(loss, m_a), _ref_embed(loss, m_b)
    q_a, q_b = p_a.flatten(1, 2), p_b.flatten(1, 2)
    local = 0
    if matching != "feature":
        local = local + (_ref_direction(u_a, u_b, lambda s, i, j: ((q_a[s, i] - q_b[s, j]) ** 2).sum(),
                                        num_matches, weights)
                         + _ref_direction(u_b, u_a, lambda s, i, j: ((q_b[s, i] - q_a[s, j]) ** 2).sum(),
                                          num_matches, weights)) / 2
    if matching != "location":
        local = local + (_ref_direction(u_a, u_b, lambda s, i, j: torch.dist(u_a[s][i], u_b[s][j]),
                                        feature_matches, weights)
                         + _ref_direction(u_b, u_a, lambda s, i, j: torch.dist(u_b[s][i], u_a[s][j]),
                                          feature_matches, weights)) / 2
    return alpha * glob + (1 - alpha) * local


# --- tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    {"b": 6, "d": 4, "c": 3, "h": 3, "w": 3, "alpha": 0.75, "num_matches": 4},
    {"b": 5, "d": 3, "c": 4, "h": 2, "w": 3, "alpha": 0.4, "num_matches": 6, "feature_matches": 3},
    {"b": 4, "d": 5, "c": 2, "h": 3, "w": 2, "alpha": 0.9, "num_matches": 2, "h_b": 2},  # maps of two sizes
])
def test_value_and_gradient_against_the_loop_reference(dtype, case):
    case = dict(case)
    b, d, c, h, w, h_b = (case.pop(k, None) for k in ("b", "d", "c", "h", "w", "h_b"))
    (z_a, z_b, m_a, m_b), (p_a, p_b) = _inputs(b, d, c, h, w, dtype, h_b=h_b)
    loss = _loss(c, dtype, **case)
    ours = loss(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b))
    ref = _reference(loss, z_a, z_b, m_a, m_b, p_a, p_b, **case)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.double(), ref, **tol)
    leaves = (z_a, z_b, m_a, m_b, *loss.parameters())
    for g_ours, g_ref in zip(torch.autograd.grad(ours, leaves), torch.autograd.grad(ref, leaves)):
        torch.testing.assert_close(g_ours.double(), g_ref.double(), **tol)


@pytest.mark.parametrize("matching", ["location", "feature"])
def test_one_matching_alone_against_the_reference(matching):
    (z_a, z_b, m_a, m_b), (p_a, p_b) = _inputs(5, 3, 3, 3, 3, torch.float64, seed=3)
    loss = _loss(3, matching=matching, num_matches=5, invariance_weight=2.0, variance_weight=3.0,
                 covariance_weight=4.0)
    ours = loss(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b))
    ref = _reference(loss, z_a, z_b, m_a, m_b, p_a, p_b, 0.75, 5, matching=matching, weights=(2.0, 3.0, 4.0))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_nearest_pairs_on_a_hand_computed_case():
    distances = torch.tensor([[[0.5, 0.2, 0.9], [0.1, 0.4, 0.3], [0.7, 0.8, 0.6]]])
    # nearest: query 0 -> 1 (0.2), query 1 -> 0 (0.1), query 2 -> 2 (0.6)
    assert [t.tolist() for t in nearest_pairs(distances)] == [[[0, 1, 2]], [[1, 0, 2]]]
    assert [t.tolist() for t in nearest_pairs(distances, 2)] == [[[0, 1]], [[1, 0]]]  # the two nearest, query order
    assert [t.tolist() for t in nearest_pairs(distances, 1)] == [[[1]], [[0]]]
    ties = torch.tensor([[[0.3, 0.3], [0.3, 0.1], [0.3, 0.3]]])
    assert [t.tolist() for t in nearest_pairs(ties, 2)] == [[[0, 1]], [[0, 1]]]  # ties: the lower index


def test_location_matching_pairs_the_cells_that_show_the_same_place():
    """View b is view a's left half zoomed 2x: each cell of b lies on a cell of a; its invariance pairs those."""
    b, c = 4, 3
    g = torch.Generator().manual_seed(0)
    m_a = torch.randn(b, c, 2, 4, generator=g, dtype=torch.float64)
    m_b = m_a[:, :, :, :2].repeat_interleave(2, dim=3)  # cell (i, j) of b shows cell (i, j // 2) of a
    p_a = _grid(b, 2, 4)
    p_b = _grid(b, 2, 4) * torch.tensor([0.5, 1.0], dtype=torch.float64) - torch.tensor([0.5, 0.0], dtype=torch.float64)
    # b's cell centres: x in {-0.875, -0.625, -0.375, -0.125}; a's in {-0.75, -0.25, 0.25, 0.75}
    loss = _loss(c, matching="location", num_matches=8, local_dims=[c])
    nn.init.eye_(loss.projector[0].weight)  # local embeddings = the cells themselves
    queries, partners = nearest_pairs(torch.cdist(p_b.flatten(1, 2), p_a.flatten(1, 2)))
    assert partners[0].tolist() == [0, 0, 1, 1, 4, 4, 5, 5]
    u_a, u_b = loss.local_embeddings(m_a), loss.local_embeddings(m_b)
    x = u_b.gather(1, queries[..., None].expand(-1, -1, c))
    y = u_a.gather(1, partners[..., None].expand(-1, -1, c))
    torch.testing.assert_close(x, y)  # b -> a pairs identical cells: no invariance cost


def test_local_vicreg_is_the_mean_of_hvkits_vicreg_over_the_slots():
    loss = _loss(3, covariance_weight=3.0)
    g = torch.Generator().manual_seed(4)
    x, y = (torch.randn(7, 5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    per_slot = VICRegLoss(25.0, 25.0, 1.5)
    expected = torch.stack([per_slot(x[:, k], y[:, k]) for k in range(5)]).mean()
    torch.testing.assert_close(loss.local_vicreg(x, y), expected, rtol=1e-12, atol=1e-12)


def test_local_embeddings_are_the_projector_on_each_cell_in_raster_order():
    loss = _loss(3)
    maps = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    rows = _ref_embed(loss, maps)
    torch.testing.assert_close(loss.local_embeddings(maps), torch.stack([torch.stack(r) for r in rows]))


def test_alpha_one_is_the_official_global_vicreg():
    (z_a, z_b, m_a, m_b), (p_a, p_b) = _inputs(8, 5, 3, 3, 3, torch.float64)
    loss = _loss(3, alpha=1.0, num_matches=5)
    value = loss(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b))
    torch.testing.assert_close(value, _ref_vicreg(list(z_a), list(z_b), 25.0, 25.0, 1.0), rtol=1e-12, atol=1e-12)
    # the VICReg paper's sum of the two covariance terms is ν/2 more per view than the official average
    torch.testing.assert_close(value, VICRegLoss(covariance_weight=0.5)(z_a, z_b), rtol=1e-12, atol=1e-12)


def test_gradcheck():
    (z_a, z_b, m_a, m_b), (p_a, p_b) = _inputs(4, 3, 2, 2, 2, torch.float64, seed=5)
    loss = _loss(2, num_matches=3, local_dims=[3])
    assert torch.autograd.gradcheck(lambda z, m: loss(z, z_b, maps=(m, m_b), positions=(p_a, p_b)), (z_a, m_a))


def test_symmetric_in_the_views():
    (z_a, z_b, m_a, m_b), (p_a, p_b) = _inputs(6, 4, 3, 3, 3, torch.float64, seed=6)
    loss = _loss(3, num_matches=5)
    torch.testing.assert_close(loss(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b)),
                               loss(z_b, z_a, maps=(m_b, m_a), positions=(p_b, p_a)), rtol=1e-12, atol=1e-12)


def test_runs_in_float32_under_autocast():
    (z_a, z_b, m_a, m_b), (p_a, p_b) = _inputs(8, 4, 3, 3, 3, torch.float32)
    loss = _loss(3, torch.float32, num_matches=5)
    plain = loss(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(z_a.bfloat16(), z_b.bfloat16(), maps=(m_a, m_b), positions=(p_a, p_b))
        exact = loss(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b))
    assert mixed.dtype == torch.float32 and exact.dtype == torch.float32
    assert exact == plain  # autocast off inside
    torch.testing.assert_close(mixed, plain, rtol=2e-2, atol=1e-3)


def _train(conv: nn.Module, head: nn.Module, loss: VICRegLLoss, views, positions: tuple) -> list[float]:
    """30 Adam steps of encoder ``conv`` → mean pool → ``head`` on fresh ``views()``; the finite loss values."""
    optimiser = torch.optim.Adam([*conv.parameters(), *head.parameters(), *loss.parameters()], lr=1e-2)
    values = []
    for _ in range(30):
        maps = [conv(v) for v in views()]
        value = loss(*(head(m.mean((2, 3))) for m in maps), maps=tuple(maps), positions=positions)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        values.append(value.item())
    assert all(math.isfinite(v) for v in values)
    return values


def test_training_lowers_the_loss():
    """A 1x1-conv encoder of two noisy views of random 3 x 3 images: the loss falls as it learns."""
    torch.manual_seed(0)
    images = torch.randn(24, 6, 3, 3)
    conv, head = nn.Conv2d(6, 8, 1), nn.Linear(8, 8)
    loss = VICRegLLoss(8, num_matches=4, local_dims=[8, 8])
    positions = (_grid(24, 3, 3, torch.float32),) * 2
    values = _train(conv, head, loss, lambda: [images + 0.3 * torch.randn_like(images) for _ in range(2)], positions)
    assert sum(values[-5:]) < 0.8 * sum(values[:5]), values


def test_conformance():
    check_loss(VICRegLLoss, {"local_dims": [16, 8]})
    check_loss(VICRegLLoss, {"matching": "feature", "feature_matches": 10, "local_dims": [8]})


def test_without_positions_only_feature_matching_works():
    (z_a, z_b, m_a, m_b), _ = _inputs(6, 4, 3, 3, 3, torch.float64)
    with pytest.raises(ValueError, match="vicregl: matching='both' needs each map cell's position"):
        _loss(3, num_matches=5)(z_a, z_b, maps=(m_a, m_b))
    value = _loss(3, matching="feature")(z_a, z_b, maps=(m_a, m_b))
    assert torch.isfinite(value)


def test_forward_errors():
    (z_a, z_b, m_a, m_b), (p_a, p_b) = _inputs(6, 4, 3, 3, 3, torch.float64)
    with pytest.raises(ValueError, match=r"vicregl: num_matches=20 .* exceeds the 9 cells of a 3x3 feature map"):
        _loss(3)(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b))
    with pytest.raises(ValueError, match="feature_matches=10"):
        _loss(3, matching="feature", feature_matches=10)(z_a, z_b, maps=(m_a, m_b))
    with pytest.raises(ValueError, match="vicregl: needs the views' feature maps"):
        _loss(3, num_matches=5)(z_a, z_b)
    with pytest.raises(ValueError, match="set map_channels to the backbone's"):
        _loss(4, num_matches=5)(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b))
    with pytest.raises(ValueError, match=r"expected \(B, h, w, 2\)"):
        _loss(3, num_matches=5)(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b[:, :2]))
    with pytest.raises(ValueError, match="vicregl: needs a batch of at least 2"):
        _loss(3, num_matches=5)(z_a[:1], z_b[:1], maps=(m_a[:1], m_b[:1]), positions=(p_a[:1], p_b[:1]))


@pytest.mark.parametrize("kwargs,message", [
    ({"map_channels": 0}, "map_channels"),
    ({"alpha": 1.5}, "alpha must lie in"),
    ({"matching": "nearest"}, "matching must be"),
    ({"num_matches": 0}, "num_matches=0"),
    ({"feature_matches": 0}, "feature_matches=0"),
    ({"local_dims": []}, "local_dims"),
    ({"local_dims": [8, 0]}, "local_dims"),
    ({"invariance_weight": -1.0}, "invariance_weight must be >= 0"),
    ({"covariance_weight": -1.0}, "covariance_weight must be >= 0"),
])
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=f"^vicregl: .*{message}"):
        VICRegLLoss(**{"map_channels": 4, **kwargs})


def test_the_positions_of_identity_views_make_location_matching_pair_each_cell_with_itself():
    p = _grid(3, 3, 3)
    queries, partners = nearest_pairs(torch.cdist(p.flatten(1, 2), p.flatten(1, 2)), 9)
    assert torch.equal(queries, torch.arange(9).expand(3, 9)) and torch.equal(partners, queries)


# --- multi-crop: 2 global and k local views, against the official code's pairs in loops ------------

def _ref_var_cov(z: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One view's variance and covariance terms (B vectors), the official ``global_loss``'s per view."""
    n, d = len(z), z[0].shape[0]
    mean = sum(z) / n
    zc = [v - mean for v in z]
    std = [torch.sqrt(sum(v[j] ** 2 for v in zc) / (n - 1) + 1e-4) for j in range(d)]
    cov = sum((sum(v[j] * v[k] for v in zc) / (n - 1)) ** 2 for j in range(d) for k in range(d) if j != k)
    return sum(torch.relu(1 - s) for s in std) / d, cov / d


def _multi_inputs(b: int, d: int, c: int, global_hw, local_hw, dtype: torch.dtype, seed: int = 0):
    """Two global views over most of the image, local views on small parts of it: maps of their own sizes."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, d, generator=g, dtype=torch.float64)
    zs = [0.7 * base + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(2 + len(local_hw))]
    ms, ps = [], []
    for i, (h, w) in enumerate([*global_hw, *local_hw]):
        ms.append(torch.randn(b, c, h, w, generator=g, dtype=torch.float64))
        zoom = (0.8 if i < 2 else 0.25) + 0.2 * torch.rand(b, 1, 1, 1, generator=g, dtype=torch.float64)
        shift = (0.1 if i < 2 else 0.5) * (2 * torch.rand(b, 1, 1, 2, generator=g, dtype=torch.float64) - 1)
        ps.append((zoom * _grid(b, h, w) + shift).to(dtype))
    return [t.to(dtype).requires_grad_() for t in zs], [t.to(dtype).requires_grad_() for t in ms], ps


def _reference_views(loss: VICRegLLoss, zs, ms, ps, alpha, num_matches, local_matches=4, feature_matches=None,
                     matching="both", weights=(25.0, 25.0, 1.0)) -> torch.Tensor:
    """The official ``global_loss`` and ``local_loss`` (after its issue #6 fix) over 2 global and k local views.

    Ordered pairs (i, j), i one of the two global views, j any other view, as the official loops;
    in ``_local_loss(i, j)`` the matches from i's cells keep ``num_matches`` (``feature_matches``),
    those from j's cells ``local_matches`` when j is a local view (feature: only if
    ``feature_matches`` is set), else the same as from i's.
    """
    zs, ms, ps = ([t.double() for t in ts] for ts in (zs, ms, ps))
    lam, mu, nu = weights
    ordered = [(i, j) for i in range(2) for j in range(len(zs)) if j != i]
    invariance = sum(((zs[i] - zs[j]) ** 2).mean() for i, j in ordered) / len(ordered)
    var_cov = [_ref_var_cov(list(z)) for z in zs]
    glob = (lam * invariance + mu * sum(v for v, _ in var_cov) / len(zs)
            + nu * sum(c for _, c in var_cov) / len(zs))
    us = [_ref_embed(loss, m) for m in ms]
    qs = [p.flatten(1, 2) for p in ps]

    def loc(x, y):
        return lambda s, i, j: ((qs[x][s, i] - qs[y][s, j]) ** 2).sum()

    def feat(x, y):
        return lambda s, i, j: torch.dist(us[x][s][i], us[y][s][j])

    local = 0
    for i, j in ordered:
        if matching != "feature":
            back = local_matches if j >= 2 else num_matches
            local = local + (_ref_direction(us[i], us[j], loc(i, j), num_matches, weights)
                             + _ref_direction(us[j], us[i], loc(j, i), back, weights)) / 2
        if matching != "location":
            back = local_matches if j >= 2 and feature_matches is not None else feature_matches
            local = local + (_ref_direction(us[i], us[j], feat(i, j), feature_matches, weights)
                             + _ref_direction(us[j], us[i], feat(j, i), back, weights)) / 2
    return alpha * glob + (1 - alpha) * local / len(ordered)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    {"local_hw": [(2, 2), (2, 2)], "alpha": 0.75, "num_matches": 4, "local_matches": 2},
    {"local_hw": [(2, 2)], "alpha": 0.4, "num_matches": 5, "local_matches": 3, "feature_matches": 3},
    {"local_hw": [(1, 3), (2, 2), (2, 1)], "alpha": 0.6, "num_matches": 3, "local_matches": 1},  # sizes differ
])
def test_multi_crop_value_and_gradient_against_the_official_pairs(dtype, case):
    """Global maps 3 x 3, local maps smaller: every term, its pairing and its weights against the loop reference."""
    case = dict(case)
    zs, ms, ps = _multi_inputs(5, 4, 3, [(3, 3), (3, 3)], case.pop("local_hw"), dtype)
    loss = _loss(3, dtype, **case)
    ours = loss(*zs, maps=tuple(ms), positions=tuple(ps))
    ref = _reference_views(loss, zs, ms, ps, **case)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.double(), ref, **tol)
    leaves = (*zs, *ms, *loss.parameters())
    grads = torch.autograd.grad(ours, leaves)
    for g_ours, g_ref in zip(grads, torch.autograd.grad(ref, leaves)):
        torch.testing.assert_close(g_ours.double(), g_ref.double(), **tol)
    assert all(g.abs().sum() > 0 for g in grads[2:len(zs)] + grads[len(zs) + 2:2 * len(zs)])  # the local views learn


@pytest.mark.parametrize("matching", ["location", "feature"])
def test_multi_crop_one_matching_alone_against_the_reference(matching):
    zs, ms, ps = _multi_inputs(5, 3, 3, [(3, 3), (2, 3)], [(2, 2), (2, 2)], torch.float64, seed=7)
    kwargs = {"num_matches": 4, "local_matches": 2, "feature_matches": None if matching == "location" else 4}
    loss = _loss(3, matching=matching, invariance_weight=2.0, variance_weight=3.0, covariance_weight=4.0, **kwargs)
    ours = loss(*zs, maps=tuple(ms), positions=tuple(ps))
    ref = _reference_views(loss, zs, ms, ps, 0.75, matching=matching, weights=(2.0, 3.0, 4.0), **kwargs)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_the_multi_crop_reference_without_local_views_is_the_two_view_loss():
    """k = 0: the official pairs (1, 2) and (2, 1) give the two-view loss, which the loss computes unchanged."""
    zs, ms, ps = _multi_inputs(6, 4, 3, [(3, 3), (2, 3)], [], torch.float64, seed=8)
    loss = _loss(3, num_matches=5)
    two_view = loss(*zs, maps=tuple(ms), positions=tuple(ps))
    torch.testing.assert_close(two_view, _reference(loss, *zs, *ms, *ps, 0.75, 5), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(two_view, _reference_views(loss, zs, ms, ps, 0.75, 5), rtol=1e-12, atol=1e-12)


def test_local_views_change_the_loss_and_receive_its_gradient():
    zs, ms, ps = _multi_inputs(6, 4, 3, [(3, 3), (3, 3)], [(2, 2), (2, 2)], torch.float64, seed=9)
    loss = _loss(3, num_matches=5, local_matches=2)
    two_view = loss(*zs[:2], maps=tuple(ms[:2]), positions=tuple(ps[:2]))
    multi = loss(*zs, maps=tuple(ms), positions=tuple(ps))
    assert abs((multi - two_view).item()) > 1e-3
    moved = [p.detach().clone() for p in ps]
    moved[3] = moved[3] + 0.3  # another place of the image for the second local view: other location matches
    assert abs((loss(*zs, maps=tuple(ms), positions=tuple(moved)) - multi).item()) > 1e-6
    grads = torch.autograd.grad(multi, [*zs[2:], *ms[2:]])
    assert all(g.abs().sum() > 0 for g in grads)


def test_multi_crop_gradcheck():
    zs, ms, ps = _multi_inputs(4, 3, 2, [(2, 2), (2, 2)], [(1, 2)], torch.float64, seed=10)
    loss = _loss(2, num_matches=3, local_matches=1, local_dims=[3])

    def f(z_local, m_local, z_a):
        return loss(z_a, zs[1], z_local, maps=(ms[0], ms[1], m_local), positions=tuple(ps))

    assert torch.autograd.gradcheck(f, (zs[2], ms[2], zs[0]))


def test_multi_crop_is_symmetric_in_the_global_views_and_in_the_order_of_the_local_views():
    zs, ms, ps = _multi_inputs(6, 4, 3, [(3, 3), (3, 3)], [(2, 2), (2, 2)], torch.float64, seed=11)
    loss = _loss(3, num_matches=5, local_matches=2)
    value = loss(*zs, maps=tuple(ms), positions=tuple(ps))
    order = [1, 0, 3, 2]
    swapped = loss(*(zs[i] for i in order), maps=tuple(ms[i] for i in order), positions=tuple(ps[i] for i in order))
    torch.testing.assert_close(value, swapped, rtol=1e-12, atol=1e-12)


def test_multi_crop_errors():
    zs, ms, ps = _multi_inputs(6, 4, 3, [(3, 3), (3, 3)], [(2, 2), (1, 1)], torch.float64, seed=12)
    with pytest.raises(ValueError, match=r"vicregl: local_matches=2 exceeds the 1 cells of a local view's 1x1"):
        _loss(3, num_matches=5, local_matches=2)(*zs, maps=tuple(ms), positions=tuple(ps))
    assert torch.isfinite(_loss(3, num_matches=5, local_matches=1)(*zs, maps=tuple(ms), positions=tuple(ps)))
    assert torch.isfinite(_loss(3, matching="feature", local_matches=2)(*zs, maps=tuple(ms)))  # every cell: no limit
    with pytest.raises(ValueError, match=r"vicregl: maps must be 4 \(B, 3, h, w\) maps, one per view"):
        _loss(3, num_matches=5, local_matches=1)(*zs, maps=tuple(ms[:3]), positions=tuple(ps))
    with pytest.raises(ValueError, match="vicregl: 3 positions for 4 views"):
        _loss(3, num_matches=5, local_matches=1)(*zs, maps=tuple(ms), positions=tuple(ps[:3]))
    with pytest.raises(ValueError, match=r"vicregl: matching='both' needs each map cell's position .* local_transform"):
        _loss(3, num_matches=5, local_matches=1)(*zs, maps=tuple(ms))
    with pytest.raises(ValueError, match="vicregl: a local view has shape"):
        _loss(3, num_matches=5, local_matches=1)(*zs[:3], zs[3][:, :2], maps=tuple(ms), positions=tuple(ps))
    with pytest.raises(ValueError, match="^vicregl: local_matches=0 must be at least 1"):
        VICRegLLoss(4, local_matches=0)


def test_multi_crop_training_lowers_the_loss():
    """Two views of random 4 x 4 images and two local 2 x 2 crops of them: the multi-crop loss falls as it learns."""
    torch.manual_seed(0)
    images = torch.randn(24, 6, 4, 4)
    conv, head = nn.Conv2d(6, 8, 1), nn.Linear(8, 8)
    loss = VICRegLLoss(8, num_matches=6, local_matches=2, local_dims=[8, 8])
    whole = _grid(24, 4, 4, torch.float32)
    corners = [(slice(0, 2), slice(0, 2)), (slice(2, 4), slice(1, 3))]
    positions = (whole, whole, *(whole[:, r, c] for r, c in corners))
    values = _train(conv, head, loss, lambda: [images + 0.3 * torch.randn_like(images) for _ in range(2)]
                    + [images[:, :, r, c] + 0.3 * torch.randn(24, 6, 2, 2) for r, c in corners], positions)
    assert sum(values[-5:]) < 0.9 * sum(values[:5]), values  # a corner's pooled features never equal the whole's
