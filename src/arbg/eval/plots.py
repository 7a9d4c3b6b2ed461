"""Matplotlib (Agg) plots for the evaluation report; each function is usable on its own.

Every plot takes a *target*: a path (the figure is created, saved as PNG and closed) or existing
matplotlib Axes (a single Axes, or a sequence of Axes for multi-panel plots). Units: energies in
kT, angles in radians (plotted in degrees), positions in nm.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

log = logging.getLogger(__name__)

Target = Any  # str | Path | Axes | Sequence[Axes]
COLORS = {"reference": "black", "proposal": "tab:orange", "reweighted": "tab:blue"}


def _save(fig: Any, path: str | Path) -> None:
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


@contextmanager
def _axes(target: Target, n: int = 1, panel_size: tuple[float, float] = (4.5, 3.6)) -> Iterator:
    """Yield a list of ``n`` Axes; save and close the figure if ``target`` is a path."""
    if isinstance(target, (str, Path)):
        fig, axes = plt.subplots(1, n, figsize=(panel_size[0] * n, panel_size[1]), squeeze=False)
        try:
            yield list(axes[0])
            _save(fig, target)
        finally:
            plt.close(fig)
    else:
        axes = list(target) if isinstance(target, (list, tuple, np.ndarray)) else [target]
        if len(axes) < n:
            raise ValueError(f"this plot needs {n} axes, got {len(axes)}")
        yield axes


def _note_empty(ax: Any, n_inside: float, n_total: int, what: str = "samples") -> None:
    """Say in the panel itself when none of its ``n_total`` samples fall inside its range."""
    if n_total and n_inside <= 0:
        ax.text(
            0.5,
            0.5,
            f"all {n_total} {what}\noutside this range",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="tab:red",
        )


def _norm_w(weights: np.ndarray | None, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[0] != n:
        raise ValueError(f"weights have length {w.shape[0]}, expected {n}")
    return w / w.sum()


def plot_energy_histograms(
    target: Target,
    reference: np.ndarray,
    proposal: np.ndarray | None = None,
    reweighted: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    bins: int = 80,
) -> None:
    """Histograms of reduced energies (kT): reference MD, proposal, reweighted.

    Parameters
    ----------
    target : path or Axes
    reference : ndarray, shape (T,)
        Reference energies, kT.
    proposal : ndarray, shape (N,), optional
        Proposal energies (``+inf`` allowed; non-finite and out-of-range values are counted in the
        legend).
    reweighted : ndarray, shape (M,), optional
        Energies of a resampled ensemble. If omitted and ``weights`` is given, the proposal
        histogram weighted by ``weights`` is shown instead.
    weights : ndarray, shape (N,), optional
        Normalized importance weights of the proposals.
    """
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    lo, hi = np.percentile(ref, [0.05, 99.95])
    pad = 0.5 * (hi - lo)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    sets = [("reference MD", ref, None, COLORS["reference"])]
    if proposal is not None:
        sets.append(("proposal", np.asarray(proposal, dtype=np.float64), None, COLORS["proposal"]))
    if reweighted is not None:
        sets.append(("reweighted", np.asarray(reweighted, np.float64), None, COLORS["reweighted"]))
    elif weights is not None and proposal is not None:
        w = _norm_w(weights, len(proposal))
        sets.append(("reweighted", np.asarray(proposal, np.float64), w, COLORS["reweighted"]))
    with _axes(target) as (ax,):
        for label, u, w, color in sets:
            inside = np.isfinite(u) & (u >= edges[0]) & (u <= edges[-1])
            frac_out = 1.0 - (inside.mean() if w is None else w[inside].sum())
            lbl = f"{label} ({100 * frac_out:.1f}% outside)" if frac_out > 1e-3 else label
            if not inside.any():
                _note_empty(ax, 0, len(u), f"{label} energies")
                continue
            ax.hist(
                u[inside],
                bins=edges,
                weights=None if w is None else w[inside],
                density=True,
                histtype="step",
                lw=1.6,
                color=color,
                label=lbl,
            )
        ax.set_xlabel("reduced energy u (kT)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        ax.set_title("Energy distributions")


def _fes_2d(
    ax: Any,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    edges: Sequence[np.ndarray],
    vmax: float,
    cmap: str = "viridis",
) -> Any:
    """-ln density (kT, minimum 0) on a grid; bins above ``vmax`` (empty, or holding only
    near-zero importance weights) are left blank rather than drawn in the ``vmax`` colour."""
    inside = (x >= edges[0][0]) & (x <= edges[0][-1]) & (y >= edges[1][0]) & (y <= edges[1][-1])
    mass = inside.sum() if w is None else np.sum(np.asarray(w)[inside])
    if mass <= 0:
        _note_empty(ax, 0, len(x))
        return None
    h, _, _ = np.histogram2d(x, y, bins=edges, weights=w, density=True)
    with np.errstate(divide="ignore"):
        f = -np.log(h.T)
    f -= np.min(f[np.isfinite(f)]) if np.isfinite(f).any() else 0.0
    f = np.ma.masked_where(~np.isfinite(f) | (f > vmax), f)
    return ax.pcolormesh(edges[0], edges[1], f, cmap=cmap, vmin=0, vmax=vmax)


def plot_ramachandran(
    target: Target,
    phi_ref: np.ndarray,
    psi_ref: np.ndarray,
    phi: np.ndarray,
    psi: np.ndarray,
    weights: np.ndarray | None = None,
    label: str = "reweighted",
    title: str = "",
    bins: int = 60,
    vmax: float = 8.0,
    show_proposal: bool = True,
) -> None:
    """Ramachandran free-energy plots (-ln density, kT): reference MD, the raw proposal and the
    reweighted samples.

    Bins above ``vmax`` kT (empty, or holding only near-zero weights) are left blank.

    Parameters
    ----------
    target : path, or two Axes (three with ``weights`` and ``show_proposal``)
    phi_ref, psi_ref : ndarray, shape (T,)
        Reference dihedrals, radians.
    phi, psi : ndarray, shape (N,)
        Sample dihedrals, radians.
    weights : ndarray, shape (N,), optional
        Importance weights of the samples; with ``show_proposal`` the unweighted proposal gets a
        panel of its own before the reweighted one.
    """
    edges = [np.linspace(-180, 180, bins + 1)] * 2
    w = _norm_w(weights, len(phi))
    panels = [(phi_ref, psi_ref, None, "reference MD")]
    if w is not None and show_proposal:
        panels.append((phi, psi, None, "proposal"))
    panels.append((phi, psi, w, label if w is not None else "samples"))
    with _axes(target, len(panels), (4.0, 3.6)) as axes:
        meshes = []
        for ax, (a, b, ww, name) in zip(axes, panels, strict=False):
            meshes.append(_fes_2d(ax, np.degrees(a), np.degrees(b), ww, edges, vmax))
            ax.set_xlabel("phi (deg)")
            ax.set_ylabel("psi (deg)")
            ax.set_title(f"{title} {name}".strip(), fontsize=10)
            ax.set_xticks([-180, -90, 0, 90, 180])
            ax.set_yticks([-180, -90, 0, 90, 180])
        _colorbar(axes[len(panels) - 1], meshes, vmax)


def _colorbar(ax: Any, meshes: list[Any], vmax: float) -> None:
    mesh = next((m for m in reversed(meshes) if m is not None), None)
    if mesh is not None:
        ax.figure.colorbar(mesh, ax=ax, label=f"free energy (kT; blank above {vmax:g})")


def plot_tica_fes(
    target: Target,
    tica_ref: np.ndarray,
    tica: np.ndarray,
    weights: np.ndarray | None = None,
    label: str = "reweighted",
    bins: int = 60,
    vmax: float = 8.0,
) -> None:
    """TICA free-energy surfaces (-ln density, kT): reference beside a sample set.

    Parameters
    ----------
    target : path or two Axes
    tica_ref : ndarray, shape (T, 2)
        Reference projections onto the first two TICA components.
    tica : ndarray, shape (N, 2)
        Sample projections.
    weights : ndarray, shape (N,), optional
        Importance weights of the samples.
    """
    lo = np.percentile(tica_ref, 0.1, axis=0)
    hi = np.percentile(tica_ref, 99.9, axis=0)
    pad = 0.15 * (hi - lo)
    edges = [np.linspace(lo[i] - pad[i], hi[i] + pad[i], bins + 1) for i in range(2)]
    w = _norm_w(weights, len(tica))
    with _axes(target, 2, (4.0, 3.6)) as axes:
        meshes = []
        for ax, (z, ww, name) in zip(
            axes, [(tica_ref, None, "reference MD"), (tica, w, label)], strict=False
        ):
            meshes.append(_fes_2d(ax, z[:, 0], z[:, 1], ww, edges, vmax))
            ax.set_xlabel("TIC 1")
            ax.set_ylabel("TIC 2")
            ax.set_title(f"TICA: {name}", fontsize=10)
        _colorbar(axes[1], meshes, vmax)


def plot_log_weights(
    target: Target,
    log_weights: np.ndarray,
    bins: int = 80,
    decades: float = 40.0,
    kind: str = "unclipped",
) -> None:
    """Histogram of normalized log10 importance weights, annotated with the Kish ESS (labelled
    with ``kind``: which weights these are, e.g. "unclipped" or "clipped").

    Parameters
    ----------
    target : path or Axes
    log_weights : ndarray, shape (N,)
        Log importance weights (natural log; ``-inf`` = zero weight; normalized internally).
    decades : the x-axis spans this many decades below the largest weight; lighter weights
        (a proposal with a clash has log10 w ~ -1e16) are counted in the title, not drawn.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    finite = np.isfinite(lw)
    lw = lw - np.max(lw[finite])
    lw = lw - np.log(np.sum(np.exp(lw[finite])))
    ess = 1.0 / np.sum(np.exp(2 * lw[finite]))
    l10 = lw[finite] / np.log(10)
    lo = l10.max() - decades
    shown = l10 >= lo
    with _axes(target) as (ax,):
        ax.hist(l10[shown], bins=bins, range=(lo, l10.max()), color=COLORS["reweighted"], alpha=0.8)
        ax.axvline(-np.log10(lw.size), color="k", ls="--", lw=1, label="uniform 1/N")
        ax.set_xlabel("log10 normalized weight")
        ax.set_ylabel("count")
        ax.set_title(
            f"Importance weights ({kind}): N={lw.size}, ESS ({kind})={ess:.1f} "
            f"({100 * ess / lw.size:.2f}%)\n"
            f"zero={np.count_nonzero(~finite)}, below 1e-{decades:.0f} of max="
            f"{np.count_nonzero(~shown)}",
            fontsize=9,
        )
        ax.legend(fontsize=8)


def bond_lengths(x: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Bond lengths ``[N, b]`` in nm for positions ``[N, n, 3]`` nm and pairs ``[b, 2]``."""
    b = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    return np.linalg.norm(x[:, b[:, 0]] - x[:, b[:, 1]], axis=-1)


def bond_angles(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Bond angles ``[N, a]`` in radians for triples ``[a, 3]`` (vertex in the middle)."""
    a = np.asarray(angles, dtype=np.int64).reshape(-1, 3)
    u = x[:, a[:, 0]] - x[:, a[:, 1]]
    v = x[:, a[:, 2]] - x[:, a[:, 1]]
    cos = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _wstats(v: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    mean = np.average(v, axis=0, weights=w)
    std = np.sqrt(np.average((v - mean) ** 2, axis=0, weights=w))
    return mean, std


def _deviation_histogram(
    ax: Any, ref: np.ndarray, v: np.ndarray, w: np.ndarray | None, what: str
) -> int:
    """Histograms of one bond or angle: the reference and the (weighted) samples on the
    reference's range, widened by its span on each side (a broken sample, a 1 nm "bond", must
    not squeeze the distributions into one bin). Returns the samples outside that range."""
    q_lo, q_hi = np.percentile(ref, [0.1, 99.9])
    span = max(q_hi - q_lo, 1e-9)
    edges = np.linspace(q_lo - span, q_hi + span, 61)
    out_mask = (v < edges[0]) | (v > edges[-1])
    inside_mass = np.count_nonzero(~out_mask) if w is None else np.sum(w[~out_mask])
    ax.hist(
        ref, bins=edges, density=True, histtype="step", color=COLORS["reference"], label="reference"
    )
    if inside_mass > 0:
        ax.hist(
            v,
            bins=edges,
            weights=w,
            density=True,
            histtype="step",
            color=COLORS["reweighted"],
            label=what,
        )
    else:
        _note_empty(ax, 0, len(v), what if w is None else "samples with weight")
    return int(np.count_nonzero(out_mask))


def plot_bond_distributions(
    path: str | Path,
    x_ref: np.ndarray,
    x: np.ndarray,
    bonds: np.ndarray,
    angles: np.ndarray,
    weights: np.ndarray | None = None,
    n_show: int = 3,
    labels: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Bond-length and bond-angle distributions against the reference (where E-W2 comes from).

    Top row: for every bond (left) and angle (right) the shift of the sample mean in units of the
    reference standard deviation (z-score) and the log2 ratio of standard deviations. Bottom row:
    histograms of the ``n_show`` most deviating bonds and angles (largest ``|z| + |log2 ratio|``).

    Parameters
    ----------
    path : path
        Output PNG.
    x_ref : ndarray, shape (T, n, 3)
        Reference positions, nm.
    x : ndarray, shape (N, n, 3)
        Sample positions, nm.
    bonds : ndarray, shape (b, 2)
    angles : ndarray, shape (a, 3)
    weights : ndarray, shape (N,), optional
        Importance weights of the samples.
    labels : (bond labels, angle labels), optional

    Returns
    -------
    dict
        Per-bond/angle z-scores and std ratios (JSON-serializable).
    """
    w = _norm_w(weights, len(x))
    what = "reweighted proposals (SNIS)" if w is not None else "proposals (unweighted)"
    data = {
        "bonds": (bond_lengths(x_ref, bonds), bond_lengths(x, bonds), "length (nm)", 1.0),
        "angles": (bond_angles(x_ref, angles), bond_angles(x, angles), "angle (deg)", 180 / np.pi),
    }
    y_units = {"bonds": "density (1/nm)", "angles": "density (1/deg)"}
    n_panels = max(1, n_show)
    fig, axes = plt.subplots(3, n_panels, figsize=(3.4 * n_panels, 9.0), squeeze=False)
    top = fig.add_subplot(3, 1, 1)
    for ax in axes[0]:
        ax.remove()
    summary: dict[str, Any] = {}
    offset = 0
    for row, (kind, (vr, vs, unit, scale)) in enumerate(data.items(), start=1):
        if vr.shape[1] == 0:
            continue
        mr, sr = _wstats(vr, None)
        ms, ss = _wstats(vs, w)
        z = (ms - mr) / np.maximum(sr, 1e-12)
        lr = np.log2(np.maximum(ss, 1e-12) / np.maximum(sr, 1e-12))
        summary[kind] = {"z_mean": z.tolist(), "log2_std_ratio": lr.tolist()}
        pos = offset + np.arange(z.size)
        top.scatter(pos, z, s=10, label=f"{kind}: mean shift (z)")
        top.scatter(pos, lr, s=10, marker="x", label=f"{kind}: log2 std ratio")
        offset += z.size + 2
        names = labels[row - 1] if labels else [f"{kind[:-1]} {i}" for i in range(z.size)]
        for ax, i in zip(axes[row], np.argsort(-(np.abs(z) + np.abs(lr)))[:n_panels], strict=False):
            outside = _deviation_histogram(ax, vr[:, i] * scale, vs[:, i] * scale, w, what)
            ax.set_title(
                f"{names[i]}: z={z[i]:+.2f}" + (f" ({outside} outside)" if outside else ""),
                fontsize=9,
            )
            ax.set_xlabel(unit)
            ax.set_ylabel(y_units[kind])
        axes[row][0].legend(fontsize=7)
    top.axhline(0, color="k", lw=0.5)
    top.set_xlabel("bonds, then angles (index)")
    top.set_ylabel("z (ref. std) or log2 std ratio")
    top.set_title(f"Bond lengths and angles: {what} vs reference MD")
    top.legend(fontsize=7, ncol=2)
    _save(fig, path)
    plt.close(fig)
    return summary


METRIC_LABELS = {"e_w2": "E-W2 (kT)", "t_w2": "T-W2 (rad)", "tica_w2": "TICA-W2"}


def plot_cost_curve(
    path: str | Path,
    budgets: Sequence[float],
    bg_metrics: Mapping[str, Sequence[float]],
    md_metrics: Mapping[str, Sequence[float]],
    md_budgets: Sequence[float] | None = None,
    floor: Mapping[str, float] | None = None,
) -> None:
    """Metric vs energy evaluations, BG vs MD at matched cost (one panel per metric).

    Both axes are logarithmic (E-W2 of short MD or of a poor proposal spans decades); a dotted
    line marks the MD-vs-MD floor of each metric when ``floor`` gives it.

    Parameters
    ----------
    path : path
        Output PNG.
    budgets : sequence of float, length K
        Energy evaluations spent (x axis, log scale).
    bg_metrics, md_metrics : mapping name -> sequence of length K
        Metric values of the Boltzmann generator and of MD (e.g. ``{"e_w2": [...]}``).
    md_budgets : sequence of float, optional
        Separate budgets for MD if they differ from ``budgets``.
    floor : mapping name -> float, optional
        The MD-vs-MD floor of each metric (what a perfect sampler reaches at this sample count).
    """
    names = list(dict.fromkeys([*bg_metrics, *md_metrics]))
    with _axes(path, max(1, len(names)), (4.0, 3.4)) as axes:
        for ax, name in zip(axes, names, strict=False):
            if name in bg_metrics:
                ax.plot(budgets, bg_metrics[name], "o-", color=COLORS["reweighted"], label="BG")
            if name in md_metrics:
                ax.plot(
                    md_budgets if md_budgets is not None else budgets,
                    md_metrics[name],
                    "s--",
                    color=COLORS["reference"],
                    label="MD",
                )
            if floor and np.isfinite(floor.get(name, np.nan)) and floor[name] > 0:
                ax.axhline(floor[name], color="tab:gray", ls=":", lw=1.2, label="MD floor")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("energy evaluations")
            ax.set_ylabel(METRIC_LABELS.get(name, name))
            ax.legend(fontsize=8)
