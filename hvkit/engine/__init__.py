"""The engine a stage plugin uses: its run context, the shared training loop, and multi-process helpers."""

from hvkit import distributed
from hvkit.engine.checkpoint import atomic_write, load_checkpoint, save_checkpoint, write_json
from hvkit.engine.context import StageContext, derive_seed
from hvkit.engine.trainer import TrainConfig, Trainer, full_precision

__all__ = ["StageContext", "TrainConfig", "Trainer", "full_precision", "atomic_write", "derive_seed", "distributed",
           "load_checkpoint", "save_checkpoint", "write_json"]
