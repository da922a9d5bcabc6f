"""Multi-similarity pair mining (Wang et al. 2019): pytorch-metric-learning's miner, typed for recipes."""

import torch
from pytorch_metric_learning import miners

from ._distances import partners


class MultiSimilarityMiner(miners.MultiSimilarityMiner):
    """Multi-similarity pair mining (Wang et al. 2019) on cosine similarity, epsilon 0.1.

    With S the cosine similarity, keeps the negative pairs with ``S_an + epsilon > min_p S_ap``
    and the positive pairs with ``S_ap - epsilon < max_n S_an`` of each anchor and returns them
    as ``(a1, p, a2, n)`` ("Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning"). It is pytorch-metric-learning's MultiSimilarityMiner; pair it with the
    ``multi_similarity`` loss.

    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the anchors are the batch's rows and
    their pairs' partners the reference's, (i, i) included: PML's own mining given that reference.
    """

    accepts_reference = True

    def __init__(self, epsilon: float = 0.1) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be non-negative, got {epsilon}")
        super().__init__(epsilon=epsilon)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, _ = partners("multi_similarity", embeddings, labels, ref_emb, ref_labels)
        if reference is None:
            return super().forward(embeddings, labels)
        return super().forward(embeddings, labels, reference, ref_labels)
