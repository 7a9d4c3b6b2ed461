"""MD against the Boltzmann generator at matched cost: E-W2 and T-W2 of each at the same number
of energy evaluations (the demo's cost curve, the benchmark's MD rows), and the MD-vs-MD floor
line of the cost curve (:func:`cost_floor`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from arbg.chem.systems import PeptideSystem
from arbg.data.datasets import Dataset
from arbg.eval.ensembles import (
    Ensemble,
    backbone_torsions,
    resampled_score,
    score,
    strided_reference,
)
from arbg.eval.evaluate import reference_energies, reference_log_weights
from arbg.eval.w2 import energy_w2, torsion_w2
from arbg.reweight import clip_log_weights, normalize_log_weights, weights_from_log

log = logging.getLogger(__name__)

__all__ = ["cost_floor", "md_cost_curve"]


def md_cost_curve(
    system: PeptideSystem,
    md_frames: np.ndarray,
    steps_per_frame: int,
    positions: np.ndarray,
    energies: np.ndarray,
    log_w_raw: np.ndarray,
    reference: Dataset,
    budgets: list[int],
    *,
    evals_per_sample: float = 1.0,
    n_max: int = 5000,
    seed: int = 0,
    md_log_weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """E-W2 and T-W2 against the reference at matched energy-evaluation budgets, BG vs MD.

    One MD step costs one force evaluation, so MD with budget K is the first K steps of a run
    (its frames at the saved stride: K / steps_per_frame frames). A BG with budget K reweights
    its first K / evals_per_sample proposals. Budgets that give fewer than 2 MD frames or
    proposals are skipped. At most ``n_max`` samples per side enter each W2 (stride-subsampled).
    A weighted reference transports its (stride-subsampled) weights. `md_frames` are taken as
    equilibrium MD unless `md_log_weights` ([frames] unnormalised, e.g. biased MD's exact
    frame log-weights) are given: then MD with budget K transports the weights of its first
    frames, renormalised over them (reweighted enhanced-sampling MD at matched cost).
    """

    rng = np.random.default_rng(seed)
    phi, psi = system.phi_indices, system.psi_indices
    ref = strided_reference(
        reference_energies(reference, system),
        backbone_torsions(reference.positions, phi, psi),
        n_max,
        reference_log_weights(reference),
    )
    out: dict[str, Any] = {
        "budgets": [],
        "bg": {"e_w2": [], "t_w2": []},
        "md": {"budgets": [], "e_w2": [], "t_w2": []},
    }
    t0 = time.perf_counter()
    for i, k in enumerate(budgets):
        log.info(
            "cost curve: budget %d of %d (%d energy evaluations), %.0f s so far",
            i + 1,
            len(budgets),
            k,
            time.perf_counter() - t0,
        )
        n_bg = int(k / evals_per_sample)
        if 2 <= n_bg <= len(positions):
            lw, _ = clip_log_weights(np.asarray(log_w_raw[:n_bg], dtype=np.float64))
            bg = Ensemble(energies[:n_bg], backbone_torsions(positions[:n_bg], phi, psi))
            scored = resampled_score(bg, normalize_log_weights(lw), ref, min(n_bg, n_max), rng)
            out["budgets"].append(k)
            out["bg"]["e_w2"].append(scored["e_w2"])
            out["bg"]["t_w2"].append(scored["t_w2"])
        n_md = k // steps_per_frame
        if 2 <= n_md <= len(md_frames):
            sub = slice(0, n_md, max(1, n_md // n_max))
            frames = md_frames[sub]
            md_w = None
            if md_log_weights is not None:
                md_w = weights_from_log(np.asarray(md_log_weights[sub], np.float64))
            md = Ensemble(
                system.reduced_energy(frames), backbone_torsions(frames, phi, psi), None, md_w
            )
            scored = score(md, ref)
            out["md"]["budgets"].append(k)
            out["md"]["e_w2"].append(scored["e_w2"])
            out["md"]["t_w2"].append(scored["t_w2"])
    return out


def cost_floor(system: PeptideSystem, reference: Dataset, n_max: int = 5000) -> dict[str, float]:
    """E-W2 (kT) and T-W2 (rad) of the reference's first half against its second half, each
    stride-subsampled to at most ``n_max / 2`` frames and carrying its frame weights: the floor
    line of the cost curve."""
    u = reference_energies(reference)
    lw = reference_log_weights(reference)
    half = len(reference) // 2
    stride = max(1, (2 * half) // n_max)
    parts = []
    for sl in (slice(0, half, stride), slice(half, 2 * half, stride)):
        x = reference.positions[sl]
        w = None if lw is None else np.exp(normalize_log_weights(lw[sl]))
        t = backbone_torsions(x, system.phi_indices, system.psi_indices)
        parts.append((u[sl], t, w))
    (ua, ta, wa), (ub, tb, wb) = parts
    return {"e_w2": energy_w2(ua, ub, wa, wb), "t_w2": torsion_w2(ta, tb, wa, wb)}
