"""End-to-end jobs built from the library: the demo, the benchmark, ablations, zero-shot
tables and temperature tuning."""

from __future__ import annotations

from arbg.experiments.ablations import AblateTemperatureConfig, ablate_bins, ablate_temperature
from arbg.experiments.benchmark import BenchmarkConfig, run_benchmark
from arbg.experiments.demo import DemoConfig, run_demo
from arbg.experiments.tuning import tune_temperature
from arbg.experiments.zeroshot import ZeroShotConfig, evaluate_zero_shot

__all__ = [
    "AblateTemperatureConfig",
    "BenchmarkConfig",
    "DemoConfig",
    "ZeroShotConfig",
    "ablate_bins",
    "ablate_temperature",
    "evaluate_zero_shot",
    "run_benchmark",
    "run_demo",
    "tune_temperature",
]
