"""`arbg evaluate`: metrics of a sampling run against reference MD, observables, the report.

Follows the published benchmark recipe (``docs/references.md``, "Published evaluation"):
E-W2 on reduced energies, T-W2 over all phi/psi with the periodic cost, TICA-W2 in a 2-D TICA
space fitted on the reference (lag 100 frames), each for the raw proposal and the reweighted
ensemble, on ``n_eval`` samples against a stride-subsampled reference of the same size, beside
the MD-vs-MD floor (two disjoint time blocks of the reference).

Three levels, each built on the one before: :func:`evaluate_ensemble` scores arrays (the W2
definitions are in :mod:`arbg.eval.w2`, the ensembles in :mod:`arbg.eval.ensembles`);
:func:`evaluate_samples` scores a system's samples against a reference dataset and adds the basin
populations; :func:`evaluate_run` reads a run directory and writes metrics.json and the report
(:mod:`arbg.eval.report`).

A weighted reference (biased or heated ``arbg md`` data,
:attr:`arbg.data.datasets.Dataset.log_weights`)
is understood everywhere: its weights are transported into the W2 problems (or the reference is
resampled by weight with the seed, ``reference_weights="resample"``), the MD-vs-MD floor
compares the weighted halves, basin populations of the reference are weighted with block
(jackknife) standard errors, and metrics.json gives the Kish ESS of the reference weights.

Which sample weights make which number: the W2 metrics keep the published clipping (the run's
``log_w``: the largest 0.2 % of the weights dropped); populations, free-energy differences, the
report's plots and its structures use the unbiased, unclipped self-normalised weights
(``log_w_raw``) by default (``population_weights="unbiased"``): clipping removes the
highest-weight conformations and biases the populations (on alanine dipeptide it doubled the
alpha-L population). ``metrics["weights"]`` says which is which.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arbg import checks
from arbg.chem.geometry import dihedrals
from arbg.chem.systems import PeptideSystem, SystemSpec, build_system
from arbg.data.datasets import Dataset, load_dataset
from arbg.eval.basins import basin_populations, compute_populations
from arbg.eval.ensembles import Ensemble, backbone_torsions, resampled_score, score
from arbg.eval.report import (
    METRIC_NAMES,
    report_context,
    residue_labels,
    write_metrics_json,
    write_run_report,
)
from arbg.eval.tica import TicaFit, fit_tica, tica_features, tica_project
from arbg.eval.w2 import estimate_ot_seconds, n_nonfinite
from arbg.files import claim_dir
from arbg.reweight import (
    check_weights,
    kish_ess,
    multinomial_resample,
    normalize_log_weights,
    psis,
    weights_from_log,
)
from arbg.sampling.runs import read_run

log = logging.getLogger(__name__)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Arrays of an ``arbg sample`` / ``arbg smc`` run directory, plus its ``summary``."""

    run = read_run(Path(run_dir))
    if run is None:
        raise FileNotFoundError(f"{run_dir}: no samples.npz (is this an `arbg sample` run dir?)")
    return {**run["arrays"], "summary": run["summary"]}


def _energy_spec(system: PeptideSystem) -> dict[str, Any]:
    """The settings that define a system's energy function (its spec less name and PDB text)."""
    return {k: v for k, v in system.spec.to_dict().items() if k not in ("name", "pdb_text")}


def reference_energies(dataset: Dataset, system: PeptideSystem | None = None) -> np.ndarray:
    """Reduced energies (kT) of every reference frame under ``system`` (the samples' target;
    default the dataset's own system), computed once per force field and temperature and kept
    on the dataset.

    A reference read from a PDB topology gets the default force field and temperature, not the
    run's: its energies must come from the run's system, or E-W2 compares two different
    energy functions.
    """
    system = system or dataset.system
    spec = _energy_spec(system)
    key = json.dumps(spec, sort_keys=True)
    cache = dataset.metadata.setdefault("_energies_by_system", {})
    cached = cache.get(key)
    if cached is None or len(cached) != len(dataset):
        log.info("evaluate: energies of %d reference frames (OpenMM)", len(dataset))
        if system is not dataset.system and spec != _energy_spec(dataset.system):
            log.info(
                "reference energies with the run's force field (%s, %s K), not the reference's",
                ", ".join(spec["forcefield"]),
                spec["temperature_k"],
            )
        cached = system.reduced_energy(dataset.positions)
        cache[key] = cached
    return cached


def _check_same_system(a: PeptideSystem, b: PeptideSystem) -> None:
    if a.atom_names != b.atom_names:
        raise ValueError(
            f"the reference ({b.name}, {b.n_atoms} atoms) and the samples "
            f"({a.name}, {a.n_atoms} atoms) are different systems"
        )


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


def evaluate_samples(
    system: PeptideSystem,
    positions: np.ndarray,
    energies: np.ndarray,
    log_w: np.ndarray,
    reference: Dataset,
    *,
    n_eval: int = 10_000,
    seed: int = 0,
    repeats: int = 1,
    tica_lag: int = 100,
    floor: bool = True,
    info: dict[str, Any] | None = None,
    reference_weights: str = "transport",
    log_w_raw: np.ndarray | None = None,
    population_weights: str = "unbiased",
) -> dict[str, Any]:
    """Metrics of samples (canonical order, nm) with normalised log-weights against `reference`.

    ``log_w`` [N] are the (clipped) weights of the W2 metrics, ``log_w_raw`` [N] the unclipped
    log-weights. ``population_weights``: which weights make the basin populations and free-energy
    differences, ``"unbiased"`` (default: ``log_w_raw``; ``log_w`` when it is not given),
    ``"psis"`` (Pareto-smoothed ``log_w_raw``) or ``"clipped"`` (``log_w``, the behaviour
    before issue 17).

    ``reference_weights``: how the reference's frame weights enter, ``"transport"`` (default),
    ``"resample"`` (by weight, seeded) or ``"ignore"`` (treat the frames as equilibrium MD);
    equilibrium references are unaffected.

    Returns the JSON-serialisable dict of :func:`evaluate_ensemble`, with the
    basin populations and free-energy differences under ``"populations"``.
    """

    _check_same_system(system, reference.system)
    ref_x = reference.positions
    ref_u = reference_energies(reference, system)
    n_eval = min(n_eval, len(ref_x) // (2 if floor else 1))
    log_w = normalize_log_weights(np.asarray(log_w, dtype=np.float64))
    ref_lw = reference_log_weights(reference, reference_weights)
    metrics = evaluate_ensemble(
        ref_x,
        ref_u,
        positions,
        energies,
        log_w,
        phi_indices=system.phi_indices,
        psi_indices=system.psi_indices,
        omega_indices=system.omega_indices,
        backbone_indices=system.backbone_heavy_indices,
        n_eval=n_eval,
        tica_lag=tica_lag,
        seed=seed,
        n_repeats=repeats,
        floor=floor,
        info=info,
        ref_log_weights=ref_lw,
        ref_weight_mode="resample" if reference_weights == "resample" else "transport",
    )
    pop_lw, metrics["weights"] = population_log_weights(log_w, log_w_raw, population_weights)
    if log_w_raw is not None:
        metrics["ess_unbiased"] = float(kish_ess(np.asarray(log_w_raw, dtype=np.float64)))
        metrics["pareto_k"] = psis(np.asarray(log_w_raw, dtype=np.float64)).pareto_k
    distinct = metrics.get("unique_resampled", {}).get("values") or [None]
    check = check_weights(
        log_w if log_w_raw is None else log_w_raw,
        log_w,
        None if distinct[0] is None else int(min(distinct)),
        what="importance weights",
    )
    metrics["weight_check"] = check.to_dict()
    metrics["warnings"] = check.warnings + worse_than_proposal(metrics)
    weights = np.exp(pop_lw)
    ref_weights = None if ref_lw is None else np.exp(normalize_log_weights(ref_lw))
    metrics["populations"] = compute_populations(
        ref_x,
        positions,
        weights,
        system.phi_indices,
        system.psi_indices,
        residue_labels=residue_labels(system),
        ref_weights=ref_weights,
    )
    metrics["basin_table"] = basin_table(system, ref_x, positions, weights, ref_weights=ref_weights)
    return metrics


def worse_than_proposal(metrics: dict[str, Any]) -> list[str]:
    """One sentence per W2 metric whose reweighted value is worse than the raw proposal's."""
    out = []
    for key, name in METRIC_NAMES.items():
        ens = metrics.get("metrics", {})
        prop = ens.get("proposal", {}).get(key, {}).get("mean")
        rew = ens.get("reweighted_resampled", {}).get(key, {}).get("mean")
        if prop is None or rew is None or not math.isfinite(prop):
            continue
        if not rew <= prop:
            out.append(
                f"reweighted {name} {rew:.4g} is worse than the raw proposal's {prop:.4g}: "
                "the weights made it worse"
            )
            log.warning("%s", out[-1])
    return out


def population_log_weights(
    log_w: np.ndarray, log_w_raw: np.ndarray | None, mode: str = "unbiased"
) -> tuple[np.ndarray, dict[str, str]]:
    """Normalised log-weights [N] for populations and dF, and a description of the weights.

    ``mode``: ``"unbiased"`` uses ``log_w_raw`` (unclipped; falls back to ``log_w`` with a
    warning when it is None), ``"clipped"`` uses ``log_w``, ``"psis"`` the Pareto-smoothed
    ``log_w_raw`` (:func:`arbg.reweight.psis`).
    """
    if mode not in ("unbiased", "clipped", "psis"):
        raise ValueError(
            f"population_weights must be 'unbiased', 'clipped' or 'psis', got {mode!r}"
        )
    w2 = "the clipped weights (published recipe: the largest 0.2 % of the weights dropped)"
    if mode != "clipped" and log_w_raw is None:
        log.warning("no unclipped log-weights (log_w_raw): populations use the clipped weights")
        mode = "clipped"
    if mode == "psis":
        res = psis(np.asarray(log_w_raw, dtype=np.float64))
        what = (
            "Pareto-smoothed importance weights (PSIS, Vehtari et al.; tail shape k = "
            f"{res.pareto_k:.2f}{', above 0.7: unreliable' if res.pareto_k > 0.7 else ''})"
        )
        return res.log_w, {"w2_metrics": w2, "populations": what, "population_weights": mode}
    if mode == "unbiased":
        lw = normalize_log_weights(np.asarray(log_w_raw, dtype=np.float64))
        what = "the unbiased (unclipped) self-normalised importance weights"
    else:
        lw = normalize_log_weights(np.asarray(log_w, dtype=np.float64))
        what = "the clipped weights (as the W2 metrics)"
    return lw, {"w2_metrics": w2, "populations": what, "population_weights": mode}


def reference_log_weights(reference: Dataset, mode: str = "transport") -> np.ndarray | None:
    """The reference's frame log-weights to use, or None for an equilibrium (or ignored) one.

    ``mode``: ``"transport"`` / ``"resample"`` use the weights, ``"ignore"`` drops them.
    """
    if mode not in ("transport", "resample", "ignore"):
        raise ValueError(f"reference_weights must be transport, resample or ignore, got {mode!r}")
    if mode == "ignore" or not reference.weighted:
        return None
    return np.asarray(reference.log_weights, dtype=np.float64)


def basin_table(
    system: PeptideSystem,
    ref_x: np.ndarray,
    positions: np.ndarray,
    weights: np.ndarray,
    ref_weights: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per residue and basin: population in the reference MD (block SE; weighted by
    ``ref_weights`` [T] with block-jackknife SE when given), in the raw proposal, and in the
    reweighted ensemble (delta-method SE)."""

    rows = []
    labels = residue_labels(system)
    n = min(len(system.phi_indices), len(system.psi_indices))
    for r in range(n):
        phi_i, psi_i = system.phi_indices[r : r + 1], system.psi_indices[r : r + 1]
        ref = basin_populations(
            dihedrals(ref_x, phi_i)[:, 0],
            dihedrals(ref_x, psi_i)[:, 0],
            weights=ref_weights,
            n_blocks=10,
        )
        phi, psi = dihedrals(positions, phi_i)[:, 0], dihedrals(positions, psi_i)[:, 0]
        raw = basin_populations(phi, psi)
        rew = basin_populations(phi, psi, weights=weights)
        for basin in ref["basins"]:
            rows.append(
                {
                    "residue": labels[r] if r < len(labels) else str(r),
                    "basin": basin,
                    "reference": ref["basins"][basin]["p"],
                    "reference_se": ref["basins"][basin]["se"],
                    "proposal": raw["basins"][basin]["p"],
                    "reweighted": rew["basins"][basin]["p"],
                    "reweighted_se": rew["basins"][basin]["se"],
                }
            )
    return rows


# the run's summary.json entries that metrics.json repeats
RUN_INFO_KEYS = (
    "n_samples",
    "tau",
    "ess",
    "energy_evaluations",
    "n_clipped",
    "clip_fraction",
    "n_chirality_wrong",
    "n_nonfinite_energy",
    "ensemble_unique",
)


@dataclass(frozen=True)
class EvaluateConfig:
    """How `arbg evaluate` scores a run against reference MD.

    Attributes
    ----------
    n_eval : samples per W2 (the reference is stride-subsampled to as many frames).
    repeats : resamplings of the reweighted ensemble (mean and std of each metric).
    tica_lag : TICA lag in reference frames.
    seed : seed of the resampling.
    report : write report.html and its plots (--no-report: metrics.json only).
    reference_weights : a weighted reference (biased/heated MD): transport its frame weights
        into the W2 problems, resample it by weight (seeded), or ignore them.
    population_weights : weights of the basin populations, free-energy differences, plots and
        structures: the unbiased unclipped ones (default), Pareto-smoothed (PSIS) or the
        clipped ones of the W2 metrics.
    viewer : include the interactive 3-D viewer of representative conformations in the report.
    """

    n_eval: int = 10_000
    repeats: int = 1
    tica_lag: int = 100
    seed: int = 0
    report: bool = True
    reference_weights: str = field(
        default="transport", metadata={"choices": ("transport", "resample", "ignore")}
    )
    population_weights: str = field(
        default="unbiased", metadata={"choices": ("unbiased", "psis", "clipped")}
    )
    viewer: bool = True

    def check(self) -> None:
        """Raise :class:`arbg.checks.ArgumentError` naming the flag of a bad value."""
        checks.positive_int("--n-eval", self.n_eval)
        checks.nonnegative_int("--seed", self.seed)
        checks.positive_int("--repeats", self.repeats)
        checks.positive_int("--tica-lag", self.tica_lag)
        checks.one_of(
            "--reference-weights", self.reference_weights, ("transport", "resample", "ignore")
        )
        checks.one_of(
            "--population-weights", self.population_weights, ("unbiased", "psis", "clipped")
        )


def evaluate_run(
    run_dir: str | Path,
    reference: str | Path | Dataset,
    config: EvaluateConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    topology: str | Path | None = None,
    title: str | None = None,
    extra_figures: list[tuple[Path, str]] | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a sample/smc run against reference MD: metrics.json and (config.report) report.

    Parameters
    ----------
    run_dir : the run directory (samples.npz, summary.json, topology.pdb).
    reference : what :func:`arbg.data.datasets.load_dataset` reads, or a Dataset: not the
        training data; all of its frames are used, in time order.
    config : the settings (:class:`EvaluateConfig`; None: its defaults).
    out_dir : where metrics.json, the PNGs and report.html go (default: ``run_dir/report``).
    topology : PDB of an array/trajectory reference.
    title, extra_figures, extra_metrics : report title, figures (path, caption), metrics.json keys.
    """
    (cfg := config if config is not None else EvaluateConfig()).check()
    run = load_run(run_dir)
    summary = run["summary"]
    spec = summary.get("system_spec")
    run_system = None
    if isinstance(spec, dict):
        run_system = build_system(SystemSpec.from_dict(spec), minimize=False)
    ref = _load_reference(reference, topology, run_system)
    system = run_system if run_system is not None else ref.system
    positions = run["coords"].astype(np.float64)
    info = {k: summary[k] for k in RUN_INFO_KEYS if k in summary}
    metrics = evaluate_samples(
        system,
        positions,
        run["u"],
        run["log_w"],
        ref,
        n_eval=cfg.n_eval,
        seed=cfg.seed,
        repeats=cfg.repeats,
        tica_lag=cfg.tica_lag,
        info=info,
        reference_weights=cfg.reference_weights,
        log_w_raw=run.get("log_w_raw"),
        population_weights=cfg.population_weights,
    )
    ref_lw = reference_log_weights(ref, cfg.reference_weights)
    metrics["reference"] = _reference_info(reference, ref, ref_lw, cfg.reference_weights)
    if extra_metrics:
        metrics.update(extra_metrics)
    out = Path(out_dir) if out_dir else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    claim_dir(out, {"command": "evaluate", "system": system.name, "n_atoms": int(system.n_atoms)})
    if cfg.report:
        log.info("evaluate: writing the report and its plots to %s", out)
        pop_lw, _ = population_log_weights(
            run["log_w"], run.get("log_w_raw"), cfg.population_weights
        )
        write_run_report(
            out,
            system,
            ref.positions,
            reference_energies(ref, system),
            ref_lw,
            positions,
            run["u"],
            pop_lw,
            metrics,
            context=report_context(summary, system),
            title=title or f"arbg report: {system.name}",
            tica_lag=cfg.tica_lag,
            seed=cfg.seed,
            extra_figures=extra_figures or (),
            viewer=cfg.viewer,
        )
    else:
        write_metrics_json(out / "metrics.json", metrics)
    return metrics


def _load_reference(
    reference: str | Path | Dataset, topology: str | Path | None, run_system: Any
) -> Dataset:
    """The reference as a Dataset: an `arbg md` directory knows its system; bare frames (with
    ``topology``) get the run's system, so their energies use the samples' force field."""
    if isinstance(reference, Dataset):
        return reference
    if Path(reference).is_dir() and (Path(reference) / "metadata.json").exists():
        return load_dataset(reference, topology=topology)
    return load_dataset(reference, topology=topology, system=run_system)


def _reference_info(
    source: Any, ref: Dataset, ref_lw: np.ndarray | None, mode: str
) -> dict[str, Any]:
    """What the report says about the reference: source, frames, weights and their ESS."""
    return {
        "source": str(
            source if not isinstance(source, Dataset) else source.metadata.get("source", "dataset")
        ),
        "n_frames": len(ref),
        "weighted": ref_lw is not None,
        "weights": mode if ref.weighted else None,
        "kish_ess": ref.kish_ess() if ref_lw is not None else float(len(ref)),
        "sampling_temperature_k": ref.metadata.get("sampling_temperature_k"),
        "target_temperature_k": ref.metadata.get("target_temperature_k"),
        "biased": bool(ref.metadata.get("bias")),
    }
