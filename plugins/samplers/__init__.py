"""First-party batch samplers, and Densely-Anchored Sampling (a wrapper around a miner and a loss)."""

from hvkit.api import hookimpl

from .dense_anchor import DenseAnchorLoss
from .pk import PKSampler
from .random_batches import RandomBatchSampler


@hookimpl
def register_samplers(register):
    register("pk", PKSampler)
    register("random", RandomBatchSampler)


@hookimpl
def register_losses(register):
    register("dense_anchor", DenseAnchorLoss)
