"""Multi-similarity pair mining (Wang et al. 2019): pytorch-metric-learning's miner, typed for recipes."""

from pytorch_metric_learning import miners


class MultiSimilarityMiner(miners.MultiSimilarityMiner):
    """Multi-similarity pair mining (Wang et al. 2019) on cosine similarity, epsilon 0.1.

    With S the cosine similarity, keeps the negative pairs with ``S_an + epsilon > min_p S_ap``
    and the positive pairs with ``S_ap - epsilon < max_n S_an`` of each anchor and returns them
    as ``(a1, p, a2, n)`` ("Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning"). It is pytorch-metric-learning's MultiSimilarityMiner; pair it with the
    ``multi_similarity`` loss.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be non-negative, got {epsilon}")
        super().__init__(epsilon=epsilon)
