"""First-party batch samplers, and two loss wrappers: Densely-Anchored Sampling and Cross-Batch Memory."""

from hvkit.api import hookimpl

from .dense_anchor import DenseAnchorLoss
from .fixed_triplets import FixedTripletSampler
from .hard_class import HardClassSampler
from .hierarchical import HierarchicalSampler
from .pk import PKSampler
from .random_batches import RandomBatchSampler
from .tuples_to_weights import TuplesToWeightsSampler
from .xbm import CrossBatchMemoryLoss


@hookimpl
def register_samplers(register):
    register("pk", PKSampler)
    register("fixed_triplets", FixedTripletSampler)
    register("hard_class", HardClassSampler)
    register("hierarchical", HierarchicalSampler)
    register("random", RandomBatchSampler)
    register("tuples_to_weights", TuplesToWeightsSampler)


@hookimpl
def register_losses(register):
    register("dense_anchor", DenseAnchorLoss)
    register("xbm", CrossBatchMemoryLoss)
