"""Training (one loop for single-system and transferable models) and checkpoints (every
save and load)."""

from __future__ import annotations

from arbg.train.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from arbg.train.config import TrainConfig
from arbg.train.trainer import Trainer, train
from arbg.train.transferable import TransferableTrainer, train_transferable

__all__ = [
    "Checkpoint",
    "TrainConfig",
    "Trainer",
    "TransferableTrainer",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "train_transferable",
]
