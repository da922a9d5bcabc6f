"""The labelled batch, mined tuples and checks the metric-loss tests share (pair, triplet and proxy losses)."""

from __future__ import annotations

import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 1, 2, 0, 4, 2, 3])  # class 4 is a singleton
CLASSES = 7  # for the losses with class weights: classes 5 and 6 are absent from the batch
TUPLES = [  # a miner's triplets (anchor, positive, negative), then its pairs (a1, p, a2, n)
    (torch.tensor([0, 1, 3, 7]), torch.tensor([3, 5, 8, 2]), torch.tensor([1, 0, 9, 4])),
    (torch.tensor([0, 3, 5]), torch.tensor([3, 8, 6]), torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 0, 11])),
]


def batch(n: int = 12, d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 7) -> torch.Tensor:
    """A (n, d) Gaussian batch requiring gradients, one per seed."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_()


def training_values(loss: torch.nn.Module, steps: int = 30) -> list[float]:
    """The loss over ``steps`` Adam steps of a linear model (lr 0.01; the loss's own parameters at 0.1) on a
    fixed batch of 32 samples of 8 classes."""
    torch.manual_seed(0)
    inputs, labels = torch.randn(32, 10), torch.arange(32) % 8
    model = torch.nn.Linear(10, 6)
    groups = [{"params": model.parameters(), "lr": 0.01}]
    if any(True for _ in loss.parameters()):
        groups.append({"params": loss.parameters(), "lr": 0.1})
    optimiser = torch.optim.Adam(groups)
    values = []
    for _ in range(steps):
        optimiser.zero_grad()
        value = loss(model(inputs), labels)
        value.backward()
        optimiser.step()
        values.append(value.item())
    return values


def assert_full_precision_under_autocast(loss: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    """Under bfloat16 autocast the loss equals its float32 value, and bfloat16 inputs give float32 values."""
    expected = loss(x, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(x, labels), expected)
        torch.testing.assert_close(loss(x.bfloat16(), labels), loss(x.bfloat16().float(), labels))
    assert loss(x.bfloat16(), labels).dtype == torch.float32


# A reference set (PML's ref_emb, ref_labels): 16 partners for the 12 anchors, indices past the batch's; label 5 no
# anchor has. Its tuples index (anchor rows of the batch, partner rows of the reference).
REF_LABELS = torch.tensor([2, 0, 1, 5, 3, 0, 2, 1, 4, 0, 3, 1, 2, 5, 1, 0])
REF_TUPLES = [
    (torch.tensor([0, 0, 1, 4, 9, 7]), torch.tensor([15, 5, 14, 10, 8, 12]), torch.tensor([13, 2, 3, 0, 15, 1])),
    (torch.tensor([0, 3, 5, 10]), torch.tensor([9, 1, 11, 6]), torch.tensor([0, 0, 2, 11, 6, 5]),
     torch.tensor([13, 2, 15, 0, 4, 8])),
]
ALL_PAIRS_BUT_SELF = lmu.get_all_pairs_indices(LABELS)  # every (i, j) of the batch, i != j: a plain loss's pairs
REFERENCE_ERRORS = [  # (forward's ref_emb, ref_labels for a (12, 6) batch, the ValueError's text)
    ((6, 6), None, "ref_emb was given without ref_labels"), (None, 16, "ref_labels was given without ref_emb"),
    ((16, 5), 16, r"expected ref_emb \(R, 6\)"), ((16, 6), 15, r"expected ref_emb \(R, 6\)")]


def reference(n: int = 16, d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 11) -> torch.Tensor:
    """The reference set's (n, d) embeddings, requiring gradients (PML passes them one)."""
    return batch(n, d, dtype, seed)


def reference_error_args(ref_shape: tuple[int, int] | None, labels: int | None) -> dict[str, torch.Tensor | None]:
    """``ref_emb``, ``ref_labels`` keyword arguments of the given shapes (None: left out) for REFERENCE_ERRORS."""
    return {"ref_emb": None if ref_shape is None else torch.randn(ref_shape, dtype=torch.float64),
            "ref_labels": None if labels is None else torch.arange(labels) % 3}


def assert_same_value_and_gradients(ours: torch.Tensor, expected: torch.Tensor,
                                    inputs: tuple[torch.Tensor, ...]) -> None:
    """``ours`` equals ``expected``, and so do their gradients with respect to each of ``inputs``."""
    torch.testing.assert_close(ours, expected)
    for got, want in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(expected, inputs)):
        torch.testing.assert_close(got, want)


def assert_proxies_stay_float32(loss: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    """Given float64 embeddings, the float32 ``proxies`` are not cast (the embeddings are) and get a gradient."""
    loss(x, labels).backward()
    assert loss.proxies.dtype == torch.float32 and loss.proxies.grad.abs().sum() > 0


def assert_same_classifier_as_pml(ours: torch.nn.Module, pml: torch.nn.Module, x: torch.Tensor,
                                  labels: torch.Tensor, indices_tuple: tuple | None = None) -> torch.Tensor:
    """Value, gradient to the embeddings and to the class weights (ours ``weight``, PML's ``W`` transposed)
    equal PML's; returns our value."""
    value, expected = ours(x, labels, indices_tuple), pml(x, labels, indices_tuple)
    torch.testing.assert_close(value, expected)
    got_x, got_w = torch.autograd.grad(value, (x, ours.weight), retain_graph=True)
    want_x, want_w = torch.autograd.grad(expected, (x, pml.W))
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_w, want_w.T)
    return value
