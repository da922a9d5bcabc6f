"""Engine overhead: training steps per second through hvkit's Trainer against a plain PyTorch loop.

Both sides do the same work in the same process: the same small CNN (64x64 single-channel
images, batch 64, AdamW, cross-entropy over 32 classes), the same pre-made batches, the
same initial weights. The two alternate in short rounds (order swapped every round) so
drift in the machine's load hits both alike. The Trainer side includes everything hvkit
adds per step: a derived generator, the NaN check, the scheduler/scaler bookkeeping and
JSONL logging; both sides are timed over their stepping loop only. A second scenario with
a tiny linear model makes the fixed per-step cost stand out.

    python benchmarks/engine.py                      # 11 rounds of 20 steps, 1 thread, CPU time
    python benchmarks/engine.py --rounds 21 --steps 40 --threads 2 --clock wall

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
CLOCKS: dict[str, Callable[[], float]] = {"process": time.process_time, "wall": time.perf_counter}
CLOCK = [time.process_time]
"""The clock both sides are timed with (set from --clock)."""


def plain_loop(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Steps per second of the hand-written loop."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=OPTIMIZER["lr"], weight_decay=OPTIMIZER["weight_decay"])
    start = CLOCK[0]()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return len(batches) / (CLOCK[0]() - start)


def hvkit_trainer(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Steps per second of the same work through hvkit's Trainer (default logging every 10 steps).

    Timed from the first batch handed out to the end of the last step, as the plain loop is;
    the one-off costs (building the optimiser, the final checkpoint) are left out of both.
    """
    marks: list[float] = []

    def timed(epoch: int):
        marks.append(CLOCK[0]())
        yield from batches
        marks.append(CLOCK[0]())

    with tempfile.TemporaryDirectory() as folder:
        ctx = StageContext(name="bench", spec={}, recipe={"seed": 0}, run_dir=Path(folder),
                           device=torch.device("cpu"), registry=Registry(), outputs={},
                           data_fn=lambda: None, console=lambda _: None)
        trainer = Trainer(ctx, {"model": model}, TrainConfig(epochs=1, optimizer=dict(OPTIMIZER)),
                          steps_per_epoch=len(batches))
        trainer.fit(timed, lambda batch, g: F.cross_entropy(model(batch[0]), batch[1]))
    return len(batches) / (marks[1] - marks[0])


def compare(make: Callable[[], nn.Module], steps: int, rounds: int, label: str) -> float:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(64, 1, 64, 64, generator=g), torch.randint(0, CLASSES, (64,), generator=g))
               for _ in range(steps)]
    torch.manual_seed(0)
    initial = make()
    sides = {"hvkit": hvkit_trainer, "plain": plain_loop}
    for side in sides.values():  # warm-up: allocator, kernels, imports
        side(copy.deepcopy(initial), batches[:3])
    print(f"\n{label}: {steps} steps a round, batch 64, 64x64x1, AdamW, {torch.get_num_threads()} threads, "
          f"{'CPU' if CLOCK[0] is time.process_time else 'wall'} time")
    print(f"| round | hvkit steps/s | plain steps/s | ratio |\n|---|---|---|---|")
    ratios, speeds = [], []
    for r in range(rounds):
        order = ["hvkit", "plain"] if r % 2 == 0 else ["plain", "hvkit"]
        speed = {name: sides[name](copy.deepcopy(initial), batches) for name in order}
        speeds.append(speed)
        ratios.append(speed["hvkit"] / speed["plain"])
        print(f"| {r + 1} | {speed['hvkit']:.1f} | {speed['plain']:.1f} | {ratios[-1]:.3f} |")
    median = statistics.median(ratios)
    best = max(r["hvkit"] for r in speeds) / max(r["plain"] for r in speeds)
    print(f"median ratio hvkit/plain: {median:.3f}; best-of-rounds ratio: {best:.3f}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least disturbed by load)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="process",
                        help="process: CPU time of this process, robust on a shared machine; wall: elapsed time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    CLOCK[0] = CLOCKS[args.clock]
    ratio = compare(cnn, args.steps, args.rounds, "small CNN")
    tiny_ratio = compare(tiny, args.steps * 10, args.rounds, "tiny linear model (fixed per-step cost)")
    print(f"\nsmall CNN ratio {ratio:.3f} ({'meets' if ratio >= 0.95 else 'BELOW'} the 0.95 target); "
          f"tiny-model ratio {tiny_ratio:.3f}")


if __name__ == "__main__":
    main()
