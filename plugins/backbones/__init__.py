"""First-party backbones: image encoders mapping (B,C,H,W) to (B,D) features."""

from hvkit.api import hookimpl

from .concat import Concat
from .resnet import ResNet18, ResNet34, ResNet50
from .resnet_vae import ResNetVAE
from .small_cnn import SmallCNN
from .torchvision_model import TorchvisionModel
from .vit import ViT, ViTSmall


@hookimpl
def register_backbones(register):
    register("concat", Concat)
    register("resnet18", ResNet18)
    register("resnet34", ResNet34)
    register("resnet50", ResNet50)
    register("resnet_vae", ResNetVAE)
    register("small_cnn", SmallCNN)
    register("torchvision", TorchvisionModel)
    register("vit", ViT)
    register("vit_small", ViTSmall)
