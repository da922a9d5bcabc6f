"""First-party evaluators: verification (pairs and k-against-k sets), retrieval, kNN and linear probes, open-set
identification, embedding map."""

from hvkit.api import hookimpl

from .embedding_map import EmbeddingMap
from .knn_probe import KNNProbe
from .linear_probe import LinearProbe
from .open_set import OpenSet
from .retrieval import Retrieval
from .set_verification import SetVerification
from .verification import Verification


@hookimpl
def register_evaluators(register):
    register("embedding_map", EmbeddingMap)
    register("knn_probe", KNNProbe)
    register("linear_probe", LinearProbe)
    register("open_set", OpenSet)
    register("retrieval", Retrieval)
    register("set_verification", SetVerification)
    register("verification", Verification)
