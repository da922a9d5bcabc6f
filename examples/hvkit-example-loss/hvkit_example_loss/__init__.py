"""hvkit-example-loss: registers the ``example_contrastive`` loss with hvkit."""

from hvkit.api import hookimpl

from .contrastive import ContrastiveLoss

HVKIT_API_VERSION = 1


@hookimpl
def register_losses(register):
    register("example_contrastive", ContrastiveLoss)
