"""Any pytorch-metric-learning miner, chosen by class name."""

import difflib
import inspect

import torch
from pytorch_metric_learning import miners
from torch import nn

from ._distances import partners

PML_MINERS: dict[str, type[miners.BaseMiner]] = {
    name: obj for name, obj in vars(miners).items()
    if isinstance(obj, type) and issubclass(obj, miners.BaseMiner) and obj is not miners.BaseMiner
}


class PMLMiner(nn.Module):
    """Any pytorch-metric-learning miner by class name, e.g. {name: pml, miner: PairMarginMiner}.

    ``miner`` is the class name in ``pytorch_metric_learning.miners`` and ``params`` its keyword
    arguments (numbers, strings and lists; PML's own defaults where left out). Calling this
    module calls the miner; the built PML miner is ``.miner``. A reference set (``ref_emb``, ``ref_labels``:
    ``accepts_reference``) is passed through: every PML miner mines the batch's anchors against it.
    """

    accepts_reference = True

    def __init__(self, miner: str, params: dict | None = None) -> None:
        super().__init__()
        if miner not in PML_MINERS:
            by_lower = {name.lower(): name for name in PML_MINERS}
            near = [by_lower[n] for n in difflib.get_close_matches(miner.lower(), by_lower, n=3,
                                                                   cutoff=0.5)]
            raise ValueError(f"unknown pytorch-metric-learning miner {miner!r}; nearest: "
                             f"{', '.join(near) or 'none'} (valid: {', '.join(sorted(PML_MINERS))})")
        try:
            self.miner = PML_MINERS[miner](**(params or {}))
        except TypeError as error:
            accepted = [name for name, p in inspect.signature(PML_MINERS[miner]).parameters.items()
                        if p.kind is p.POSITIONAL_OR_KEYWORD]
            raise ValueError(f"bad params for pytorch-metric-learning {miner} ({error}); it "
                             f"accepts {', '.join(accepted) or 'no params'}") from None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        reference, ref_labels, _ = partners("pml", embeddings, labels, ref_emb, ref_labels)
        if reference is None:
            return self.miner(embeddings, labels)
        return self.miner(embeddings, labels, reference, ref_labels)
