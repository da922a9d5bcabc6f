"""First-party evaluators: verification, retrieval, kNN and linear probes, embedding map."""

from hvkit.api import hookimpl

from .embedding_map import EmbeddingMap
from .knn_probe import KNNProbe
from .linear_probe import LinearProbe
from .retrieval import Retrieval
from .verification import Verification


@hookimpl
def register_evaluators(register):
    register("embedding_map", EmbeddingMap)
    register("knn_probe", KNNProbe)
    register("linear_probe", LinearProbe)
    register("retrieval", Retrieval)
    register("verification", Verification)
