"""The model side (no OpenMM): coordinates (standardization and binning), the causal
transformer and its heads, the incremental decoder, and the sequence conditioning of the
transferable model."""

from __future__ import annotations

from arbg.nn.conditioning import BoundModel, ConditioningConfig, TransferableARBG
from arbg.nn.coordinates import Binning, Standardization
from arbg.nn.decoder import Decoder, auto_batch_size
from arbg.nn.model import ARBG, ModelConfig, TokenFeatures

__all__ = [
    "ARBG",
    "Binning",
    "BoundModel",
    "ConditioningConfig",
    "Decoder",
    "ModelConfig",
    "Standardization",
    "TokenFeatures",
    "TransferableARBG",
    "auto_batch_size",
]
