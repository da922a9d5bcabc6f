"""First-party losses: metric-learning, margin-softmax and self-supervised objectives."""

from hvkit.api import hookimpl

from .adaface import AdaFaceLoss
from .align_uniform import AlignUniformLoss
from .angular import AngularLoss
from .arcface import ArcFaceLoss
from .barlow_twins import BarlowTwinsLoss
from .byol import BYOLLoss
from .circle import CircleLoss
from .contra_x import ContraXLoss
from .contrastive import ContrastiveLoss
from .cosface import CosFaceLoss
from .curricularface import CurricularFaceLoss
from .dcl import DCLLoss
from .dino import DINOLoss
from .dynamic_soft_margin import DynamicSoftMarginLoss
from .elasticface import ElasticArcFaceLoss, ElasticCosFaceLoss
from .fast_ap import FastAPLoss
from .histogram import HistogramLoss
from .identitization import IdentitizationLoss
from .instance import InstanceLoss
from .intra_pair_variance import IntraPairVarianceLoss
from .invariant_spreading import InvariantSpreadingLoss
from .large_margin_softmax import LargeMarginSoftmaxLoss
from .lifted_structure import GeneralizedLiftedStructureLoss, LiftedStructureLoss
from .magface import MagFaceLoss
from .manifold import ManifoldLoss
from .margin import MarginLoss
from .moco_v2 import MoCoV2Loss
from .moco_v3 import MoCoV3Loss
from .multi_similarity import MultiSimilarityLoss
from .nbc_softmax import NBCSoftmaxLoss
from .nca import NCALoss
from .nnclr import NNCLRLoss
from .normalized_softmax import NormalizedSoftmaxLoss
from .npairs import NPairsLoss
from .ntxent import NTXentLoss
from .p2sgrad import P2SGradLoss
from .pnp import PNPLoss
from .proxy_anchor import ProxyAnchorLoss
from .proxy_nca import ProxyNCALoss
from .ranked_list import RankedListLoss
from .regularized import RegularizedLoss
from .self_supervised import SelfSupervisedLoss
from .simsiam import SimSiamLoss
from .smooth_ap import SmoothAPLoss
from .snr_contrastive import SNRContrastiveLoss
from .soft_triple import SoftTripleLoss
from .sphereface import SphereFaceLoss
from .subcenter_arcface import SubCenterArcFaceLoss
from .supcon import SupConLoss
from .swav import SwAVLoss
from .threshold_consistent_margin import ThresholdConsistentMarginLoss
from .tico import TiCoLoss
from .triplet import TripletLoss
from .tuplet_margin import TupletMarginLoss
from .vae_elbo import VAEELBOLoss
from .vicreg import VICRegLoss
from .vicregl import VICRegLLoss
from .w_mse import WMSELoss
from .weighted_sum import WeightedSumLoss


@hookimpl
def register_losses(register):
    register("adaface", AdaFaceLoss)
    register("align_uniform", AlignUniformLoss)
    register("angular", AngularLoss)
    register("arcface", ArcFaceLoss)
    register("barlow_twins", BarlowTwinsLoss)
    register("byol", BYOLLoss)
    register("circle", CircleLoss)
    register("contra_x", ContraXLoss)
    register("contrastive", ContrastiveLoss)
    register("cosface", CosFaceLoss)
    register("curricularface", CurricularFaceLoss)
    register("dcl", DCLLoss)
    register("dino", DINOLoss)
    register("dynamic_soft_margin", DynamicSoftMarginLoss)
    register("elastic_arcface", ElasticArcFaceLoss)
    register("elastic_cosface", ElasticCosFaceLoss)
    register("fast_ap", FastAPLoss)
    register("generalized_lifted_structure", GeneralizedLiftedStructureLoss)
    register("histogram", HistogramLoss)
    register("identitization", IdentitizationLoss)
    register("instance", InstanceLoss)
    register("intra_pair_variance", IntraPairVarianceLoss)
    register("invariant_spreading", InvariantSpreadingLoss)
    register("large_margin_softmax", LargeMarginSoftmaxLoss)
    register("lifted_structure", LiftedStructureLoss)
    register("magface", MagFaceLoss)
    register("manifold", ManifoldLoss)
    register("margin", MarginLoss)
    register("moco_v2", MoCoV2Loss)
    register("moco_v3", MoCoV3Loss)
    register("multi_similarity", MultiSimilarityLoss)
    register("nbc_softmax", NBCSoftmaxLoss)
    register("nca", NCALoss)
    register("nnclr", NNCLRLoss)
    register("normalized_softmax", NormalizedSoftmaxLoss)
    register("npairs", NPairsLoss)
    register("ntxent", NTXentLoss)
    register("p2sgrad", P2SGradLoss)
    register("pnp", PNPLoss)
    register("proxy_anchor", ProxyAnchorLoss)
    register("proxy_nca", ProxyNCALoss)
    register("ranked_list", RankedListLoss)
    register("regularized", RegularizedLoss)
    register("self_supervised", SelfSupervisedLoss)
    register("simsiam", SimSiamLoss)
    register("smooth_ap", SmoothAPLoss)
    register("snr_contrastive", SNRContrastiveLoss)
    register("soft_triple", SoftTripleLoss)
    register("sphereface", SphereFaceLoss)
    register("subcenter_arcface", SubCenterArcFaceLoss)
    register("supcon", SupConLoss)
    register("swav", SwAVLoss)
    register("threshold_consistent_margin", ThresholdConsistentMarginLoss)
    register("tico", TiCoLoss)
    register("triplet", TripletLoss)
    register("tuplet_margin", TupletMarginLoss)
    register("vae_elbo", VAEELBOLoss)
    register("vicreg", VICRegLoss)
    register("vicregl", VICRegLLoss)
    register("w_mse", WMSELoss)
    register("weighted_sum", WeightedSumLoss)
