"""The model side (no OpenMM): coordinates (standardization and binning), the causal
transformer and its heads, the static decoder, and the sequence conditioning of the transferable
model."""

from __future__ import annotations

from arbg.nn.binning import Binning
from arbg.nn.conditioning import BoundModel, ConditioningConfig, TransferableARBG
from arbg.nn.decode import StaticDecoder, auto_batch_size
from arbg.nn.model import ARBG, KVCache, ModelConfig, TokenFeatures
from arbg.nn.standardize import Standardization

__all__ = [
    "ARBG",
    "Binning",
    "BoundModel",
    "ConditioningConfig",
    "KVCache",
    "ModelConfig",
    "Standardization",
    "StaticDecoder",
    "TokenFeatures",
    "TransferableARBG",
    "auto_batch_size",
]
