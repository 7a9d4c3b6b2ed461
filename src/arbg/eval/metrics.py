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

Ramachandran basin populations and free-energy differences live in :mod:`arbg.eval.basins` and are
re-exported here. Units: positions in nm, energies in kT, angles in radians.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ot

from arbg.chem.geometry import dihedrals  # noqa: F401  (re-exported)
from arbg.eval.basins import (  # noqa: F401  (re-exported public API)
    DEFAULT_BASINS,
    Basin,
    basin_populations,
    free_energy_differences,
)
from arbg.eval.tica import TicaFit, fit_tica, tica_features, tica_project  # noqa: F401
from arbg.reweight import kish_ess, multinomial_resample, weights_from_log  # noqa: F401

log = logging.getLogger(__name__)

#: Network-simplex iteration cap for exact OT; 10,000 x 10,000 problems need far more than
#: POT's default of 100,000.
EMD_MAX_ITER = 50_000_000


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _normalize(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"weights have length {w.shape[0]}, expected {n}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    total = w.sum()
    if total <= 0:
        raise ValueError("weights sum to zero")
    return w / total


def n_nonfinite(values: np.ndarray) -> int:
    """Number of non-finite entries (NaN or +-inf) in ``values``."""
    return int(np.count_nonzero(~np.isfinite(np.asarray(values, dtype=np.float64))))


def _emd2(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    value, info = ot.emd2(a, b, cost, numItermax=EMD_MAX_ITER, log=True)
    if info.get("warning"):
        log.warning("exact OT did not converge cleanly: %s", info["warning"])
    return float(value)


def _drop_zero(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = w > 0
    return x[keep], w[keep] / w[keep].sum()


# --------------------------------------------------------------------------------------------
# Wasserstein distances
# --------------------------------------------------------------------------------------------
def energy_w2(
    u_a: np.ndarray,
    u_b: np.ndarray,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
) -> float:
    """E-W2: exact 2-Wasserstein distance between two 1-D reduced-energy distributions.

    Paper eq. (16): ``E-W2(p, q)^2 = min_pi int |x - y|^2 dpi``; computed exactly in 1-D with
    POT ``emd2_1d`` (sorted quantile coupling) and reported as ``sqrt``. Non-finite energies
    (and their weights) are dropped before the computation; their count is logged (use
    :func:`n_nonfinite` to report it).

    Parameters
    ----------
    u_a, u_b : ndarray, shape (N,), (M,)
        Reduced energies in kT.
    weights_a, weights_b : ndarray, optional
        Non-negative weights (normalized internally after filtering); uniform if omitted.

    Returns
    -------
    float
        E-W2 in kT.
    """
    u_a = np.asarray(u_a, dtype=np.float64).reshape(-1)
    u_b = np.asarray(u_b, dtype=np.float64).reshape(-1)
    wa = _normalize(weights_a, u_a.shape[0])
    wb = _normalize(weights_b, u_b.shape[0])
    fa, fb = np.isfinite(u_a), np.isfinite(u_b)
    if not fa.all() or not fb.all():
        log.warning(
            "energy_w2: dropping %d/%d and %d/%d non-finite energies",
            (~fa).sum(),
            fa.size,
            (~fb).sum(),
            fb.size,
        )
    if not fa.any() or not fb.any() or wa[fa].sum() <= 0 or wb[fb].sum() <= 0:
        return float("nan")
    xa, wa = _drop_zero(u_a[fa], wa[fa] / wa[fa].sum())
    xb, wb = _drop_zero(u_b[fb], wb[fb] / wb[fb].sum())
    value = ot.emd2_1d(xa, xb, a=wa, b=wb, metric="sqeuclidean")
    return float(np.sqrt(max(float(value), 0.0)))


def torus_cost(angles_a: np.ndarray, angles_b: np.ndarray) -> np.ndarray:
    """Periodic squared cost matrix on the torus (paper eq. 18).

    Parameters
    ----------
    angles_a, angles_b : ndarray, shape (N, k), (M, k)
        Angles in radians (any branch).

    Returns
    -------
    ndarray, shape (N, M)
        ``sum_i min(|d_i|, 2 pi - |d_i|)^2`` in rad^2.
    """
    a = np.asarray(angles_a, dtype=np.float64)
    b = np.asarray(angles_b, dtype=np.float64)
    cost = np.zeros((a.shape[0], b.shape[0]))
    for i in range(a.shape[1]):  # accumulate per angle: O(N*M) memory
        d = np.abs(a[:, i, None] - b[None, :, i]) % (2 * np.pi)
        cost += np.minimum(d, 2 * np.pi - d) ** 2
    return cost


def torsion_w2(
    angles_a: np.ndarray,
    angles_b: np.ndarray,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
) -> float:
    """T-W2: exact 2-Wasserstein distance on the torus of backbone dihedrals.

    Paper eqs. (17-19); cost :func:`torus_cost`, exact OT (POT ``emd2``), reported as ``sqrt``.
    With weights, the normalized weights are transported directly (zero weights dropped).

    Parameters
    ----------
    angles_a, angles_b : ndarray, shape (N, k), (M, k)
        Dihedrals in radians, e.g. all phi then all psi.
    weights_a, weights_b : ndarray, optional
        Non-negative sample weights; uniform if omitted.

    Returns
    -------
    float
        T-W2 in radians.
    """
    a = np.asarray(angles_a, dtype=np.float64).reshape(len(angles_a), -1)
    b = np.asarray(angles_b, dtype=np.float64).reshape(len(angles_b), -1)
    a, wa = _drop_zero(a, _normalize(weights_a, a.shape[0]))
    b, wb = _drop_zero(b, _normalize(weights_b, b.shape[0]))
    return float(np.sqrt(max(_emd2(wa, wb, torus_cost(a, b)), 0.0)))


def w2_euclidean(
    a: np.ndarray, b: np.ndarray, wa: np.ndarray | None = None, wb: np.ndarray | None = None
) -> float:
    """Exact 2-Wasserstein distance with squared Euclidean cost (TICA-W2, paper eq. 23).

    Parameters
    ----------
    a, b : ndarray, shape (N, d), (M, d)
        Points, e.g. TICA projections.
    wa, wb : ndarray, optional
        Non-negative weights; uniform if omitted.

    Returns
    -------
    float
        W2 in the units of the points.
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    a, wa = _drop_zero(a, _normalize(wa, a.shape[0]))
    b, wb = _drop_zero(b, _normalize(wb, b.shape[0]))
    cost = ot.dist(a, b, metric="sqeuclidean")
    return float(np.sqrt(max(_emd2(wa, wb, cost), 0.0)))


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


def estimate_ot_seconds(n: int, n_problems: int, seed: int = 0) -> float:
    """Rough wall time (s) of ``n_problems`` exact OT problems of ``n`` against ``n`` points.

    One torus problem of ``m = min(n, 1000)`` random points is timed on this machine and scaled
    as ``(n / m) ** 2.8`` (measured on POT's network simplex: 0.11 s at 1,000 points, 0.81 s at
    2,000, one core).
    """
    m = max(2, min(int(n), 1000))
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-np.pi, np.pi, (2, m, 2))
    t0 = time.perf_counter()
    torsion_w2(a, b)
    return (time.perf_counter() - t0) * (n / m) ** 2.8 * n_problems


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

    def featurize(x: np.ndarray, u: np.ndarray, tica: TicaFit | None) -> tuple[Ensemble, Any]:
        tf = tica_features(x, backbone_indices, phi_indices, psi_indices, omega_indices)
        tica = tica or fit_tica(tf, lag=tica_lag, dim=tica_dim)
        return Ensemble(
            u, backbone_torsions(x, phi_indices, psi_indices), tica_project(tica, tf)
        ), tica

    ref, tica = featurize(np.asarray(ref_positions), ref_energies, None)
    prop, _ = featurize(positions, energies, tica)
    w = weights_from_log(log_weights)
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
    out = _ensemble_record(T, N, n_eval, stride, seed, n_repeats, tica, log_weights, ref_w)
    out["n_nonfinite_energies"] = {
        "reference": n_nonfinite(ref_energies),
        "proposal": n_nonfinite(energies),
    }
    out["unique_resampled"] = {"mean": float(np.mean(unique)), "values": unique}
    out["metrics"] = {k: _summary(v) for k, v in results.items() if v}
    out["reference_weight_mode"] = None if ref_w is None else ref_weight_mode
    out.update(info or {})
    return out


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
