"""Evaluation against MD: W2 metrics, TICA, basin populations, the report and its plots."""

from __future__ import annotations

from arbg.eval.basins import basin_populations, free_energy_differences
from arbg.eval.evaluate import evaluate_ensemble, evaluate_run, evaluate_samples
from arbg.eval.w2 import energy_w2, torsion_w2

__all__ = [
    "basin_populations",
    "energy_w2",
    "evaluate_ensemble",
    "evaluate_run",
    "evaluate_samples",
    "free_energy_differences",
    "torsion_w2",
]
