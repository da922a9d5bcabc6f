"""First-party transforms: batched, generator-driven augmentations for word images (ink bright)."""

from hvkit.api import hookimpl

from .compose import Compose
from .contrast_jitter import ContrastJitter
from .gaussian_blur import GaussianBlur
from .gaussian_noise import GaussianNoise
from .handwriting_views import HandwritingViews
from .ink_thickness import InkThickness
from .random_affine import RandomAffine
from .random_resized_crop import RandomResizedCrop


@hookimpl
def register_transforms(register):
    register("compose", Compose)
    register("contrast_jitter", ContrastJitter)
    register("gaussian_blur", GaussianBlur)
    register("gaussian_noise", GaussianNoise)
    register("handwriting_views", HandwritingViews)
    register("ink_thickness", InkThickness)
    register("random_affine", RandomAffine)
    register("random_resized_crop", RandomResizedCrop)
