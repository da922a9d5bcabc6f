"""Training a pair verifier (e.g. the SSL-HV head) on frozen embeddings of labelled pairs."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PairTraining:
    """Options for training a pair verifier: Adam, cross-entropy, early stopping on held-out pairs."""

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    patience: int = 10


def pair_probability(head: nn.Module, emb: torch.Tensor, i: np.ndarray, j: np.ndarray,
                     batch_size: int = 65536) -> np.ndarray:
    """Score of "same writer" for each pair: softmax probability for 2-logit heads, else the output.

    A verifier that scores pairs within their set (``score_pairs``, API 1.10) gets every row of ``emb``.
    """
    head.eval()
    if hasattr(head, "score_pairs"):
        return head.score_pairs(emb, np.asarray(i), np.asarray(j))
    out = []
    with torch.no_grad():
        for start in range(0, len(i), batch_size):
            a = emb[torch.as_tensor(i[start:start + batch_size])]
            b = emb[torch.as_tensor(j[start:start + batch_size])]
            out.append(same_writer_score(head(a, b)).cpu())
    return torch.cat(out).numpy() if out else np.empty(0)


def same_writer_score(out: torch.Tensor) -> torch.Tensor:
    """A verifier head's output for B pairs as B scores of "same writer": the softmax probability of the
    second logit for a 2-logit head, else the output itself."""
    return out.softmax(dim=1)[:, 1] if out.dim() == 2 and out.shape[1] == 2 else out.reshape(-1)


def _accuracy(head: nn.Module, emb: torch.Tensor, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    i, j, same = pairs
    return float(((pair_probability(head, emb, i, j) > 0.5) == same).mean())


def train_pair_head(head: nn.Module, emb: torch.Tensor, pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                    stop_emb: torch.Tensor, stop_pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                    options: PairTraining, generator: torch.Generator) -> dict[str, float]:
    """Train ``head(e1, e2) -> logits (B, 2)`` with cross-entropy; keep the best epoch on ``stop_pairs``.

    Returns the chosen epoch and its stopping accuracy (accuracy at p > 0.5).
    """
    i, j, same = (torch.as_tensor(a) for a in pairs)
    target = same.long()
    optimizer = torch.optim.Adam(head.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    best, best_epoch, best_state, waited = -1.0, 0, copy.deepcopy(head.state_dict()), 0
    for epoch in range(options.epochs):
        head.train()
        order = torch.randperm(len(i), generator=generator)
        for start in range(0, len(order), options.batch_size):
            b = order[start:start + options.batch_size]
            loss = F.cross_entropy(head(emb[i[b]], emb[j[b]]), target[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        score = _accuracy(head, stop_emb, stop_pairs)
        if score > best:
            best, best_epoch, best_state, waited = score, epoch + 1, copy.deepcopy(head.state_dict()), 0
        else:
            waited += 1
            if waited >= options.patience:
                break
    head.load_state_dict(best_state)
    return {"epoch": best_epoch, "stop_accuracy": best}
