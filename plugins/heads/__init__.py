"""First-party heads: projections on top of a backbone (MLP expander, linear, L2) and the pair verifiers."""

from hvkit.api import hookimpl

from .cosine_pair import CosinePair, PCAWPair, WCCNPair
from .linear import Linear
from .mlp import MLP
from .normalize import Normalize
from .sslhv_pair import SSLHVPairHead


@hookimpl
def register_heads(register):
    register("cosine_pair", CosinePair)
    register("linear", Linear)
    register("mlp", MLP)
    register("normalize", Normalize)
    register("pcaw_pair", PCAWPair)
    register("sslhv_pair", SSLHVPairHead)
    register("wccn_pair", WCCNPair)
