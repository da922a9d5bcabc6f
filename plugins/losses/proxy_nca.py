"""ProxyNCA with the ProxyNCA++ options (Movshovitz-Attias et al., ICCV 2017; Teh et al., ECCV 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._classifier import check_sizes
from ._precision import full_precision
from ._proxies import ProxyLoss


class ProxyNCALoss(ProxyLoss):
    """ProxyNCA / ProxyNCA++: a softmax over the distances to the class proxies (Teh et al. 2020 defaults).

    With x and the proxies p_c L2-normalised, ``d_c = ||x - p_c||^2 = 2 - 2 cos(x, p_c)``, y
    the sample's class and T the ``temperature``:

        positive_in_denominator=True   l = -log( exp(-d_y / T) / sum_{c}      exp(-d_c / T) )
        positive_in_denominator=False  l = -log( exp(-d_y / T) / sum_{c != y} exp(-d_c / T) )

    and L is the mean of l over the batch. The defaults are ProxyNCA++'s: T = 1/9, and the
    positive proxy in the denominator, so that the ratio is the probability of assigning x to
    its own proxy and l >= 0. The original ProxyNCA (Movshovitz-Attias et al. 2017) is
    ``temperature=1, positive_in_denominator=False``; its l goes negative once exp(-d_y / T)
    outweighs the other proxies' sum. The proxies (a parameter of the loss, (num_classes, embedding_dim))
    start as in the ProxyNCA++ code, standard normal / 8; that code trains them far faster
    than the network ("fast-moving proxies": Adam at 4e2 against 4e-3 on CUB): give them
    their own rate with ``train.loss_lr``. ProxyNCA++'s other changes (max pooling, layer
    norm, class-balanced sampling) belong to the model and the sampler, not the loss. With
    the positive in the denominator this equals pytorch-metric-learning's ProxyNCALoss with
    ``softmax_scale = 1/T``, which has no option to leave it out. A miner is refused. The
    loss is a mean of per-sample terms: each rank's share suffices (no global batch) and the
    proxies' gradients are averaged across ranks like the model's.
    """

    loss_name = "proxy_nca"

    def __init__(self, embedding_dim: int, num_classes: int, temperature: float = 1 / 9,
                 positive_in_denominator: bool = True) -> None:
        check_sizes(embedding_dim, num_classes)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive (ProxyNCA++ uses 1/9, ProxyNCA 1), got {temperature}")
        super().__init__(torch.randn(num_classes, embedding_dim) / 8)
        self.temperature, self.positive_in_denominator = temperature, positive_in_denominator

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        distances = 2 - 2 * self.cosines(embeddings, labels, indices_tuple)
        logits = -distances / self.temperature
        if self.positive_in_denominator:
            return F.cross_entropy(logits, labels)
        own = F.one_hot(labels, self.num_classes).bool()
        others = torch.logsumexp(logits.masked_fill(own, float("-inf")), dim=1)
        return (others - logits.gather(1, labels[:, None]).squeeze(1)).mean()
