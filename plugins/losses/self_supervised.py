"""Any metric loss as a self-supervised loss over two views: each image is its own class."""

from __future__ import annotations

from typing import Any

import torch

from hvkit.api import Component, MetricLoss, ViewLoss
from hvkit.errors import RecipeError
from hvkit.recipe.schema import parameters
from hvkit.registry import Registry


class SelfSupervisedLoss(ViewLoss):
    """A metric loss over two views in which each image of the batch is a class of its own.

    With labels ``i = 0 … B−1`` for the B images, ``symmetric`` (default) stacks the views,
    ``L(cat(z_a, z_b), cat(i, i))``: each image's two views are its one positive pair and the
    other 2B − 2 samples, of both views, its negatives (SimCLR's batch, any loss). Without
    ``symmetric`` the rows of ``z_a`` are the anchors and ``z_b`` their reference set,
    ``L(z_a, i, ref_emb=z_b, ref_labels=i)``: B positive pairs and B(B − 1) negative ones, none
    within a view, so the loss must accept a reference set. Equal to pytorch-metric-learning's
    ``SelfSupervisedLoss(loss, symmetric)``, for any hvkit metric loss PML lists there (triplet,
    contrastive, multi-similarity, SupCon, NCA, circle …) at PML's settings (hvkit's
    multi-similarity mines its pairs unless ``mining: false``).

    ``loss`` is a metric loss without class weights: a classifier or proxy loss learns a fixed
    set of classes, while here every batch brings new ones. Its ``terms()`` are this loss's.
    Across processes the views are gathered first, so negatives come from the whole batch.
    """

    def __init__(self, loss: Component["loss"], symmetric: bool = True) -> None:
        super().__init__()
        name = getattr(loss, "loss_name", type(loss).__name__)
        if not isinstance(loss, MetricLoss):
            raise ValueError(_not_metric(name))
        if callable(getattr(loss, "class_weights", None)):
            raise ValueError(_fixed_classes(name))
        if not symmetric and not loss.accepts_reference:
            raise ValueError(f"self_supervised: with symmetric: false the second view is a reference set, which "
                             f"loss {name} does not accept (accepts_reference); set symmetric: true")
        self.loss, self.symmetric = loss, symmetric

    @staticmethod
    def check_recipe(spec: dict[str, Any], earlier: dict[str, Any], registry: Registry) -> None:
        """The inner loss checked when the recipe is validated (API 1.11), before it would fail to build."""
        name = spec["loss"]["name"]
        factory = registry.get("loss", name).factory
        if not (isinstance(factory, type) and issubclass(factory, MetricLoss)):
            raise RecipeError(_not_metric(name), path="loss")
        if "num_classes" in parameters(factory)[0] or callable(getattr(factory, "class_weights", None)):
            raise RecipeError(_fixed_classes(name), path="loss")

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        if z_a.shape != z_b.shape:
            raise ValueError(f"self_supervised: the two views must have one shape, got {tuple(z_a.shape)} "
                             f"and {tuple(z_b.shape)}")
        labels = torch.arange(z_a.shape[0], device=z_a.device)
        if self.symmetric:
            return self.loss(torch.cat([z_a, z_b]), torch.cat([labels, labels]))
        return self.loss(z_a, labels, ref_emb=z_b, ref_labels=labels.clone())

    def terms(self) -> dict[str, torch.Tensor]:
        """The inner loss's parts of its last value, if it reports any."""
        return self.loss.terms() if callable(getattr(self.loss, "terms", None)) else {}


def _not_metric(name: str) -> str:
    return f"self_supervised: loss must be a metric loss (embeddings, labels), got {name}"


def _fixed_classes(name: str) -> str:
    return (f"self_supervised: loss {name} learns weights for a fixed set of classes, but here each batch's "
            "images are new classes; use a pair or triplet loss (contrastive, triplet, multi_similarity, supcon …)")
