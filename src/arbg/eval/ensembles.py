"""Ensembles as the W2 metrics see them, and their scores.

An :class:`Ensemble` is a set of conformations reduced to what E-W2, T-W2 and TICA-W2 compare:
reduced energies (kT), backbone torsions (:func:`backbone_torsions`, radians), optional TICA
coordinates, and frame weights. :func:`score` gives the exact W2 distances between two ensembles
(:mod:`arbg.eval.w2`); :func:`strided_reference` subsamples a time-ordered reference and
:func:`resampled_score` draws proposals by importance weight and scores them. The evaluation
(:mod:`arbg.eval.evaluate`), MD at matched cost (:mod:`arbg.eval.cost`) and the temperature
tuning (:mod:`arbg.experiments.tuning`) are built from these.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from arbg.chem.geometry import dihedrals
from arbg.eval.w2 import energy_w2, torsion_w2, w2_euclidean
from arbg.reweight import multinomial_resample, weights_from_log

log = logging.getLogger(__name__)


def backbone_torsions(
    x: np.ndarray, phi_indices: np.ndarray, psi_indices: np.ndarray
) -> np.ndarray:
    """All phi then all psi angles, ``[N, k_phi + k_psi]`` radians (the T-W2 coordinates)."""
    return np.concatenate([dihedrals(x, phi_indices), dihedrals(x, psi_indices)], axis=1)


@dataclass
class Ensemble:
    """Energies ``[n]`` kT, backbone torsions ``[n, 2k]`` rad, optional TICA ``[n, d]`` and
    normalized frame weights ``[n]`` (None = uniform) of a set of conformations."""

    energies: np.ndarray
    torsions: np.ndarray
    tica: np.ndarray | None = None
    weights: np.ndarray | None = None

    def take(self, idx: np.ndarray, weights: np.ndarray | None = None) -> Ensemble:
        """Frames ``idx``; with ``weights`` ([T], non-negative) they carry them, renormalised."""
        w = None if weights is None else weights[idx] / weights[idx].sum()
        tica = None if self.tica is None else self.tica[idx]
        return Ensemble(self.energies[idx], self.torsions[idx], tica, w)


def score(a: Ensemble, b: Ensemble, what: str = "") -> dict[str, float]:
    """E-W2 and T-W2 (and TICA-W2 where both have TICA coordinates) between two ensembles;
    ``what`` names the pair in a timing log line."""
    t0 = time.perf_counter()
    out = {
        "e_w2": energy_w2(a.energies, b.energies, a.weights, b.weights),
        "t_w2": torsion_w2(a.torsions, b.torsions, a.weights, b.weights),
    }
    if a.tica is not None and b.tica is not None:
        out["tica_w2"] = w2_euclidean(a.tica, b.tica, a.weights, b.weights)
    if what:
        log.info("evaluate: %s W2 done (%.1f s)", what, time.perf_counter() - t0)
    return out


def strided_reference(
    energies: np.ndarray,
    torsions: np.ndarray,
    n: int,
    log_weights: np.ndarray | None = None,
) -> Ensemble:
    """Every ``len // n``-th frame of a time-ordered reference, at most ``n`` of them.

    ``log_weights`` ([T], unnormalised; biased or heated MD) become the renormalised weights of
    the kept frames; None or constant log-weights give an unweighted ensemble.
    """
    energies = np.asarray(energies, dtype=np.float64)
    idx = np.arange(0, len(energies), max(1, len(energies) // n))[:n]
    full = Ensemble(energies, np.asarray(torsions))
    if log_weights is None or np.ptp(np.asarray(log_weights, dtype=np.float64)) == 0:
        return full.take(idx)
    return full.take(idx, weights_from_log(log_weights))


def resampled_score(
    proposals: Ensemble,
    log_weights: np.ndarray,
    reference: Ensemble,
    n: int,
    rng: np.random.Generator,
    what: str = "",
) -> dict[str, float]:
    """Draw ``n`` proposals by importance weight (multinomial) and score them against
    ``reference``; ``unique`` counts the distinct conformations drawn."""
    idx = multinomial_resample(np.asarray(log_weights, dtype=np.float64), n, rng)
    return {**score(proposals.take(idx), reference, what), "unique": int(np.unique(idx).size)}
