"""The re-ranked pair verifier: its base's fit, k-reciprocal scores in the base's space, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvkit.engine.context import build
from hvkit.index.rerank import k_reciprocal_scores
from hvkit.registry import get_registry
from hvkit.testing import check_head
from hvkit_plugins.heads import RerankPair, WCCNPair
from hvkit_plugins.stages.pair_training import pair_probability


def _writers(seed: int = 0, writers: int = 12, per: int = 6, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(writers).repeat_interleave(per)
    return torch.randn(writers, dim, generator=g)[labels] + 0.7 * torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("params", [{}, {"base": "cosine_pair", "k1": 5, "k2": 1, "weight": 0.0},
                                    {"base": {"name": "wccn_pair", "shrinkage": 0.1}}])
def test_contract(params: dict) -> None:
    check_head(RerankPair, params, in_dim=6)


def test_scores_are_the_k_reciprocal_scores_in_the_fitted_bases_space() -> None:
    x, labels = _writers()
    unlabelled = torch.cat([x, torch.randn(30, 8)])
    head = build(get_registry(), "head", {"name": "rerank_pair", "k1": 8, "k2": 3, "weight": 0.4}, in_dim=8)
    head.fit(x, labels, unlabelled)
    base = WCCNPair(in_dim=8).fit(x, labels, unlabelled)
    torch.testing.assert_close(head.base.transform, base.transform)
    test, _ = _writers(seed=1)
    i, j = np.triu_indices(len(test), 1)
    expected = k_reciprocal_scores(base.embed(test), np.stack([i, j], 1), k1=8, k2=3, weight=0.4)
    np.testing.assert_allclose(pair_probability(head, test, i, j), expected, rtol=1e-6, atol=1e-6)


def test_two_embeddings_alone_are_refused() -> None:
    head = RerankPair(in_dim=4, base=WCCNPair(in_dim=4))
    with pytest.raises(RuntimeError, match="within a set of images"):
        head(torch.randn(2, 4), torch.randn(2, 4))


@pytest.mark.parametrize(("spec", "message"), [
    ({"base": "sslhv_pair"}, "base verifier SSLHVPairHead has no embedding space"),
    ({"k1": 0}, "k1=0"), ({"k2": 0}, "k2=0"), ({"weight": -0.1}, "weight=-0.1"),
])
def test_bad_settings(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(get_registry(), "head", {"name": "rerank_pair", **spec}, in_dim=4)


class _OrderDependent(torch.nn.Module):
    """A set verifier whose scores wrongly depend on where its pairs sit in the set."""

    pair_verifier = True

    def score_pairs(self, embeddings: torch.Tensor, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return (first + second).astype(np.float32)


def test_the_kit_catches_a_set_verifier_that_depends_on_row_order() -> None:
    with pytest.raises(AssertionError, match="depends on the order of the rows of its set"):
        check_head(_OrderDependent(), in_dim=4)
