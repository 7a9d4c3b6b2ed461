"""`arbg evaluate`: metrics of a sampling run against reference MD, observables, the report.

Follows the published benchmark recipe (``../shared/reference.md``, "Published evaluation"):
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
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from arbg.chem.systems import PeptideSystem, SystemSpec, build_system
from arbg.data.datasets import Dataset, load_dataset
from arbg.eval.basins import basin_populations
from arbg.eval.metrics import backbone_torsions, dihedrals, energy_w2, evaluate_ensemble, torsion_w2
from arbg.eval.report import compute_populations, write_metrics_json, write_report
from arbg.reweight import clip_log_weights, multinomial_resample, normalize_log_weights
from arbg.sampling.runs import read_run

log = logging.getLogger(__name__)


def bond_angle_triples(bonds: np.ndarray, n_atoms: int) -> np.ndarray:
    """[a, 3] angle triples (i, j, k) with bonds i-j and j-k, from [b, 2] bonds."""
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    for i, j in bonds:
        neighbours[i].append(int(j))
        neighbours[j].append(int(i))
    out = []
    for j, nb in enumerate(neighbours):
        for a in range(len(nb)):
            for b in range(a + 1, len(nb)):
                out.append((nb[a], j, nb[b]))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Arrays of an ``arbg sample`` / ``arbg smc`` run directory, plus its ``summary``."""

    run = read_run(Path(run_dir))
    if run is None:
        raise FileNotFoundError(f"{run_dir}: no samples.npz (is this an `arbg sample` run dir?)")
    return {**run["arrays"], "summary": run["summary"]}


def reference_energies(dataset: Dataset) -> np.ndarray:
    """Reduced energies (kT) of every reference frame (computed once, kept on the dataset)."""
    cached = dataset.metadata.get("_energies")
    if cached is None or len(cached) != len(dataset):
        cached = dataset.system.reduced_energy(dataset.positions)
        dataset.metadata["_energies"] = cached
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
) -> dict[str, Any]:
    """Metrics of samples (canonical order, nm) with normalised log-weights against `reference`.

    ``reference_weights``: how the reference's frame weights enter, ``"transport"`` (default),
    ``"resample"`` (by weight, seeded) or ``"ignore"`` (treat the frames as equilibrium MD);
    equilibrium references are unaffected.

    Returns the JSON-serialisable dict of :func:`arbg.eval.metrics.evaluate_ensemble`, with the
    basin populations and free-energy differences under ``"populations"``.
    """

    _check_same_system(system, reference.system)
    ref_x = reference.positions
    ref_u = reference_energies(reference)
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
    weights = np.exp(log_w)
    ref_weights = None if ref_lw is None else np.exp(normalize_log_weights(ref_lw))
    metrics["populations"] = compute_populations(
        ref_x,
        positions,
        weights,
        system.phi_indices,
        system.psi_indices,
        residue_labels=_residue_labels(system),
        ref_weights=ref_weights,
    )
    metrics["basin_table"] = basin_table(system, ref_x, positions, weights, ref_weights=ref_weights)
    return metrics


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
    labels = _residue_labels(system)
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


def _residue_labels(system: PeptideSystem) -> list[str]:
    return [f"{name}{i + 1}" for i, name in enumerate(system.block_resnames)]


def evaluate_run(
    run_dir: str | Path,
    reference: str | Path | Dataset,
    *,
    out_dir: str | Path | None = None,
    n_eval: int = 10_000,
    seed: int = 0,
    repeats: int = 1,
    tica_lag: int = 100,
    topology: str | Path | None = None,
    report: bool = True,
    title: str | None = None,
    extra_figures: list[tuple[Path, str]] | None = None,
    extra_metrics: dict[str, Any] | None = None,
    reference_weights: str = "transport",
) -> dict[str, Any]:
    """Evaluate an ``arbg sample`` run against reference MD; write metrics.json and the report.

    Parameters
    ----------
    run_dir : the run directory (samples.npz, summary.json, topology.pdb).
    reference : anything :func:`arbg.data.datasets.load_dataset` reads, or a Dataset. It should not
        be the training data; all of its frames are used, in time order.
    out_dir : where metrics.json, the PNGs and report.html go (default: ``run_dir/report``).
    reference_weights : ``"transport"``, ``"resample"`` or ``"ignore"`` the reference's frame
        weights (see :func:`evaluate_samples`).
    """

    run = load_run(run_dir)
    summary = run["summary"]
    spec = summary.get("system_spec")
    if isinstance(reference, Dataset):
        ref = reference
    else:
        ref = load_dataset(reference, topology=topology)
    system = (
        build_system(SystemSpec.from_dict(spec), minimize=False)
        if isinstance(spec, dict)
        else ref.system
    )
    positions = run["coords"].astype(np.float64)
    info = {
        k: summary[k]
        for k in (
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
        if k in summary
    }
    metrics = evaluate_samples(
        system,
        positions,
        run["u"],
        run["log_w"],
        ref,
        n_eval=n_eval,
        seed=seed,
        repeats=repeats,
        tica_lag=tica_lag,
        info=info,
        reference_weights=reference_weights,
    )
    ref_lw = reference_log_weights(ref, reference_weights)
    metrics["reference"] = {
        "source": str(
            reference
            if not isinstance(reference, Dataset)
            else reference.metadata.get("source", "dataset")
        ),
        "n_frames": len(ref),
        "weighted": ref_lw is not None,
        "weights": reference_weights if ref.weighted else None,
        "kish_ess": ref.kish_ess() if ref_lw is not None else float(len(ref)),
        "sampling_temperature_k": ref.metadata.get("sampling_temperature_k"),
        "target_temperature_k": ref.metadata.get("target_temperature_k"),
        "biased": bool(ref.metadata.get("bias")),
    }
    if extra_metrics:
        metrics.update(extra_metrics)
    out = Path(out_dir) if out_dir else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if report:
        bonds = system.bonds
        write_report(
            out,
            reference_positions=ref.positions,
            reference_energies=reference_energies(ref),
            proposal_positions=positions,
            proposal_energies=run["u"],
            log_weights=run["log_w"],
            reference_log_weights=ref_lw,
            metrics=metrics,
            phi_indices=system.phi_indices,
            psi_indices=system.psi_indices,
            omega_indices=system.omega_indices,
            backbone_indices=system.backbone_heavy_indices,
            bonds=bonds,
            angles=bond_angle_triples(bonds, system.n_atoms),
            residue_labels=_residue_labels(system),
            populations=metrics.get("populations"),
            tica_lag=tica_lag,
            title=title or f"arbg report: {system.name}",
            seed=seed,
            extra_figures=extra_figures or (),
        )
    else:
        write_metrics_json(out / "metrics.json", metrics)
    return metrics


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
    ref_u = reference_energies(reference)
    stride = max(1, len(reference) // n_max)
    ref_t = backbone_torsions(reference.positions[::stride], system.phi_indices, system.psi_indices)
    ref_u_s = ref_u[::stride]
    ref_lw = reference_log_weights(reference)
    ref_w = None if ref_lw is None else np.exp(normalize_log_weights(ref_lw[::stride]))
    out: dict[str, Any] = {
        "budgets": [],
        "bg": {"e_w2": [], "t_w2": []},
        "md": {"budgets": [], "e_w2": [], "t_w2": []},
    }
    for k in budgets:
        n_bg = int(k / evals_per_sample)
        if 2 <= n_bg <= len(positions):
            lw, _ = clip_log_weights(np.asarray(log_w_raw[:n_bg], dtype=np.float64))
            lw = normalize_log_weights(lw)
            idx = multinomial_resample(lw, min(n_bg, n_max), rng)
            x = positions[:n_bg][idx]
            out["budgets"].append(k)
            out["bg"]["e_w2"].append(energy_w2(energies[:n_bg][idx], ref_u_s, None, ref_w))
            out["bg"]["t_w2"].append(
                torsion_w2(
                    backbone_torsions(x, system.phi_indices, system.psi_indices), ref_t, None, ref_w
                )
            )
        n_md = k // steps_per_frame
        if 2 <= n_md <= len(md_frames):
            sub = slice(0, n_md, max(1, n_md // n_max))
            frames = md_frames[sub]
            md_w = (
                None
                if md_log_weights is None
                else np.exp(normalize_log_weights(np.asarray(md_log_weights[sub], np.float64)))
            )
            u_md = system.reduced_energy(frames)
            out["md"]["budgets"].append(k)
            out["md"]["e_w2"].append(energy_w2(u_md, ref_u_s, md_w, ref_w))
            out["md"]["t_w2"].append(
                torsion_w2(
                    backbone_torsions(frames, system.phi_indices, system.psi_indices),
                    ref_t,
                    md_w,
                    ref_w,
                )
            )
    return out
