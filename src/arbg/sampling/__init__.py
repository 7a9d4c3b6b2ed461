"""Sampling with exact log q (KV-cached generation), twisted SMC, targets and run
directories."""

from __future__ import annotations

from arbg.sampling.config import SampleConfig, SMCConfig
from arbg.sampling.runs import read_run, run_sampling, run_smc
from arbg.sampling.sampler import SampleBatch, generate, make_generators
from arbg.sampling.smc import twisted_smc
from arbg.sampling.targets import Target

__all__ = [
    "SMCConfig",
    "SampleBatch",
    "SampleConfig",
    "Target",
    "generate",
    "make_generators",
    "read_run",
    "run_sampling",
    "run_smc",
    "twisted_smc",
]
