"""The report's text: the summary block, the population, metric, cost and settings tables.

Everything takes the JSON-like results of :func:`arbg.eval.evaluate.evaluate_samples` (and the
run's ``summary.json``) and returns HTML in which every value is a table cell or a sentence
(:mod:`arbg.eval.htmlkit`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from arbg.eval.htmlkit import esc, fmt, kv_table, table, value_html

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


def summary_html(metrics: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """The block at the top of the report: system, what was run, W2 against the floor and MD at
    matched cost, ESS and distinct conformations, one sentence per metric.

    ``context`` holds ``system`` (name, sequence, force field, temperature, ...) and ``run``
    (method, proposals, energy evaluations, wall time, ...) mappings, as made by
    :func:`arbg.eval.evaluate.report_context`.
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
    parts.append("</div>")
    return "".join(parts)


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


def _split_label(label: str) -> tuple[str, str]:
    res, _, ens = label.rpartition(" / ")
    return (res, ens) if res else ("", label)


def populations_table_html(
    populations: Mapping[str, Mapping[str, Any]],
    proposal: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Per residue, a table of basins x ensembles: population +- SE and dF [95% CI] (kT).

    ``populations`` maps ``"<residue> / <ensemble>"`` to ``{"populations": ..., "dF": ...}``
    (:func:`arbg.eval.report.compute_populations`); ``proposal`` are rows of
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


__all__ = [
    "ENSEMBLE_NAMES",
    "METRIC_NAMES",
    "cost_table_html",
    "matched_md",
    "metrics_table_html",
    "populations_table_html",
    "settings_html",
    "summary_html",
    "value_html",
    "weights_note_html",
]


def format_metrics(metrics: dict) -> str:
    """A plain-text table of E-W2 / T-W2 / TICA-W2 per ensemble."""
    rows = [f"{'ensemble':24s} {'E-W2':>14s} {'T-W2':>14s} {'TICA-W2':>14s}"]
    for name, vals in metrics.get("metrics", {}).items():
        cells = []
        for key in ("e_w2", "t_w2", "tica_w2"):
            v = vals.get(key)
            if v is None:
                cells.append(f"{'-':>14s}")
            elif v.get("std") and len(v.get("values", [])) > 1:
                cells.append(f"{v['mean']:7.3f}+-{v['std']:<5.3f}")
            else:
                cells.append(f"{v['mean']:14.3f}")
        rows.append(f"{name:24s} " + " ".join(cells))
    for key in ("ess", "unique_resampled", "n_eval"):
        if key in metrics:
            rows.append(f"{key}: {metrics[key]}")
    if metrics.get("reference_weighted"):
        rows.append(
            f"reference: weighted ({metrics.get('reference_weight_mode')}), Kish ESS "
            f"{metrics.get('reference_ess', float('nan')):.1f} of "
            f"{metrics.get('n_reference_frames')} frames"
        )
    if metrics.get("weights"):
        w = metrics["weights"]
        rows.append(f"W2 metrics: {w['w2_metrics']}; populations: {w['populations']}")
    if metrics.get("basin_table"):
        rows.append(
            f"{'residue':8s} {'basin':16s} {'reference MD':>16s} {'proposal':>9s} "
            f"{'reweighted':>16s}"
        )
        for r in metrics["basin_table"]:
            rows.append(
                f"{r['residue']:8s} {r['basin']:16s} {r['reference']:8.4f}+-"
                f"{r['reference_se']:<6.4f} {r['proposal']:9.4f} "
                f"{r['reweighted']:8.4f}+-{r['reweighted_se']:<6.4f}"
            )
    return "\n".join(rows)
