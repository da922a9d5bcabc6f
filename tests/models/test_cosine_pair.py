"""The cosine pair verifier: centring on all training images, within-class (WCCN) and PCA whitening."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hvkit.cli import main
from hvkit.testing import check_head, tiny_recipe
from hvkit_plugins.heads import CorrelationPair, CosinePair, PCAWPair, WCCNPair


def _writers(seed: int = 0, writers: int = 6, per: int = 5, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(writers, dim, generator=g) * 3
    labels = torch.arange(writers).repeat_interleave(per)
    spread = torch.tensor([3.0, 0.2, 1.0, 0.5])[:dim]
    return centres[labels] + torch.randn(len(labels), dim, generator=g) * spread, labels


@pytest.mark.parametrize("factory, params", [(CosinePair, {}), (CosinePair, {"centre": False}),
                                             (WCCNPair, {}), (WCCNPair, {"shrinkage": 0.05}), (PCAWPair, {}),
                                             (CosinePair, {"whiten": "total", "power": 1.0}),
                                             (CorrelationPair, {})])
def test_contract(factory: type, params: dict) -> None:
    check_head(factory, params, in_dim=6)


def test_plain_cosine_centres_on_the_unlabelled_mean() -> None:
    x, labels = _writers()
    unlabelled = torch.randn(50, 4) + 7.0
    head = CosinePair(in_dim=4).fit(x, labels, unlabelled)
    torch.testing.assert_close(head.mean, unlabelled.mean(0))
    a, b = x[:3], x[3:6]
    expected = [np.dot(p, q) / np.linalg.norm(p) / np.linalg.norm(q) for p, q in
                zip((a - unlabelled.mean(0)).double().numpy(), (b - unlabelled.mean(0)).double().numpy())]
    np.testing.assert_allclose(head(a, b).numpy(), expected, rtol=1e-5)
    assert torch.equal(CosinePair(in_dim=4).fit(x).mean, x.double().mean(0).float())


def test_correlation_of_bits_is_the_phi_coefficient() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(20, 64, generator=g) < 0.3).float(), (torch.rand(20, 64, generator=g) < 0.4).float()
    head = CorrelationPair(in_dim=64).fit(torch.rand(30, 64, generator=g) + 5)  # nothing to fit: the mean stays 0
    assert not head.mean.any()
    x, y = a.double().numpy(), b.double().numpy()
    s11, s00 = (x * y).sum(1), ((1 - x) * (1 - y)).sum(1)
    s10, s01 = (x * (1 - y)).sum(1), ((1 - x) * y).sum(1)
    phi = (s11 * s00 - s10 * s01) / np.sqrt((s10 + s11) * (s01 + s00) * (s11 + s01) * (s00 + s10))
    np.testing.assert_allclose(head(a, b).numpy(), phi, rtol=1e-5)
    shifted = a * 3 + 7  # Pearson's correlation ignores each vector's own offset and scale
    np.testing.assert_allclose(head(shifted, b).numpy(), phi, rtol=1e-5)
    np.testing.assert_allclose(head.embed(a).sum(1).numpy(), 0, atol=1e-5)


def test_wccn_matches_the_float64_formula() -> None:
    x, labels = _writers()
    shrink = 0.3
    xd = x.double().numpy()
    means = np.stack([xd[labels.numpy() == w].mean(0) for w in range(6)])
    r = xd - means[labels.numpy()]
    scatter = r.T @ r / len(xd)
    s = (1 - shrink) * scatter + shrink * np.trace(scatter) / 4 * np.eye(4)
    w, v = np.linalg.eigh(s)
    transform = v @ np.diag(w ** -0.5) @ v.T
    unlabelled = x[::2]
    head = WCCNPair(in_dim=4, shrinkage=shrink).fit(x, labels, unlabelled)
    np.testing.assert_allclose(head.transform.numpy(), transform, rtol=1e-5, atol=1e-6)
    mu = unlabelled.double().numpy().mean(0)
    za, zb = (xd[:10] - mu) @ transform, (xd[10:20] - mu) @ transform
    expected = (za * zb).sum(1) / np.linalg.norm(za, axis=1) / np.linalg.norm(zb, axis=1)
    np.testing.assert_allclose(head(x[:10], x[10:20]).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.embed(x[:10]).numpy(), za, rtol=1e-5, atol=1e-5)


def test_unshrunk_wccn_is_invariant_to_a_linear_map() -> None:
    x, labels = _writers(dim=4, per=8)
    mix = torch.tensor([[2.0, 0.5, 0.0, 1.0], [0.0, 1.0, -3.0, 0.0], [0.3, 0.0, 1.0, 0.0], [0.0, 0.2, 0.0, 0.1]])
    plain = WCCNPair(in_dim=4, shrinkage=0.0).fit(x, labels)
    mapped = WCCNPair(in_dim=4, shrinkage=0.0).fit(x @ mix, labels)
    torch.testing.assert_close(mapped(x[:20] @ mix, x[20:40] @ mix), plain(x[:20], x[20:40]), rtol=1e-4, atol=1e-4)
    cosine = CosinePair(in_dim=4).fit(x)
    assert not torch.allclose(CosinePair(in_dim=4).fit(x @ mix)(x[:20] @ mix, x[20:40] @ mix), cosine(x[:20], x[20:40]),
                              atol=1e-2)


def _all_pairs_auc(head: CosinePair, x: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of the head's scores over every pair of ``x``: same-writer pairs against the rest."""
    i, j = torch.triu_indices(len(x), len(x), 1)
    same = (labels[i] == labels[j]).numpy()
    s = head(x[i], x[j]).numpy()
    pos, neg = s[same], s[~same]
    return float((pos[:, None] > neg[None, :]).mean())


def test_wccn_separates_writers_better_along_a_noisy_direction() -> None:
    x, labels = _writers(seed=1, writers=20, per=6)
    assert (_all_pairs_auc(WCCNPair(in_dim=4).fit(x, labels), x, labels)
            > _all_pairs_auc(CosinePair(in_dim=4).fit(x), x, labels) + 0.02)


def _total_covariance_power(x: np.ndarray, shrinkage: float, power: float) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: the mean and S^(-power/2) of the shrunk covariance of ``x`` by eigendecomposition."""
    centred = x - x.mean(0)
    cov = centred.T @ centred / len(x)
    shrunk = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    values, vectors = np.linalg.eigh(shrunk)
    return x.mean(0), vectors @ np.diag(values ** (-power / 2)) @ vectors.T


@pytest.mark.parametrize("shrinkage, power", [(0.0, 1.0), (0.01, 0.5), (0.3, 0.25)])
def test_total_whitening_matches_the_float64_formula(shrinkage: float, power: float) -> None:
    x, labels = _writers(seed=2)
    unlabelled = torch.randn(60, 4, dtype=torch.float64) @ torch.tensor([[3.0, 1, 0, 0], [0, 1, 0, 0],
                                                                          [0, 0, 0.2, 0], [0, 0, 0.1, 2]],
                                                                         dtype=torch.float64) + 1.5
    head = CosinePair(in_dim=4, whiten="total", shrinkage=shrinkage, power=power).fit(x, labels, unlabelled.float())
    mean, transform = _total_covariance_power(unlabelled.numpy(), shrinkage, power)
    np.testing.assert_allclose(head.mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(head.transform.numpy(), transform, rtol=1e-4, atol=1e-5)
    a, b = (x[:10].double().numpy() - mean) @ transform, (x[10:20].double().numpy() - mean) @ transform
    expected = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(head(x[:10], x[10:20]).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_power_scales_the_spectrum() -> None:
    """W Σ W = Σ^(1 - p) for W = Σ^(-p/2): full whitening (p = 1) gives I, p = 0.5 the square root."""
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(5)) * torch.tensor([5.0, 2.0, 0.5, 0.1])
    centred = (x - x.mean(0)).double()
    cov = centred.T @ centred / len(x)
    values, vectors = torch.linalg.eigh(cov)
    for power in (1.0, 0.5):
        w = CosinePair(in_dim=4, whiten="total", shrinkage=0.0, power=power).fit(x).transform.double()
        torch.testing.assert_close(w @ cov @ w, vectors @ torch.diag(values ** (1 - power)) @ vectors.T,
                                   rtol=1e-4, atol=1e-5)
    plain = CosinePair(in_dim=4).fit(x)
    none = CosinePair(in_dim=4, whiten="total", power=0.0).fit(x)
    torch.testing.assert_close(none(x[:50], x[50:100]), plain(x[:50], x[50:100]))


def test_pcaw_lets_low_variance_writer_directions_count() -> None:
    """A loud direction that is not the writer's drowns a plain cosine; half-way whitening lowers it."""
    g = torch.Generator().manual_seed(7)
    labels = torch.arange(40).repeat_interleave(6)
    style = torch.randn(40, 3, generator=g)[labels] + 0.3 * torch.randn(240, 3, generator=g)
    loud = 8.0 * torch.randn(240, 1, generator=g)  # e.g. word size: varies as much within as across writers
    x = torch.cat([loud, style], 1)
    pcaw, plain = PCAWPair(in_dim=4).fit(x), CosinePair(in_dim=4).fit(x)
    assert _all_pairs_auc(pcaw, x, labels) > _all_pairs_auc(plain, x, labels) + 0.05


def test_bad_settings_and_inputs() -> None:
    with pytest.raises(ValueError, match="power"):
        CosinePair(in_dim=4, whiten="total", power=1.5)
    with pytest.raises(ValueError, match="do not vary"):
        PCAWPair(in_dim=4).fit(torch.ones(8, 4))
    with pytest.raises(ValueError, match="whiten"):
        CosinePair(in_dim=4, whiten="pca")
    with pytest.raises(ValueError, match="takes whiten='none', not whiten='within_class'"):
        CorrelationPair(in_dim=4, whiten="within_class")
    with pytest.raises(ValueError, match="centre='mean' must be"):
        CosinePair(in_dim=4, centre="mean")
    with pytest.raises(ValueError, match="shrinkage"):
        WCCNPair(in_dim=4, shrinkage=1.5)
    with pytest.raises(ValueError, match="labels"):
        WCCNPair(in_dim=4).fit(torch.randn(8, 4))
    with pytest.raises(ValueError, match="one sample"):
        WCCNPair(in_dim=4).fit(torch.randn(8, 4), torch.arange(8))
    with pytest.raises(ValueError, match="singular"):
        WCCNPair(in_dim=4, shrinkage=0.0).fit(torch.randn(4, 4), torch.tensor([0, 0, 1, 1]))


@pytest.mark.parametrize("verifier, message", [
    ("{name: wccn_pair, shrinkage: 2}", "cosine_pair: shrinkage=2 must lie in [0, 1]"),
    ("{name: correlation_pair, whiten: total}",
     "cosine_pair: centre='each' (Pearson's correlation) takes whiten='none', not whiten='total'"),
    ("{name: pcaw_pair, power: -1}", "cosine_pair: power=-1 must lie in [0, 1] (1 whitens fully, 0 not at all)"),
])
def test_bad_values_fail_validation_before_any_stage_runs(tmp_path, verifier: str, message: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe(f"""
      words:
        stage: evaluate
        features: hog
        verifiers: [cosine_pair, {verifier}]
    """, name="values"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and result.stderr == f"error: {path}:stages.words.verifiers.1: {message}\n"
