"""The evaluation report: PNG plots, ``metrics.json`` and one self-contained HTML file.

``write_report`` draws the plots of :mod:`arbg.eval.plots` (energy histograms, Ramachandran plots
per residue, TICA free-energy surfaces, log-weight distribution, bond/angle distributions) and
writes ``report.html``, in order: a summary block (system, force field, temperature, what was
run, W2 against the MD floor and MD at matched cost, ESS, one verdict per metric), the
interactive 3-D structures (:mod:`arbg.eval.viewer`), the basin populations and free-energy
differences per residue, the W2 table, MD at matched cost, the plots (base64 PNGs) and every
other result as key/value rows (:mod:`arbg.eval.report_tables`, :mod:`arbg.eval.htmlkit`). The
page needs no network. The reweighted ensemble is shown as the proposal weighted by its
importance weights (no resampling noise).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arbg.eval import plots
from arbg.eval.basins import basin_populations, free_energy_differences
from arbg.eval.htmlkit import esc, page
from arbg.eval.metrics import dihedrals, fit_tica, tica_features, tica_project, weights_from_log
from arbg.eval.report_tables import (  # noqa: F401 (re-exported)
    ENSEMBLE_NAMES,
    METRIC_NAMES,
    cost_table_html,
    metrics_table_html,
    populations_table_html,
    settings_html,
    summary_html,
    weights_note_html,
)
from arbg.files import atomic_write_text
from arbg.reweight import multinomial_resample

log = logging.getLogger(__name__)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj)}")


def write_metrics_json(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` as indented JSON (numpy scalars/arrays converted) and return the path."""
    path = Path(path)

    atomic_write_text(path, json.dumps(metrics, indent=2, default=_json_default))
    return path


def compute_populations(
    ref_positions: np.ndarray,
    positions: np.ndarray,
    weights: np.ndarray,
    phi_indices: np.ndarray,
    psi_indices: np.ndarray,
    n_blocks: int = 10,
    residue_labels: Sequence[str] | None = None,
    ref_weights: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Basin populations and dF per residue for the reference MD (block SE; with ``ref_weights``
    [T], the weighted populations with block-jackknife SE) and the reweighted ensemble
    (delta-method SE). Residue k uses ``phi_indices[k]`` and ``psi_indices[k]``."""
    out: dict[str, dict[str, Any]] = {}
    phi_r, psi_r = dihedrals(ref_positions, phi_indices), dihedrals(ref_positions, psi_indices)
    phi_s, psi_s = dihedrals(positions, phi_indices), dihedrals(positions, psi_indices)
    for k in range(min(phi_r.shape[1], psi_r.shape[1])):
        res = residue_labels[k] if residue_labels else f"residue {k + 1}"
        ref = basin_populations(phi_r[:, k], psi_r[:, k], weights=ref_weights, n_blocks=n_blocks)
        rew = basin_populations(phi_s[:, k], psi_s[:, k], weights=weights)
        # both dF columns relative to the basin most populated in the reference
        top = max(ref["basins"], key=lambda b: ref["basins"][b]["p"])
        for name, pops in (("reference MD", ref), ("reweighted", rew)):
            out[f"{res} / {name}"] = {
                "populations": pops,
                "dF": free_energy_differences(pops, reference=top),
            }
    return out


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = esc(caption).replace('"', "&quot;")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _subsample(n: int, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def _plot_subsets(
    x_ref: np.ndarray,
    x: np.ndarray,
    reference_log_weights: np.ndarray | None,
    max_points: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The plotted reference frames (a random subset, or resampled by weight when weighted),
    the reference weights (None: unweighted) and the plotted proposals."""
    rng = np.random.default_rng(seed)
    ref_w = None
    if reference_log_weights is None:
        sub_ref = _subsample(len(x_ref), max_points, rng)
    else:
        ref_lw = np.asarray(reference_log_weights, dtype=np.float64)
        ref_w = weights_from_log(ref_lw)
        sub_ref = np.sort(multinomial_resample(ref_lw, min(len(x_ref), max_points), rng))
    return sub_ref, ref_w, _subsample(len(x), max_points, rng)


def _ramachandran_figures(
    add: Callable[[str, str], Path],
    x_ref: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    phi_indices: np.ndarray,
    psi_indices: np.ndarray,
    residue_labels: Sequence[str] | None,
) -> None:
    """One Ramachandran plot per residue: reference against the weighted proposals."""
    phi_r, psi_r = dihedrals(x_ref, phi_indices), dihedrals(x_ref, psi_indices)
    phi_s, psi_s = dihedrals(x, phi_indices), dihedrals(x, psi_indices)
    for k in range(min(phi_r.shape[1], psi_r.shape[1])):
        res = residue_labels[k] if residue_labels else f"residue {k + 1}"
        plots.plot_ramachandran(
            add(f"ramachandran_{k + 1}.png", f"Ramachandran plot, {res}"),
            phi_r[:, k],
            psi_r[:, k],
            phi_s[:, k],
            psi_s[:, k],
            weights=w,
            title=res,
        )


# long: a 60-line docstring of 24 parameters; the body draws the figures one after another
def write_report(
    out_dir: str | Path,
    *,
    reference_positions: np.ndarray,
    reference_energies: np.ndarray,
    proposal_positions: np.ndarray,
    proposal_energies: np.ndarray,
    log_weights: np.ndarray,
    metrics: Mapping[str, Any],
    phi_indices: np.ndarray,
    psi_indices: np.ndarray,
    omega_indices: np.ndarray | None = None,
    backbone_indices: np.ndarray | None = None,
    bonds: np.ndarray | None = None,
    angles: np.ndarray | None = None,
    residue_labels: Sequence[str] | None = None,
    populations: Mapping[str, Any] | None = None,
    tica_lag: int = 100,
    title: str = "arbg evaluation report",
    extra_html: str = "",
    extra_figures: Sequence[tuple[str | Path, str]] = (),
    max_points: int = 50_000,
    seed: int = 0,
    reference_log_weights: np.ndarray | None = None,
    context: Mapping[str, Any] | None = None,
    viewer_html: str = "",
) -> Path:
    """Write PNG plots, ``metrics.json`` and a self-contained ``report.html`` into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Output directory (created).
    reference_positions : ndarray, shape (T, n, 3)
        Time-ordered reference MD positions, nm (TICA is fitted on them).
    reference_energies : ndarray, shape (T,)
        Reference reduced energies, kT.
    proposal_positions : ndarray, shape (N, n, 3)
        Proposal positions, nm.
    proposal_energies : ndarray, shape (N,)
        Proposal reduced energies, kT.
    log_weights : ndarray, shape (N,)
        Log importance weights (``-inf`` = zero); the reweighted ensemble is the weighted proposal.
    metrics : mapping
        Result of :func:`arbg.eval.metrics.evaluate_ensemble` (plus any extra entries); written to
        ``metrics.json`` together with the basin populations.
    phi_indices, psi_indices : ndarray, shape (k, 4)
        Backbone dihedrals (one Ramachandran plot per residue ``k``).
    omega_indices : ndarray, shape (k, 4), optional
    backbone_indices : ndarray, shape (b,), optional
        Backbone heavy atoms; TICA plots are drawn only when given.
    bonds : ndarray, shape (b, 2), optional
    angles : ndarray, shape (a, 3), optional
        Bond and angle definitions for the bond/angle plot (skipped when both are None).
    residue_labels : sequence of str, optional
    populations : mapping, optional
        Precomputed output of :func:`compute_populations`; computed if omitted.
    tica_lag : int
        TICA lag in frames.
    extra_html : str
        HTML appended after the tables.
    extra_figures : sequence of (png path, caption)
        Further PNGs to embed (e.g. from :func:`arbg.eval.plots.plot_cost_curve`).
    max_points : int
        Plots use at most this many reference frames and proposals (random subset; metrics are
        unaffected).
    seed : int
        Seed for the subsets.
    reference_log_weights : ndarray, shape (T,), optional
        Frame log-weights of a weighted reference (biased/heated MD): its plots show
        ``max_points`` frames resampled by weight (seeded), its populations are weighted.
    context : mapping, optional
        ``{"system": {...}, "run": {...}}`` facts for the summary block
        (:func:`arbg.eval.evaluate.report_context`).
    viewer_html : str
        The 3-D structure section (:func:`arbg.eval.viewer.ensemble_viewer_html`), or empty.

    Returns
    -------
    Path
        The ``report.html`` path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_ref, x = np.asarray(reference_positions), np.asarray(proposal_positions)
    w_all = weights_from_log(np.asarray(log_weights, dtype=np.float64))
    sub_ref, ref_w, sub = _plot_subsets(x_ref, x, reference_log_weights, max_points, seed)
    w = w_all[sub] / w_all[sub].sum()
    figures: list[tuple[Path, str]] = []

    def add(name: str, caption: str) -> Path:
        path = out / name
        figures.append((path, caption))
        return path

    plots.plot_energy_histograms(
        add("energy.png", "Reduced-energy distributions"),
        np.asarray(reference_energies)[sub_ref],
        np.asarray(proposal_energies)[sub],
        weights=w,
    )
    plots.plot_log_weights(add("log_weights.png", "Importance-weight distribution"), log_weights)
    _ramachandran_figures(add, x_ref[sub_ref], x[sub], w, phi_indices, psi_indices, residue_labels)
    if backbone_indices is not None:
        feats_ref = tica_features(x_ref, backbone_indices, phi_indices, psi_indices, omega_indices)
        tica = fit_tica(feats_ref, lag=tica_lag, dim=2)
        z_ref = tica_project(tica, feats_ref[sub_ref])
        z = tica_project(
            tica, tica_features(x[sub], backbone_indices, phi_indices, psi_indices, omega_indices)
        )
        plots.plot_tica_fes(add("tica.png", "TICA free-energy surfaces"), z_ref, z, weights=w)
    bond_summary = None
    if bonds is not None or angles is not None:
        bond_summary = plots.plot_bond_distributions(
            add("bonds_angles.png", "Bond lengths and angles against the reference"),
            x_ref[sub_ref],
            x[sub],
            np.zeros((0, 2), int) if bonds is None else bonds,
            np.zeros((0, 3), int) if angles is None else angles,
            weights=w,
        )
    if populations is None:
        populations = compute_populations(
            x_ref,
            x,
            w_all,
            phi_indices,
            psi_indices,
            residue_labels=residue_labels,
            ref_weights=ref_w,
        )
    figures.extend((Path(p), c) for p, c in extra_figures)

    full = dict(metrics)
    full["basin_populations"] = populations
    if bond_summary is not None:
        full["bond_angle_deviation"] = bond_summary
    write_metrics_json(out / "metrics.json", full)
    html_text = _compose(title, full, context, viewer_html, extra_html, figures)
    path = out / "report.html"
    atomic_write_text(path, html_text)
    log.info("report written to %s (%.2f MB)", path, len(html_text.encode()) / 1e6)
    return path


def _compose(
    title: str,
    metrics: Mapping[str, Any],
    context: Mapping[str, Any] | None,
    viewer_html: str,
    extra_html: str,
    figures: Sequence[tuple[Path, str]],
) -> str:
    """The report page: summary, structures, populations, metrics, cost, settings, plots."""
    body = [f"<h1>{esc(title)}</h1>", summary_html(metrics, context or {})]
    if viewer_html:
        body += ["<h2>Sampled structures</h2>", viewer_html]
    body += [
        "<h2>Ramachandran basin populations and free-energy differences</h2>",
        weights_note_html(metrics),
        populations_table_html(
            metrics.get("basin_populations", {}), metrics.get("basin_table", [])
        ),
        "<h2>Sample quality: Wasserstein-2 distances to the reference MD</h2>",
        metrics_table_html(metrics),
    ]
    curve = metrics.get("md_cost_curve")
    if curve:
        body += ["<h2>Boltzmann generator vs MD at matched cost</h2>", cost_table_html(curve)]
    body.append(extra_html)
    body += ["<h2>Plots</h2>", *(_img(p, c) for p, c in figures)]
    body += ["<h2>Run details and settings</h2>", settings_html(metrics)]
    return page(title, body, max_width_em=80)
