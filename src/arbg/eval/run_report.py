"""The report of one sampling run: the summary facts and the call of
:func:`arbg.eval.report.write_report` with the 3-D structure view
(:func:`arbg.eval.viewer.ensemble_viewer_html`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from arbg.chem.systems import PeptideSystem
from arbg.eval.report import write_report
from arbg.eval.viewer import ensemble_viewer_html

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


def residue_labels(system: PeptideSystem) -> list[str]:
    """``["ALA1", ...]``: residue name and 1-based index of each standard residue."""
    return [f"{name}{i + 1}" for i, name in enumerate(system.block_resnames)]


def report_context(summary: dict[str, Any], system: PeptideSystem) -> dict[str, Any]:
    """The facts of the report's summary block: ``{"system": {...}, "run": {...}}``.

    ``summary`` is the run's ``summary.json`` (``arbg sample`` or ``arbg smc``).
    """
    spec = summary.get("system_spec") or {}
    seq = spec.get("sequence", "")
    caps = spec.get("capped")
    sys_facts = {
        "system": system.name,
        "sequence": f"Ace-{seq}-Nme" if caps else seq,
        "atoms": system.n_atoms,
        "force field": ", ".join(spec.get("forcefield", [])) or "-",
        "nonbonded": spec.get("nonbonded", "-"),
        "temperature (K)": spec.get("temperature_k", system.temperature_k),
    }
    smc = summary.get("method") == "twisted_smc"
    run = {
        "sampler": "twisted SMC (arbg smc)" if smc else "proposals + SNIS (arbg sample)",
        "checkpoint": summary.get("checkpoint", "-"),
        "temperature tau": summary.get("tau"),
        "proposals": summary.get("n_samples"),
        "energy evaluations": summary.get("energy_evaluations"),
    }
    if smc:
        run["of which partial (prefix) evaluations"] = summary.get("partial_energy_evaluations")
        run["particles x repeats"] = f"{summary.get('n_particles')} x {summary.get('repeats')}"
    wall = summary.get("wall_s_total")
    run["wall time"] = "-" if wall is None else f"{wall:.1f} s"
    return {"system": sys_facts, "run": run}


def write_run_report(
    out: Path,
    system: PeptideSystem,
    ref_positions: np.ndarray,
    ref_energies: np.ndarray,
    ref_lw: np.ndarray | None,
    positions: np.ndarray,
    u: np.ndarray,
    log_w: np.ndarray,
    metrics: dict[str, Any],
    *,
    context: dict[str, Any],
    title: str,
    tica_lag: int,
    seed: int,
    extra_figures: Any,
    viewer: bool,
) -> Path:
    """:func:`arbg.eval.report.write_report` for a run of ``system``: the plots and the 3-D
    structures use the population weights ``log_w`` [N]; the reference [T, n, 3] nm with its
    reduced energies [T] kT and frame log-weights (None = equilibrium)."""
    viewer_html = ""
    if viewer:
        try:
            viewer_html = ensemble_viewer_html(
                positions,
                log_w,
                system.positions,
                system.element,
                system.bonds,
                system.atom_names,
                system.phi_indices,
                system.psi_indices,
                align_atoms=system.backbone_heavy_indices,
            )
        except RuntimeError as err:  # plotly missing
            log.warning("no 3-D viewer in the report: %s", err)
    bonds = system.bonds
    return write_report(
        out,
        reference_positions=ref_positions,
        reference_energies=ref_energies,
        proposal_positions=positions,
        proposal_energies=u,
        log_weights=log_w,
        reference_log_weights=ref_lw,
        metrics=metrics,
        phi_indices=system.phi_indices,
        psi_indices=system.psi_indices,
        omega_indices=system.omega_indices,
        backbone_indices=system.backbone_heavy_indices,
        bonds=bonds,
        angles=bond_angle_triples(bonds, system.n_atoms),
        residue_labels=residue_labels(system),
        populations=metrics.get("populations"),
        tica_lag=tica_lag,
        title=title,
        seed=seed,
        extra_figures=extra_figures,
        context=context,
        viewer_html=viewer_html,
    )
