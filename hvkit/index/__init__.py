"""The FAISS layer: exact and approximate kNN, pair scoring and all-pairs histograms, in blocks.

FAISS does the work when installed (on the local rank's GPU with faiss-gpu); without it
every exact operation falls back to blocked torch products with the same results, and
only approximate indexes (IVF, HNSW) ask for ``pip install faiss-cpu``. Exact self-retrieval
on the CPU scores each pair once, through a native selection kernel (``symmetric``); ``rerank``
re-scores pairs by the k-reciprocal neighbourhoods of their set.
"""

from .all_pairs import ScoreHistogram, all_pairs_histogram, auc_tie_bound
from .backend import INSTALL_HINT, faiss_gpu, faiss_module, require_faiss, resolve_engine
from .blocks import blocked_topk, score_blocks
from .kmeans import kmeans_assign
from .pairs import score_pairs
from .rerank import k_reciprocal_scores
from .symmetric import symmetric_topk
from .vector_index import VectorIndex, knn

__all__ = [
    "INSTALL_HINT", "ScoreHistogram", "VectorIndex", "all_pairs_histogram", "auc_tie_bound", "blocked_topk",
    "faiss_gpu", "faiss_module", "k_reciprocal_scores", "kmeans_assign", "knn", "require_faiss", "resolve_engine",
    "score_blocks", "score_pairs", "symmetric_topk",
]
