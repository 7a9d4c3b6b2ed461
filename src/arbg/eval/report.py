"""The evaluation report: ``metrics.json``, PNG plots and one self-contained HTML file.

:func:`write_run_report` is what ``arbg evaluate`` calls for a run of a system: it gathers the
system's facts (:func:`report_context`, :func:`residue_labels`, :func:`bond_angle_triples`) and
the interactive 3-D structures (:func:`arbg.eval.viewer.ensemble_viewer_html`) and hands them to
:func:`write_report`, which draws the plots of :mod:`arbg.eval.plots` (energy histograms,
Ramachandran plots per residue, TICA free-energy surfaces, log-weight distribution, bond/angle
distributions) and writes ``metrics.json`` and ``report.html``, in order: a summary block
(system, force field, temperature, what was run, W2 against the MD floor and MD at matched cost,
ESS, one verdict per metric), the 3-D structures, the basin populations and free-energy
differences per residue, the W2 table, MD at matched cost, the plots (base64 PNGs) and every
other result as key/value rows. The page needs no network. The reweighted ensemble is shown as
the proposal weighted by its importance weights (no resampling noise).

The sections of the page follow :func:`write_report`; every value in them is a table cell or a
sentence (:mod:`arbg.eval.htmlkit`). :func:`format_metrics` is the plain-text table the CLI prints.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arbg.chem.geometry import dihedrals
from arbg.chem.systems import PeptideSystem
from arbg.eval import plots
from arbg.eval.basins import compute_populations
from arbg.eval.htmlkit import esc, fmt, kv_table, page, table
from arbg.eval.tica import fit_tica, tica_features, tica_project
from arbg.eval.viewer import ensemble_viewer_html
from arbg.files import atomic_write_text
from arbg.reweight import multinomial_resample, weights_from_log

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# names of the metrics and ensembles

METRIC_NAMES = {"e_w2": "E-W2 (kT)", "t_w2": "T-W2 (rad)", "tica_w2": "TICA-W2"}
METRIC_WHAT = {
    "e_w2": "the reduced-energy distribution",
    "t_w2": "the backbone torsions",
    "tica_w2": "the slow (TICA) coordinates",
}
ENSEMBLE_NAMES = {
    "proposal": "proposal (raw)",
    "reweighted_resampled": "reweighted (resampled)",
    "reweighted_weighted": "reweighted (weighted transport)",
    "md_floor": "MD vs MD floor",
    "md_matched": "MD at matched cost",
}
# entries shown in their own tables, not among the settings
SHOWN_ELSEWHERE = {
    "metrics",
    "populations",
    "basin_populations",
    "basin_table",
    "md_cost_curve",
    "weights",
}


# ------------------------------------------------------------------------------------------------
# the report of a run of a system


def residue_labels(system: PeptideSystem) -> list[str]:
    """``["ALA1", ...]``: residue name and 1-based index of each standard residue."""
    return [f"{name}{i + 1}" for i, name in enumerate(system.block_resnames)]


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
    """:func:`write_report` for a run of ``system``: the plots and the 3-D
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


# ------------------------------------------------------------------------------------------------
# the report: plots, metrics.json, report.html


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
        Result of :func:`arbg.eval.evaluate.evaluate_ensemble` (plus any extra entries); written to
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
        Precomputed output of :func:`arbg.eval.basins.compute_populations`; computed if omitted.
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
        (:func:`report_context`).
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
    kind = {"unbiased": "unclipped", "clipped": "clipped", "psis": "Pareto-smoothed"}.get(
        (metrics.get("weights") or {}).get("population_weights", "unbiased"), "unclipped"
    )
    plots.plot_log_weights(
        add("log_weights.png", f"Importance-weight distribution ({kind} weights)"),
        log_weights,
        kind=kind,
    )
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


def _subsample(n: int, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_points, replace=False))


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


def write_metrics_json(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` as indented JSON (numpy scalars/arrays converted) and return the path."""
    path = Path(path)

    atomic_write_text(path, json.dumps(metrics, indent=2, default=_json_default))
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj)}")


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


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = esc(caption).replace('"', "&quot;")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


# ------------------------------------------------------------------------------------------------
# the summary block


def summary_html(metrics: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """The block at the top of the report: system, what was run, W2 against the floor and MD at
    matched cost, ESS and distinct conformations, one sentence per metric.

    ``context`` holds ``system`` (name, sequence, force field, temperature, ...) and ``run``
    (method, proposals, energy evaluations, wall time, ...) mappings, as made by
    :func:`report_context`.
    """
    parts = ['<div class="summary"><h2>Summary</h2>']
    facts = {**context.get("system", {}), **context.get("run", {})}
    parts.append(kv_table(facts))
    md_k, md_budget = matched_md(metrics)
    head = ["metric", "proposal", "reweighted", "MD floor", "MD at matched cost"]
    rows, sentences = [], []
    for key, name in METRIC_NAMES.items():
        rew = _mean(metrics, "reweighted_resampled", key)
        if rew is None:
            continue
        prop = _mean(metrics, "proposal", key)
        floor = _mean(metrics, "md_floor", key)
        md = md_k.get(key)
        cells = [fmt(prop[0]) if prop else "-", f"<b>{fmt(rew[0])}</b>"]
        cells.append(fmt(floor[0]) if floor else "-")
        cells.append(fmt(md) if md is not None else "-")
        rows.append([esc(name), *cells])
        sentences.append(f"<li>{_verdict(key, rew[0], floor)}</li>")
    if rows:
        parts.append(table(head, rows))
        parts.append("<ul>" + "".join(sentences) + "</ul>")
    parts.append(_efficiency_sentence(metrics, md_budget))
    warnings = metrics.get("warnings") or []
    if warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
        parts.append(f'<div class="warning"><b>Warnings</b><ul>{items}</ul></div>')
    parts.append("</div>")
    return "".join(parts)


def _mean(metrics: Mapping[str, Any], ens: str, key: str) -> tuple[float, float] | None:
    m = metrics.get("metrics", {}).get(ens, {}).get(key)
    if not m or m.get("mean") is None:
        return None
    std = m.get("std") if len(m.get("values", [])) > 1 else 0.0
    return float(m["mean"]), float(std or 0.0)


def matched_md(metrics: Mapping[str, Any]) -> tuple[dict[str, float], int | None]:
    """W2 of MD at the run's cost: the ``md_matched`` ensemble, or the MD budget of
    ``md_cost_curve`` closest to the run's energy evaluations (at most it). Returns the metrics
    and the MD budget (energy evaluations; None when there is none)."""
    direct = {k: v[0] for k in METRIC_NAMES if (v := _mean(metrics, "md_matched", k))}
    if direct:
        return direct, metrics.get("energy_evaluations")
    curve = metrics.get("md_cost_curve") or {}
    md = curve.get("md", {})
    budgets = md.get("budgets", [])
    k = metrics.get("energy_evaluations")
    if not budgets or k is None:
        return {}, None
    ok = [i for i, b in enumerate(budgets) if b <= k] or [0]
    i = max(ok, key=lambda j: budgets[j])
    return {key: md[key][i] for key in ("e_w2", "t_w2") if key in md}, int(budgets[i])


def _verdict(key: str, value: float, floor: tuple[float, float] | None) -> str:
    name = METRIC_NAMES[key].split(" (")[0]
    if floor is None:
        return f"{name}: {fmt(value)} for the reweighted ensemble; no MD floor was computed."
    f_mean, f_std = floor
    limit = f_mean + 2.0 * f_std
    ratio = value / f_mean if f_mean > 0 else math.inf
    if value <= limit:
        return (
            f'<span class="ok">{name} is within the MD floor</span>: the reweighted ensemble '
            f"matches {METRIC_WHAT[key]} of the reference as well as a second MD trajectory "
            f"of the same length does ({fmt(value, 3)} vs {fmt(f_mean, 3)})."
        )
    return (
        f'<span class="bad">{name} is not within the MD floor</span>: {fmt(value, 3)} for the '
        f"reweighted ensemble vs {fmt(f_mean, 3)} between two halves of the reference MD "
        f"({fmt(ratio, 2)} times the floor) on {METRIC_WHAT[key]}."
    )


def _efficiency_sentence(metrics: Mapping[str, Any], md_budget: int | None) -> str:
    n = metrics.get("n_proposals")
    ess = metrics.get("ess")
    ess_u = metrics.get("ess_unbiased")
    uniq = (metrics.get("unique_resampled") or {}).get("mean")
    out = []
    if ess is not None and n:
        txt = (
            f"Kish effective sample size {fmt(ess, 4)} of {n} proposals "
            f"({fmt(100.0 * ess / n, 3)} %) with the published clipping"
        )
        if ess_u is not None:
            txt += f", {fmt(ess_u, 4)} with the unbiased (unclipped) weights"
        out.append(txt + ".")
    k = metrics.get("pareto_k")
    if k is not None and math.isfinite(k):
        verdict = (
            "below 0.5: reliable"
            if k < 0.5
            else "0.5-0.7: usable"
            if k <= 0.7
            else "above 0.7: the importance-sampling estimates are unreliable"
        )
        out.append(f"Pareto k of the weight tail (PSIS diagnostic): {fmt(k, 2)} ({verdict}).")
    if uniq is not None:
        out.append(
            f"Resampling {metrics.get('n_eval')} conformations by weight gives "
            f"{fmt(uniq, 4)} distinct conformations."
        )
    if md_budget is not None:
        out.append(
            f"MD at matched cost: the first {md_budget} MD steps (one force evaluation each)."
        )
    else:
        out.append(
            "MD at matched cost was not computed for this run (it needs an MD trajectory of "
            "the same system, e.g. the full <code>arbg demo</code>)."
        )
    return "<p>" + " ".join(out) + "</p>"


# ------------------------------------------------------------------------------------------------
# the tables


def weights_note_html(metrics: Mapping[str, Any]) -> str:
    """A sentence on which weights made which numbers."""
    w = metrics.get("weights") or {}
    if not w:
        return ""
    return (
        "<p class=note>Weights: the W2 metrics use "
        f"{esc(w.get('w2_metrics', 'the clipped weights'))}; populations, free-energy "
        f"differences, the plots and the structures shown use {esc(w.get('populations', '-'))}.</p>"
    )


def populations_table_html(
    populations: Mapping[str, Mapping[str, Any]],
    proposal: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Per residue, a table of basins x ensembles: population +- SE and dF [95% CI] (kT).

    ``populations`` maps ``"<residue> / <ensemble>"`` to ``{"populations": ..., "dF": ...}``
    (:func:`arbg.eval.basins.compute_populations`); ``proposal`` are rows of
    :func:`arbg.eval.evaluate.basin_table` (adds the raw proposal's population).
    """
    by_res: dict[str, dict[str, Mapping[str, Any]]] = {}
    for lab, entry in populations.items():
        res, ens = _split_label(lab)
        by_res.setdefault(res, {})[ens] = entry
    raw = {(r["residue"], r["basin"]): r["proposal"] for r in proposal}
    parts = []
    for res, ensembles in by_res.items():
        names = list(ensembles)
        head = ["basin"]
        head += [f"population, {e}" for e in names]
        if raw:
            head.append("population, proposal (raw)")
        head += [f"ΔF (kT) [95% CI], {e}" for e in names]
        basins = list(next(iter(ensembles.values()))["populations"]["basins"])
        rows = []
        for b in basins:
            cells = [esc(b)]
            for e in names:
                p = ensembles[e]["populations"]["basins"][b]
                cells.append(f"{p['p']:.4f} &plusmn; {p['se']:.4f}")
            if raw:
                v = raw.get((res, b))
                cells.append("-" if v is None else f"{v:.4f}")
            for e in names:
                d = ensembles[e]["dF"][b]
                if d.get("reference") == b:
                    cells.append("0 (reference basin)")
                elif not math.isfinite(d["dF"]):
                    cells.append("- (empty basin)")
                else:
                    cells.append(
                        f"{fmt(d['dF'], 3)} [{fmt(d['ci_low'], 3)}, {fmt(d['ci_high'], 3)}]"
                    )
            rows.append(cells)
        ref_b = next(iter(ensembles.values()))["dF"][basins[0]]["reference"]
        title = f"<h3>{esc(res)}</h3>" if res else ""
        parts.append(
            f"{title}{table(head, rows)}<p class=note>ΔF = -ln(p / p<sub>{esc(ref_b)}</sub>) "
            "relative to the basin most populated in the reference MD; standard errors: block "
            "(jackknife) errors for MD, the delta method for importance weights.</p>"
        )
    return "".join(parts)


def _split_label(label: str) -> tuple[str, str]:
    res, _, ens = label.rpartition(" / ")
    return (res, ens) if res else ("", label)


def metrics_table_html(metrics: Mapping[str, Any]) -> str:
    """Ensembles x W2 metrics (``mean +- std`` over repeats)."""
    ens = metrics.get("metrics", {})
    keys = [k for k in METRIC_NAMES if any(k in v for v in ens.values())]
    rows = []
    for name, vals in ens.items():
        cells = []
        for k in keys:
            m = vals.get(k)
            if m is None:
                cells.append("-")
            elif len(m.get("values", [])) > 1:
                cells.append(f"{fmt(m['mean'])} &plusmn; {fmt(m['std'])}")
            else:
                cells.append(fmt(m["mean"]))
        rows.append([esc(ENSEMBLE_NAMES.get(name, name)), *cells])
    if not rows:
        return ""
    return table(["ensemble", *[METRIC_NAMES[k] for k in keys]], rows)


def cost_table_html(curve: Mapping[str, Any]) -> str:
    """E-W2 and T-W2 of the Boltzmann generator and of MD against energy evaluations."""
    bg, md = curve.get("bg", {}), curve.get("md", {})
    budgets = sorted(set(curve.get("budgets", [])) | set(md.get("budgets", [])))
    if not budgets:
        return ""
    bg_at = {b: i for i, b in enumerate(curve.get("budgets", []))}
    md_at = {b: i for i, b in enumerate(md.get("budgets", []))}
    rows = []
    for b in budgets:
        i, j = bg_at.get(b), md_at.get(b)
        rows.append(
            [
                fmt(b),
                fmt(bg["e_w2"][i]) if i is not None else "-",
                fmt(md["e_w2"][j]) if j is not None else "-",
                fmt(bg["t_w2"][i]) if i is not None else "-",
                fmt(md["t_w2"][j]) if j is not None else "-",
            ]
        )
    head = ["energy evaluations", "BG E-W2 (kT)", "MD E-W2 (kT)", "BG T-W2 (rad)", "MD T-W2"]
    return table(head, rows)


def settings_html(metrics: Mapping[str, Any]) -> str:
    """Every other entry of the results as key/value rows (nested entries as nested tables)."""
    rest = {k: v for k, v in metrics.items() if k not in SHOWN_ELSEWHERE}
    return kv_table(rest) if rest else ""


# ------------------------------------------------------------------------------------------------
# the plain-text table of the CLI


def format_metrics(metrics: dict) -> str:
    """The evaluation as plain-text tables with units (what ``arbg evaluate`` prints): W2 per
    ensemble, the weights (clipped and unclipped ESS, Pareto k, distinct resampled
    conformations), the reference, basin populations, and the warnings of the evaluation."""
    rows = [f"{'ensemble':32s} " + " ".join(f"{n:>16s}" for n in METRIC_NAMES.values())]
    for name, vals in metrics.get("metrics", {}).items():
        cells = []
        for key in METRIC_NAMES:
            v = vals.get(key)
            if v is None:
                cells.append(f"{'-':>16s}")
            elif v.get("std") and len(v.get("values", [])) > 1:
                cells.append(f"{fmt(v['mean'], 4) + ' +- ' + fmt(v['std'], 2):>16s}")
            else:
                cells.append(f"{fmt(v['mean'], 4):>16s}")
        rows.append(f"{ENSEMBLE_NAMES.get(name, name):32s} " + " ".join(cells))
    rows += ["", *format_weights(metrics)]
    if metrics.get("reference_weighted"):
        rows.append(
            f"{'reference MD':32s} weighted ({metrics.get('reference_weight_mode')}), Kish ESS "
            f"{metrics.get('reference_ess', float('nan')):.1f} of "
            f"{metrics.get('n_reference_frames')} frames"
        )
    if metrics.get("weights"):
        w = metrics["weights"]
        rows.append(f"{'W2 metrics use':32s} {w['w2_metrics']}")
        rows.append(f"{'populations use':32s} {w['populations']}")
    if metrics.get("basin_table"):
        rows += [
            "",
            f"{'residue':8s} {'basin':16s} {'reference MD':>18s} {'proposal':>9s} "
            f"{'reweighted':>18s}  (populations, +- standard error)",
        ]
        for r in metrics["basin_table"]:
            rows.append(
                f"{r['residue']:8s} {r['basin']:16s} {r['reference']:9.4f} +- "
                f"{r['reference_se']:<6.4f} {r['proposal']:9.4f} "
                f"{r['reweighted']:9.4f} +- {r['reweighted_se']:<6.4f}"
            )
    rows += [f"WARNING: {w}" for w in metrics.get("warnings", [])]
    return "\n".join(rows)


def format_weights(summary: Mapping[str, Any]) -> list[str]:
    """How many proposals carry the weight, as text lines: clipped and unclipped ESS (labelled),
    Pareto k and distinct resampled conformations, from a run's ``summary.json`` (its
    ``weights`` entry) or an evaluation's ``metrics.json`` (``weight_check``)."""
    w = summary.get("weight_check") or summary.get("weights") or {}
    if "ess_clipped" not in w:
        return []
    n = w["n"]
    lines = []
    if summary.get("method") != "twisted_smc":  # SMC weights are never clipped
        lines.append(
            f"{'ESS (clipped weights)':32s} {w['ess_clipped']:10.1f} of {n} "
            f"({100 * w['relative_ess_clipped']:.2f} %)"
        )
    lines.append(
        f"{'ESS (unclipped weights)':32s} {w['ess_unclipped']:10.1f} of {n} "
        f"({100 * w['relative_ess_unclipped']:.2f} %)"
    )
    if w.get("pareto_k") is not None:
        lines.append(f"{'Pareto k (PSIS; > 0.7 unreliable)':32s} {w['pareto_k']:10.2f}")
    if w.get("n_distinct_resampled") is not None:
        lines.append(f"{'distinct resampled conformations':32s} {w['n_distinct_resampled']:10d}")
    return lines


def format_run(summary: Mapping[str, Any], run_dir: str | Path) -> str:
    """A sampling or SMC run's ``summary.json`` as a text table with units (what ``arbg
    sample`` and ``arbg smc`` print), ending with its warnings."""
    method = "twisted SMC" if summary.get("method") == "twisted_smc" else "SNIS"
    rows = [
        f"run {run_dir}: {summary['n_samples']} samples ({method}, tau {summary.get('tau')})",
        *format_weights(summary),
        f"{'energy evaluations':32s} {summary.get('energy_evaluations', 0):10d}",
        f"{'wrong chirality (weight zero)':32s} {summary.get('n_chirality_wrong', 0):10d}",
        f"{'non-finite energy (weight zero)':32s} {summary.get('n_nonfinite_energy', 0):10d}",
    ]
    if method == "twisted SMC":
        rows.append(
            f"{'populations x particles':32s} {summary.get('repeats')} x "
            f"{summary.get('n_particles')}, {summary.get('n_resampling_events', 0)} resamplings"
        )
    rows += [f"WARNING: {w}" for w in summary.get("warnings", [])]
    return "\n".join(rows)
