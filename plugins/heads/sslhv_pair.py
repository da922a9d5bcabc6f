"""The SSL-HV verification head: same/different-writer logits from a pair of embeddings."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class SSLHVPairHead(nn.Module):
    """SSL-HV pair head: shared Linear(in_dim, 64) on both embeddings, their difference, MLP 64 -> 32 -> 2.

    ``logits = L3(relu(L2(relu(d))))`` with ``d = L1(e1) - L1(e2) = W1 (e1 - e2)`` (the bias
    cancels), ``L1: in_dim -> 64``, ``L2: 64 -> 32``, ``L3: 32 -> 2``; class 1 = same writer.
    This is the design of Chauhan et al. 2024's released code (``models/supervised/resnet18.py``
    of github.com/Mihir2/ssl-hv): a projection to 64 applied to each embedding, the *signed*
    difference (named ``l1_distance`` there), then ReLU-Linear(64, 32)-ReLU-Linear(32, 2). Their
    module ends in a Softmax fed to CrossEntropyLoss (a double softmax); this head returns raw
    logits for CrossEntropyLoss. ``hidden`` sets the widths (default (64, 32)).

    Properties with ``difference="signed"``: ``f(e1 + c, e2 + c) = f(e1, e2)`` for any shift
    ``c`` and ``f(e, e)`` is the same for every ``e``; it is NOT symmetric (``f(e1, e2) !=
    f(e2, e1)`` in general). ``difference="absolute"`` uses ``|L1(e1) - L1(e2)|`` instead, which
    keeps the shift invariance and makes it symmetric.
    """

    pair_verifier = True

    def __init__(self, in_dim: int = 512, hidden: tuple[int, ...] = (64, 32),
                 difference: Literal["signed", "absolute"] = "signed"):
        super().__init__()
        hidden = list(hidden)
        if in_dim < 1:
            raise ValueError(f"sslhv_pair: in_dim must be >= 1, got {in_dim}")
        if not hidden or min(hidden) < 1:
            raise ValueError(f"sslhv_pair: hidden={hidden} must be a non-empty list of sizes >= 1")
        if difference not in ("signed", "absolute"):
            raise ValueError(f"sslhv_pair: difference={difference!r} must be 'signed' or 'absolute'")
        self.project = nn.Linear(in_dim, hidden[0])
        layers: list[nn.Module] = []
        for a, b in zip(hidden, hidden[1:] + [2]):
            layers += [nn.ReLU(), nn.Linear(a, b)]
        self.classify = nn.Sequential(*layers)
        self.difference = difference
        self.out_dim = 2

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        d = self.project(e1) - self.project(e2)
        if self.difference == "absolute":
            d = d.abs()
        return self.classify(d)
