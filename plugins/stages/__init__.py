"""First-party pipeline stages: pre-training, metric training, evaluation, and feature- and score-level fusion."""

from hvkit.api import hookimpl

from .ensemble import Ensemble
from .evaluate import Evaluate
from .mae_pretrain import MAEPretrain
from .metric_train import MetricTrain
from .score_fusion import ScoreFusion
from .ssl_pretrain import SSLPretrain
from .vae_pretrain import VAEPretrain


@hookimpl
def register_stages(register):
    register("ensemble", Ensemble)
    register("evaluate", Evaluate)
    register("mae_pretrain", MAEPretrain)
    register("metric_train", MetricTrain)
    register("score_fusion", ScoreFusion)
    register("ssl_pretrain", SSLPretrain)
    register("vae_pretrain", VAEPretrain)
