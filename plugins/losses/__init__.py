"""First-party losses: metric-learning, margin-softmax and self-supervised objectives."""

from hvkit.api import hookimpl

from .arcface import ArcFaceLoss
from .barlow_twins import BarlowTwinsLoss
from .byol import BYOLLoss
from .circle import CircleLoss
from .contra_x import ContraXLoss
from .contrastive import ContrastiveLoss
from .cosface import CosFaceLoss
from .dino import DINOLoss
from .fast_ap import FastAPLoss
from .identitization import IdentitizationLoss
from .invariant_spreading import InvariantSpreadingLoss
from .lifted_structure import GeneralizedLiftedStructureLoss, LiftedStructureLoss
from .margin import MarginLoss
from .moco_v3 import MoCoV3Loss
from .multi_similarity import MultiSimilarityLoss
from .nbc_softmax import NBCSoftmaxLoss
from .npairs import NPairsLoss
from .ntxent import NTXentLoss
from .proxy_anchor import ProxyAnchorLoss
from .proxy_nca import ProxyNCALoss
from .simsiam import SimSiamLoss
from .soft_triple import SoftTripleLoss
from .sphereface import SphereFaceLoss
from .subcenter_arcface import SubCenterArcFaceLoss
from .supcon import SupConLoss
from .triplet import TripletLoss
from .tuplet_margin import TupletMarginLoss
from .vae_elbo import VAEELBOLoss
from .vicreg import VICRegLoss


@hookimpl
def register_losses(register):
    register("arcface", ArcFaceLoss)
    register("barlow_twins", BarlowTwinsLoss)
    register("byol", BYOLLoss)
    register("circle", CircleLoss)
    register("contra_x", ContraXLoss)
    register("contrastive", ContrastiveLoss)
    register("cosface", CosFaceLoss)
    register("dino", DINOLoss)
    register("fast_ap", FastAPLoss)
    register("generalized_lifted_structure", GeneralizedLiftedStructureLoss)
    register("identitization", IdentitizationLoss)
    register("invariant_spreading", InvariantSpreadingLoss)
    register("lifted_structure", LiftedStructureLoss)
    register("margin", MarginLoss)
    register("moco_v3", MoCoV3Loss)
    register("multi_similarity", MultiSimilarityLoss)
    register("nbc_softmax", NBCSoftmaxLoss)
    register("npairs", NPairsLoss)
    register("ntxent", NTXentLoss)
    register("proxy_anchor", ProxyAnchorLoss)
    register("proxy_nca", ProxyNCALoss)
    register("simsiam", SimSiamLoss)
    register("soft_triple", SoftTripleLoss)
    register("sphereface", SphereFaceLoss)
    register("subcenter_arcface", SubCenterArcFaceLoss)
    register("supcon", SupConLoss)
    register("triplet", TripletLoss)
    register("tuplet_margin", TupletMarginLoss)
    register("vae_elbo", VAEELBOLoss)
    register("vicreg", VICRegLoss)
