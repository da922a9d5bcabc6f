"""First-party miners: which pairs and triplets of a batch a loss sees."""

from hvkit.api import hookimpl

from .angular import AngularMiner
from .batch_easy_hard import BatchEasyHardMiner
from .batch_hard import BatchHardMiner
from .distance_weighted import DistanceWeightedMiner
from .hdc import HDCMiner
from .multi_similarity import MultiSimilarityMiner
from .packaged_triplets import PackagedTripletsMiner
from .pair_margin import PairMarginMiner
from .pml import PMLMiner
from .semi_hard import SemiHardMiner
from .triplet_margin import TripletMarginMiner
from .uniform_histogram import UniformHistogramMiner


@hookimpl
def register_miners(register):
    register("angular", AngularMiner)
    register("batch_easy_hard", BatchEasyHardMiner)
    register("batch_hard", BatchHardMiner)
    register("distance_weighted", DistanceWeightedMiner)
    register("hdc", HDCMiner)
    register("multi_similarity", MultiSimilarityMiner)
    register("packaged_triplets", PackagedTripletsMiner)
    register("pair_margin", PairMarginMiner)
    register("pml", PMLMiner)
    register("semi_hard", SemiHardMiner)
    register("triplet_margin", TripletMarginMiner)
    register("uniform_histogram", UniformHistogramMiner)
