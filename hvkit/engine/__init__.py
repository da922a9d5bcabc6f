"""The engine a stage plugin uses: its run context and the shared training loop."""

from hvkit.engine.checkpoint import load_checkpoint, save_checkpoint, write_json
from hvkit.engine.context import StageContext, derive_seed
from hvkit.engine.trainer import TrainConfig, Trainer

__all__ = ["StageContext", "TrainConfig", "Trainer", "derive_seed", "load_checkpoint",
           "save_checkpoint", "write_json"]
