"""Evaluation metrics: E-W2, T-W2, TICA-W2, features, and the ensemble evaluation.

Definitions follow the paper (``shared/seeds/arbg-paper.txt``, Appendix C.1) and the published
evaluation recipe (``shared/reference.md``):

- **E-W2** (paper eq. 16): the 2-Wasserstein distance between the 1-D distributions of reduced
  energies (kT) of the samples and of the reference MD; computed exactly in 1-D and reported as
  ``sqrt(W2^2)``.
- **T-W2** (paper eqs. 17-19): the 2-Wasserstein distance over all backbone dihedrals
  (phi and psi of every residue that has them) with the periodic squared cost
  ``sum_i min(|d_i|, 2 pi - |d_i|)^2``; exact optimal transport, reported as ``sqrt``.
- **TICA-W2** (paper eqs. 20-23): TICA fitted on the reference trajectory (lag 100 frames, two
  components), exact 2-Wasserstein distance with squared Euclidean cost in the 2-D TICA space.

The exact W2 solvers live in :mod:`arbg.eval.w2`, Ramachandran basin populations and free-energy
differences in :mod:`arbg.eval.basins`; both are re-exported here. Units: positions in nm, energies
in kT, angles in radians.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from arbg.chem.geometry import dihedrals  # noqa: F401  (re-exported)
from arbg.eval.basins import (  # noqa: F401  (re-exported public API)
    DEFAULT_BASINS,
    Basin,
    basin_populations,
    free_energy_differences,
)
from arbg.eval.tica import TicaFit, fit_tica, tica_features, tica_project  # noqa: F401
from arbg.eval.w2 import (  # noqa: F401  (re-exported public API)
    EMD_MAX_ITER,
    energy_w2,
    estimate_ot_seconds,
    n_nonfinite,
    torsion_w2,
    torus_cost,
    w2_euclidean,
)
from arbg.reweight import kish_ess, multinomial_resample, weights_from_log  # noqa: F401

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------
def backbone_torsions(
    x: np.ndarray, phi_indices: np.ndarray, psi_indices: np.ndarray
) -> np.ndarray:
    """All phi then all psi angles, ``[N, k_phi + k_psi]`` radians (the T-W2 coordinates)."""
    return np.concatenate([dihedrals(x, phi_indices), dihedrals(x, psi_indices)], axis=1)


# --------------------------------------------------------------------------------------------
# Scoring ensembles: one stride-subsampled reference, one resample-and-score
# --------------------------------------------------------------------------------------------
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


def _summary(values: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in values[0]:
        v = np.array([d[key] for d in values], dtype=np.float64)
        out[key] = {
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if v.size > 1 else 0.0,
            "values": [float(t) for t in v],
        }
    return out


def _check_ensemble_inputs(T: int, N: int, n_eval: int, floor: bool, mode: str, *lengths) -> None:
    if T < n_eval:
        raise ValueError(f"reference has {T} frames, fewer than n_eval={n_eval}")
    if floor and T // 2 < n_eval:
        raise ValueError(
            f"the MD floor needs two disjoint blocks of n_eval={n_eval} frames, i.e. a reference "
            f"of at least {2 * n_eval} frames; got {T}. Use a longer reference, a smaller n_eval, "
            "or floor=False."
        )
    if any(n != N for n in lengths):
        raise ValueError("positions, energies and log_weights must have the same length")
    if mode not in ("transport", "resample"):
        raise ValueError(f"ref_weight_mode must be 'transport' or 'resample', got {mode!r}")


# long: the docstring (four ensembles, 20 parameters) is 70 of its lines; the body is ~55
def evaluate_ensemble(
    ref_positions: np.ndarray,
    ref_energies: np.ndarray,
    positions: np.ndarray,
    energies: np.ndarray,
    log_weights: np.ndarray,
    *,
    phi_indices: np.ndarray,
    psi_indices: np.ndarray,
    omega_indices: np.ndarray | None,
    backbone_indices: np.ndarray,
    n_eval: int = 10_000,
    tica_lag: int = 100,
    tica_dim: int = 2,
    seed: int = 0,
    n_repeats: int = 1,
    floor: bool = True,
    weighted: bool = True,
    max_weighted: int = 20_000,
    info: dict[str, Any] | None = None,
    ref_log_weights: np.ndarray | None = None,
    ref_weight_mode: str = "transport",
) -> dict[str, Any]:
    """E-W2, T-W2 and TICA-W2 of a proposal and its reweighted ensemble against reference MD.

    Ensembles, each compared with a stride-subsampled reference of ``n_eval`` frames
    (stride ``T // n_eval``, offset ``r % stride`` in repeat ``r``):

    - ``proposal``: ``n_eval`` raw proposals (a random subset if more are given).
    - ``reweighted_resampled``: ``n_eval`` multinomial draws with the importance weights; the
      number of unique samples is reported.
    - ``reweighted_weighted``: all proposals with non-zero weight (a random subset of
      ``max_weighted`` if more, weights renormalized) transporting the normalized weights
      directly: no resampling noise. Computed once (repeat 0).
    - ``md_floor``: the first against the second half of the reference, each stride-subsampled
      to ``n_eval`` frames: what "perfect" looks like at this sample count.

    A weighted reference (``ref_log_weights``: biased or heated MD) enters every comparison,
    the floor included, by ``ref_weight_mode``: ``"transport"`` (the stride-subsampled frames
    carry their renormalised weights into the transport problem) or ``"resample"``
    (``n_eval`` multinomial draws by weight, from the whole reference or from each half for the
    floor, with the seeded generator). TICA is fitted on the reference frames as they are.

    TICA (lag ``tica_lag`` frames, ``tica_dim`` components) is fitted on the whole reference.

    Parameters
    ----------
    ref_positions : ndarray, shape (T, n_atoms, 3)
        Time-ordered reference MD positions, nm.
    ref_energies : ndarray, shape (T,)
        Reference reduced energies, kT.
    positions : ndarray, shape (N, n_atoms, 3)
        Proposal positions, nm.
    energies : ndarray, shape (N,)
        Proposal reduced energies, kT (``+inf`` allowed).
    log_weights : ndarray, shape (N,)
        Normalized log importance weights (``-inf`` = zero weight).
    phi_indices, psi_indices, omega_indices : ndarray, shape (k, 4)
        Dihedral definitions (``omega_indices`` may be None).
    backbone_indices : ndarray, shape (b,)
        Backbone heavy atoms for the TICA distance features.
    n_eval : int
        Samples per evaluated set (published: 10,000).
    tica_lag, tica_dim : int
        TICA lag (frames) and dimension.
    seed : int
        Seed of the numpy Generator for subsets and resampling.
    n_repeats : int
        Repeats; each metric is reported as mean, std (ddof=1) and the values.
    floor, weighted : bool
        Whether to compute the MD-vs-MD floor and the weighted-transport variant.
    max_weighted : int
        Cap on the number of points in the weighted transport problem.
    info : dict, optional
        Extra JSON-serializable entries merged into the result (e.g. energy evaluations spent,
        clipped fraction).
    ref_log_weights : ndarray, shape (T,), optional
        Log-weights of the reference frames (unnormalised; None = equilibrium MD).
    ref_weight_mode : str
        ``"transport"`` or ``"resample"`` (see above).

    Returns
    -------
    dict
        JSON-serializable results; ``result["metrics"][ensemble][metric]`` has ``mean``, ``std``,
        ``values``.
    """
    ref_energies = np.asarray(ref_energies, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    log_weights = np.asarray(log_weights, dtype=np.float64)
    T, N = len(ref_positions), len(positions)
    _check_ensemble_inputs(T, N, n_eval, floor, ref_weight_mode, len(energies), len(log_weights))
    rng = np.random.default_rng(seed)
    feats = (backbone_indices, phi_indices, psi_indices, omega_indices)
    ref, tica = _featurize(np.asarray(ref_positions), ref_energies, feats, (tica_lag, tica_dim))
    prop, _ = _featurize(positions, energies, feats, tica)
    ref_w = None if ref_log_weights is None else weights_from_log(ref_log_weights)

    def ref_block(lo: int, hi: int, step: int, off: int) -> Ensemble:
        if ref_w is None:
            return ref.take(np.arange(lo + off, hi, step)[:n_eval])
        if ref_weight_mode == "resample":
            lw = np.asarray(ref_log_weights, dtype=np.float64)[lo:hi]
            return ref.take(np.sort(lo + multinomial_resample(lw, n_eval, rng)))
        return ref.take(np.arange(lo + off, hi, step)[:n_eval], ref_w)

    n_problems = 2 * n_repeats * (2 + floor) + (2 if weighted else 0)
    log.info(
        "evaluate: %d exact W2 problems of %d samples; roughly %.0f s on this machine "
        "(lower --n-eval to go faster: the time grows as n_eval^2.8)",
        n_problems,
        n_eval,
        estimate_ot_seconds(n_eval, n_problems, seed),
    )
    results, unique = _score_repeats(
        prop, log_weights, ref_block, T, n_eval, n_repeats, floor, weighted, max_weighted, rng
    )
    out = _ensemble_record(T, N, n_eval, T // n_eval, seed, n_repeats, tica, log_weights, ref_w)
    out["n_nonfinite_energies"] = {
        "reference": n_nonfinite(ref_energies),
        "proposal": n_nonfinite(energies),
    }
    out["unique_resampled"] = {"mean": float(np.mean(unique)), "values": unique}
    out["metrics"] = {k: _summary(v) for k, v in results.items() if v}
    out["reference_weight_mode"] = None if ref_w is None else ref_weight_mode
    out.update(info or {})
    return out


def _featurize(
    x: np.ndarray, u: np.ndarray, feats: tuple, tica: TicaFit | tuple[int, int]
) -> tuple[Ensemble, TicaFit]:
    """Energies, backbone torsions and TICA coordinates of conformations ``x``, and the TICA.

    ``feats`` is ``(backbone, phi, psi, omega)`` indices; ``tica`` a fit, or ``(lag, dim)`` to
    fit one on ``x``."""
    tf = tica_features(x, *feats)
    if not isinstance(tica, TicaFit):
        tica = fit_tica(tf, lag=tica[0], dim=tica[1])
    return Ensemble(u, backbone_torsions(x, feats[1], feats[2]), tica_project(tica, tf)), tica


def _score_repeats(
    prop: Ensemble,
    log_weights: np.ndarray,
    ref_block: Callable[[int, int, int, int], Ensemble],
    T: int,
    n_eval: int,
    n_repeats: int,
    floor: bool,
    weighted: bool,
    max_weighted: int,
    rng: np.random.Generator,
) -> tuple[dict[str, list[dict[str, float]]], list[int]]:
    """The W2s of every ensemble of :func:`evaluate_ensemble` per repeat, and the unique
    conformations of each resampled set."""
    N = len(prop.energies)
    w = weights_from_log(log_weights)
    stride, half_stride = T // n_eval, (T // 2) // n_eval
    results: dict[str, list[dict[str, float]]] = {"proposal": [], "reweighted_resampled": []}
    results.update({"md_floor": []} if floor else {})
    results.update({"reweighted_weighted": []} if weighted else {})
    unique: list[int] = []
    for r in range(n_repeats):
        ref_sub = ref_block(0, T, stride, r % stride)
        sub = rng.permutation(N)[:n_eval] if N > n_eval else np.arange(N)
        results["proposal"].append(score(prop.take(sub), ref_sub, "proposal"))
        scored = resampled_score(prop, log_weights, ref_sub, n_eval, rng, "reweighted")
        unique.append(scored.pop("unique"))
        results["reweighted_resampled"].append(scored)
        if weighted and r == 0:
            nz = np.flatnonzero(w > 0)
            if nz.size > max_weighted:
                nz = np.sort(rng.choice(nz, size=max_weighted, replace=False))
            wset = prop.take(nz, w)
            results["reweighted_weighted"].append(score(wset, ref_sub, "weighted transport"))
        if floor:
            off = r % half_stride
            a, b = ref_block(0, T // 2, half_stride, off), ref_block(T // 2, T, half_stride, off)
            results["md_floor"].append(score(a, b, "MD floor"))
        log.info("evaluate_ensemble: repeat %d/%d done", r + 1, n_repeats)
    return results, unique


def _ensemble_record(
    T: int,
    N: int,
    n_eval: int,
    stride: int,
    seed: int,
    n_repeats: int,
    tica: TicaFit,
    log_weights: np.ndarray,
    ref_w: np.ndarray | None,
) -> dict[str, Any]:
    ess = float(kish_ess(log_weights))
    return {
        "n_eval": int(n_eval),
        "n_proposals": int(N),
        "n_reference_frames": int(T),
        "reference_stride": int(stride),
        "seed": int(seed),
        "n_repeats": int(n_repeats),
        "tica": {"lag": tica.lag, "dim": tica.dim, "koopman_reweighting": tica.koopman_reweighting},
        "ess": ess,
        "ess_fraction": ess / N,
        "reference_weighted": ref_w is not None,
        "reference_ess": float(T if ref_w is None else 1.0 / np.sum(ref_w**2)),
        "n_nonzero_weights": int(np.count_nonzero(weights_from_log(log_weights) > 0)),
    }
