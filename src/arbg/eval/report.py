"""The evaluation report: PNG plots, ``metrics.json`` and one self-contained HTML file.

``write_report`` draws the plots of :mod:`arbg.eval.plots` (energy histograms, Ramachandran plots
per
residue, TICA free-energy surfaces, log-weight distribution, bond/angle distributions), embeds
them as base64 PNGs in ``report.html`` beside a metrics table (from
:func:`arbg.eval.metrics.evaluate_ensemble`) and the Ramachandran basin populations with free-energy
differences. The reweighted ensemble is shown as the proposal weighted by its importance
weights (no resampling noise).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arbg.eval import plots
from arbg.eval.basins import basin_populations, free_energy_differences
from arbg.eval.metrics import dihedrals, fit_tica, tica_features, tica_project, weights_from_log
from arbg.io import atomic_write_text
from arbg.reweight import multinomial_resample

log = logging.getLogger(__name__)

METRIC_NAMES = {"e_w2": "E-W2 (kT)", "t_w2": "T-W2 (rad)", "tica_w2": "TICA-W2"}
ENSEMBLE_NAMES = {
    "proposal": "proposal (raw)",
    "reweighted_resampled": "reweighted (resampled)",
    "reweighted_weighted": "reweighted (weighted transport)",
    "md_floor": "MD vs MD floor",
}

_CSS = """
body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em 0}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
"""


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


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return html.escape(str(v))


def metrics_table_html(metrics: Mapping[str, Any]) -> str:
    """HTML tables of an :func:`arbg.eval.metrics.evaluate_ensemble` result.

    One table of ensembles x metrics (``mean +- std`` over repeats) and one of the scalar entries.
    """
    parts = []
    ens = metrics.get("metrics", {})
    if ens:
        keys = [k for k in METRIC_NAMES if any(k in v for v in ens.values())]
        rows = [
            "<tr><th>ensemble</th>" + "".join(f"<th>{METRIC_NAMES[k]}</th>" for k in keys) + "</tr>"
        ]
        for name, vals in ens.items():
            cells = []
            for k in keys:
                m = vals.get(k)
                if m is None:
                    cells.append("<td>-</td>")
                elif len(m.get("values", [])) > 1:
                    cells.append(f"<td>{_fmt(m['mean'])} &plusmn; {_fmt(m['std'])}</td>")
                else:
                    cells.append(f"<td>{_fmt(m['mean'])}</td>")
            label = html.escape(ENSEMBLE_NAMES.get(name, name))
            rows.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
        parts.append("<table>" + "".join(rows) + "</table>")
    scalars = []
    for k, v in metrics.items():
        if k == "metrics":
            continue
        if isinstance(v, Mapping):
            v = ", ".join(f"{kk}={_fmt(vv)}" for kk, vv in v.items() if not isinstance(vv, list))
        elif isinstance(v, list):
            continue
        scalars.append(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>")
    if scalars:
        parts.append(
            "<table><tr><th>quantity</th><th>value</th></tr>" + "".join(scalars) + "</table>"
        )
    return "\n".join(parts)


def populations_table_html(populations: Mapping[str, Mapping[str, Any]]) -> str:
    """HTML table of basin populations and free-energy differences.

    ``populations`` maps a label (e.g. ``"residue 1 / reference MD"``) to
    ``{"populations": basin_populations(...), "dF": free_energy_differences(...)}``.
    """
    rows = [
        "<tr><th>residue / ensemble</th><th>basin</th><th>population &plusmn; SE</th>"
        "<th>&Delta;F (kT) [95% CI]</th></tr>"
    ]
    for label, entry in populations.items():
        pops, dfs = entry["populations"], entry["dF"]
        for basin, b in pops["basins"].items():
            d = dfs[basin]
            df_txt = (
                f"{_fmt(d['dF'])} [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]"
                f" vs {html.escape(d['reference'])}"
            )
            rows.append(
                f"<tr><td>{html.escape(label)}</td><td>{html.escape(basin)}</td>"
                f"<td>{b['p']:.4f} &plusmn; {b['se']:.4f}</td><td>{df_txt}</td></tr>"
            )
    return "<table>" + "".join(rows) + "</table>"


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
        for name, pops in (
            (
                "reference MD",
                basin_populations(phi_r[:, k], psi_r[:, k], weights=ref_weights, n_blocks=n_blocks),
            ),
            ("reweighted", basin_populations(phi_s[:, k], psi_s[:, k], weights=weights)),
        ):
            out[f"{res} / {name}"] = {"populations": pops, "dF": free_energy_differences(pops)}
    return out


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _subsample(n: int, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_points, replace=False))


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

    Returns
    -------
    Path
        The ``report.html`` path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x_ref = np.asarray(reference_positions)
    x = np.asarray(proposal_positions)
    w_all = weights_from_log(np.asarray(log_weights, dtype=np.float64))
    ref_w = None
    if reference_log_weights is None:
        sub_ref = _subsample(len(x_ref), max_points, rng)
    else:
        ref_lw = np.asarray(reference_log_weights, dtype=np.float64)
        ref_w = weights_from_log(ref_lw)
        sub_ref = np.sort(multinomial_resample(ref_lw, min(len(x_ref), max_points), rng))
    sub = _subsample(len(x), max_points, rng)
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
    phi_r, psi_r = dihedrals(x_ref[sub_ref], phi_indices), dihedrals(x_ref[sub_ref], psi_indices)
    phi_s, psi_s = dihedrals(x[sub], phi_indices), dihedrals(x[sub], psi_indices)
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

    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Metrics</h2>",
        metrics_table_html(metrics),
        "<h2>Ramachandran basin populations and free-energy differences</h2>",
        populations_table_html(populations),
        extra_html,
        "<h2>Plots</h2>",
        *(_img(p, c) for p, c in figures),
    ]
    html_text = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    path = out / "report.html"
    path.write_text(html_text)
    log.info("report written to %s", path)
    return path
