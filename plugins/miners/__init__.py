"""First-party miners: which pairs and triplets of a batch a loss sees."""

from hvkit.api import hookimpl

from .batch_hard import BatchHardMiner
from .distance_weighted import DistanceWeightedMiner
from .multi_similarity import MultiSimilarityMiner
from .pml import PMLMiner
from .semi_hard import SemiHardMiner


@hookimpl
def register_miners(register):
    register("batch_hard", BatchHardMiner)
    register("distance_weighted", DistanceWeightedMiner)
    register("multi_similarity", MultiSimilarityMiner)
    register("pml", PMLMiner)
    register("semi_hard", SemiHardMiner)
