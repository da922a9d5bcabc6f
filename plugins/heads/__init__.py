"""First-party heads: projections on top of a backbone (MLP expander, DINO head, linear, L2) and the pair verifiers."""

from hvkit.api import hookimpl

from .cosine_pair import CorrelationPair, CosinePair, PCAWPair, WCCNPair
from .dino_head import DINOHead
from .linear import Linear
from .mlp import MLP
from .normalize import Normalize
from .rerank_pair import RerankPair
from .sslhv_pair import SSLHVPairHead


@hookimpl
def register_heads(register):
    register("correlation_pair", CorrelationPair)
    register("cosine_pair", CosinePair)
    register("dino_head", DINOHead)
    register("linear", Linear)
    register("mlp", MLP)
    register("normalize", Normalize)
    register("pcaw_pair", PCAWPair)
    register("rerank_pair", RerankPair)
    register("sslhv_pair", SSLHVPairHead)
    register("wccn_pair", WCCNPair)
