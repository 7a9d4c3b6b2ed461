"""`arbg evaluate`: metrics of a sampling run against reference MD, observables, the report.

Follows the published benchmark recipe (``docs/references.md``, "Published evaluation"):
E-W2 on reduced energies, T-W2 over all phi/psi with the periodic cost, TICA-W2 in a 2-D TICA
space fitted on the reference (lag 100 frames), each for the raw proposal and the reweighted
ensemble, on ``n_eval`` samples against a stride-subsampled reference of the same size, beside
the MD-vs-MD floor (two disjoint time blocks of the reference).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arbg import checks
from arbg.chem.spec import SystemSpec
from arbg.chem.systems import PeptideSystem, build_system
from arbg.data.datasets import Dataset, load_dataset
from arbg.eval.basins import basin_populations
from arbg.eval.metrics import (
    dihedrals,
    evaluate_ensemble,
)
from arbg.eval.report import compute_populations, write_metrics_json
from arbg.eval.run_report import (  # noqa: F401 (bond_angle_triples re-exported)
    bond_angle_triples,
    report_context,
    residue_labels,
    write_run_report,
)
from arbg.reweight import (
    kish_ess,
    normalize_log_weights,
    psis,
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

    Returns the JSON-serialisable dict of :func:`arbg.eval.metrics.evaluate_ensemble`, with the
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
