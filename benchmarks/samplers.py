"""Time per batch of hvkit's miners against pytorch-metric-learning's equivalents, measured in the same run.

    python benchmarks/samplers.py                     # batch 512, dim 128, every case
    python benchmarks/samplers.py --only distance_weighted --repeats 21 --device cuda

Prints a markdown table: median milliseconds of one ``miner(embeddings, labels)`` call after
warm-up, for hvkit's miner and pytorch-metric-learning's (PML) equivalent, and the speed-up
``reference / ours`` (above 1: hvkit is faster). The two alternate within each repeat on
identical inputs, so machine load affects both alike; torch uses every core unless
``--threads`` says otherwise (one thread is steadier on a shared machine). Embeddings are
``batch // 4`` writers of 4 (PK batches), each a random centre plus as much noise, so that
distances spread over the range the miners care about.

The ``dense_anchor`` row is no comparison with PML (which lacks DAS): it times the
multi-similarity miner and loss with and without hvkit's DenseAnchorLoss around them, i.e.
the cost of producing 3 extra embeddings per real one, of mining and of the loss on the
4x larger batch (forward and backward).
"""

import argparse
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from _timing import alternate
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml

from hvkit_plugins.miners.angular import AngularMiner
from hvkit_plugins.miners.batch_easy_hard import BatchEasyHardMiner
from hvkit_plugins.miners.batch_hard import BatchHardMiner
from hvkit_plugins.miners.distance_weighted import DistanceWeightedMiner
from hvkit_plugins.miners.hdc import HDCMiner
from hvkit_plugins.miners.multi_similarity import MultiSimilarityMiner
from hvkit_plugins.miners.pair_margin import PairMarginMiner
from hvkit_plugins.miners.semi_hard import SemiHardMiner
from hvkit_plugins.miners.triplet_margin import TripletMarginMiner
from hvkit_plugins.miners.uniform_histogram import UniformHistogramMiner
from hvkit_plugins.samplers.dense_anchor import DenseAnchorLoss

Step = Callable[[torch.Tensor, torch.Tensor], object]


@dataclass(frozen=True)
class Case:
    """One table row: ``ours`` against ``reference``, each built by ``(batch, dim) -> step``."""

    name: str
    ours: Callable[[int, int], Step]
    reference: Callable[[int, int], Step]
    reference_name: str


def _with_and_without_das(das: bool) -> Callable[[int, int], Step]:
    def build(batch: int, dim: int) -> Step:
        miner, loss = pml.MultiSimilarityMiner(), pml_losses.MultiSimilarityLoss()
        wrapped = DenseAnchorLoss(loss, num_classes=batch // 4, embedding_dim=dim, miner=miner)

        def step(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
            x = embeddings.detach().requires_grad_()
            wrapped.to(x.device)
            value = wrapped(x, labels) if das else loss(x, labels, miner(x, labels))
            value.backward()
        return step
    return build


CASES: list[Case] = [
    Case("batch_hard", lambda b, d: BatchHardMiner(), lambda b, d: pml.BatchHardMiner(),
         "PML BatchHardMiner"),
    Case("semi_hard", lambda b, d: SemiHardMiner(),
         lambda b, d: pml.TripletMarginMiner(type_of_triplets="semihard"),
         "PML TripletMarginMiner(semihard)"),
    Case("distance_weighted", lambda b, d: DistanceWeightedMiner(),
         lambda b, d: pml.DistanceWeightedMiner(), "PML DistanceWeightedMiner"),
    Case("multi_similarity", lambda b, d: MultiSimilarityMiner(),
         lambda b, d: pml.MultiSimilarityMiner(), "PML MultiSimilarityMiner"),
    Case("pair_margin", lambda b, d: PairMarginMiner(), lambda b, d: pml.PairMarginMiner(),
         "PML PairMarginMiner"),
    Case("triplet_margin", lambda b, d: TripletMarginMiner(), lambda b, d: pml.TripletMarginMiner(),
         "PML TripletMarginMiner(all)"),
    Case("triplet_margin_hard", lambda b, d: TripletMarginMiner(type_of_triplets="hard"),
         lambda b, d: pml.TripletMarginMiner(type_of_triplets="hard"), "PML TripletMarginMiner(hard)"),
    Case("angular", lambda b, d: AngularMiner(normalize=False), lambda b, d: pml.AngularMiner(),
         "PML AngularMiner (both on the raw embeddings)"),
    Case("hdc", lambda b, d: HDCMiner(), lambda b, d: pml.HDCMiner(), "PML HDCMiner"),
    Case("batch_easy_hard", lambda b, d: BatchEasyHardMiner(), lambda b, d: pml.BatchEasyHardMiner(),
         "PML BatchEasyHardMiner (easy, semihard)"),
    Case("uniform_histogram", lambda b, d: UniformHistogramMiner(), lambda b, d: pml.UniformHistogramMiner(),
         "PML UniformHistogramMiner"),
    Case("dense_anchor", _with_and_without_das(True), _with_and_without_das(False),
         "the same PML MS miner + loss without DAS (cost of DAS)"),
]


def pk_batch(batch: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch // 4`` writers of 4, shuffled: a random centre per writer plus as much noise."""
    labels = (torch.arange(batch, device=device) // 4)[torch.randperm(batch, device=device)]
    centres = torch.randn(batch // 4, dim, device=device)
    return centres[labels] + torch.randn(batch, dim, device=device), labels


def _time_once(step: Step, inputs: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(case: Case, batch: int, dim: int, repeats: int, warmup: int,
            device: torch.device) -> tuple[float, float]:
    """Median seconds of (ours, reference), alternating which goes first in each repeat."""
    torch.manual_seed(0)
    inputs = pk_batch(batch, dim, device)
    ours, reference = case.ours(batch, dim), case.reference(batch, dim)
    for step in (ours, reference):
        if isinstance(step, torch.nn.Module):
            step.to(device)
    return alternate(lambda: _time_once(ours, inputs, device),
                     lambda: _time_once(reference, inputs, device), repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=None, help="case names to run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if args.only is None or c.name in args.only]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"batch {args.batch}, dim {args.dim}, median of {args.repeats} after {args.warmup} warm-up")
    print()
    print("| miner | reference | ours (ms) | reference (ms) | speed-up |")
    print("| --- | --- | ---: | ---: | ---: |")
    for case in cases:
        ours, reference = measure(case, args.batch, args.dim, args.repeats, args.warmup, device)
        print(f"| {case.name} | {case.reference_name} | {ours * 1e3:.2f} | {reference * 1e3:.2f} | "
              f"{reference / ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
