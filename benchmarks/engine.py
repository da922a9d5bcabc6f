"""Engine overhead: training steps per second through hvkit's Trainer against a plain PyTorch loop.

Both sides do the same work in the same process: the same small CNN (64x64 single-channel
images, batch 64, AdamW, cross-entropy over 32 classes), the same pre-made batches, the
same initial weights. The two alternate (order swapped every round) so drift in the
machine's load hits both alike. The Trainer side includes everything hvkit adds: per-step
generators, NaN checks, JSONL logging and its final atomic checkpoint. A second scenario
with a tiny linear model makes the fixed per-step cost visible in microseconds.

    python benchmarks/engine.py                      # CNN, 5 rounds of 40 steps
    python benchmarks/engine.py --rounds 7 --steps 60 --threads 2

Prints one row per round and the median ratio hvkit / plain (target >= 0.95).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from hvkit.engine import StageContext, TrainConfig, Trainer
from hvkit.registry import Registry

CLASSES = 32


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, CLASSES),
    )


def tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64 * 64, CLASSES))


OPTIMIZER = {"name": "AdamW", "lr": 1e-3, "weight_decay": 1e-4}


def plain_loop(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Steps per second of the hand-written loop."""
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=OPTIMIZER["lr"], weight_decay=OPTIMIZER["weight_decay"])
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return len(batches) / (time.perf_counter() - start)


def hvkit_trainer(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Steps per second of the same work through hvkit's Trainer (one epoch, default logging)."""
    with tempfile.TemporaryDirectory() as folder:
        ctx = StageContext(name="bench", spec={}, recipe={"seed": 0}, run_dir=Path(folder),
                           device=torch.device("cpu"), registry=Registry(), outputs={},
                           data_fn=lambda: None, console=lambda _: None)
        start = time.perf_counter()
        trainer = Trainer(ctx, {"model": model}, TrainConfig(epochs=1, optimizer=dict(OPTIMIZER)),
                          steps_per_epoch=len(batches))
        trainer.fit(lambda epoch: batches, lambda batch, g: F.cross_entropy(model(batch[0]), batch[1]))
        return len(batches) / (time.perf_counter() - start)


def compare(make: Callable[[], nn.Module], steps: int, rounds: int, label: str) -> float:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(64, 1, 64, 64, generator=g), torch.randint(0, CLASSES, (64,), generator=g))
               for _ in range(steps)]
    torch.manual_seed(0)
    initial = make()
    sides = {"hvkit": hvkit_trainer, "plain": plain_loop}
    for side in sides.values():  # warm-up: allocator, kernels, imports
        side(copy.deepcopy(initial), batches[:3])
    print(f"\n{label}: {steps} steps a round, batch 64, 64x64x1, AdamW, {torch.get_num_threads()} threads")
    print(f"| round | hvkit steps/s | plain steps/s | ratio |\n|---|---|---|---|")
    ratios = []
    for r in range(rounds):
        order = ["hvkit", "plain"] if r % 2 == 0 else ["plain", "hvkit"]
        speed = {name: sides[name](copy.deepcopy(initial), batches) for name in order}
        ratios.append(speed["hvkit"] / speed["plain"])
        print(f"| {r + 1} | {speed['hvkit']:.1f} | {speed['plain']:.1f} | {ratios[-1]:.3f} |")
    median = statistics.median(ratios)
    print(f"median ratio hvkit/plain: {median:.3f}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ratio = compare(cnn, args.steps, args.rounds, "small CNN")
    tiny_ratio = compare(tiny, args.steps * 5, args.rounds, "tiny linear model (fixed per-step cost)")
    print(f"\nsmall CNN ratio {ratio:.3f} ({'meets' if ratio >= 0.95 else 'BELOW'} the 0.95 target); "
          f"tiny-model ratio {tiny_ratio:.3f}")


if __name__ == "__main__":
    main()
