"""Report tests on small synthetic data: files exist, HTML embeds images, plots work alone."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from arbg.eval import plots  # noqa: E402
from arbg.eval.evaluate import evaluate_ensemble  # noqa: E402
from arbg.eval.report import write_report  # noqa: E402

PHI = np.array([[0, 1, 2, 3]])
PSI = np.array([[1, 2, 3, 4]])
OMEGA = np.array([[2, 3, 4, 5]])
BONDS = np.array([[i, i + 1] for i in range(5)])
ANGLES = np.array([[i, i + 1, i + 2] for i in range(4)])


def _chain(n: int, rng: np.random.Generator, scale: float = 0.03) -> np.ndarray:
    base = np.cumsum(0.15 * np.random.default_rng(0).normal(size=(6, 3)), axis=0)
    x = np.zeros((n, 6, 3))
    noise = scale * rng.normal(size=(n, 6, 3))
    for t in range(1, n):  # correlated frames, like MD
        x[t] = 0.9 * x[t - 1] + noise[t]
    return base[None] + x


def _data():
    rng = np.random.default_rng(1)
    ref = _chain(600, rng)
    prop = _chain(300, rng, scale=0.04)
    centre = ref.mean(0)
    u_ref = 50 * np.sum((ref - centre) ** 2, axis=(1, 2))
    u = 50 * np.sum((prop - centre) ** 2, axis=(1, 2))
    log_w = -u - np.logaddexp.reduce(-u)
    return ref, u_ref, prop, u, log_w


def test_write_report(tmp_path):
    ref, u_ref, prop, u, log_w = _data()
    metrics = evaluate_ensemble(
        ref,
        u_ref,
        prop,
        u,
        log_w,
        phi_indices=PHI,
        psi_indices=PSI,
        omega_indices=OMEGA,
        backbone_indices=np.arange(6),
        n_eval=150,
        tica_lag=5,
        seed=0,
    )
    path = write_report(
        tmp_path,
        reference_positions=ref,
        reference_energies=u_ref,
        proposal_positions=prop,
        proposal_energies=u,
        log_weights=log_w,
        metrics=metrics,
        phi_indices=PHI,
        psi_indices=PSI,
        omega_indices=OMEGA,
        backbone_indices=np.arange(6),
        bonds=BONDS,
        angles=ANGLES,
        tica_lag=5,
    )
    assert path == tmp_path / "report.html" and path.exists()
    text = path.read_text()
    for name in ("energy", "log_weights", "ramachandran_1", "tica", "bonds_angles"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert text.count("data:image/png;base64,") == 5
    assert "E-W2" in text and "MD vs MD floor" in text and "alphaR" in text
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert "basin_populations" in saved and "metrics" in saved


def test_plots_standalone(tmp_path):
    ref, u_ref, prop, u, log_w = _data()
    fig, axes = plt.subplots(1, 3)
    plots.plot_energy_histograms(axes[0], u_ref, u, weights=np.exp(log_w))
    plots.plot_ramachandran(axes[1:], np.zeros(10), np.ones(10), np.zeros(5), np.ones(5))
    plt.close(fig)
    out = tmp_path / "cost.png"
    plots.plot_cost_curve(
        out,
        [1e3, 1e4, 1e5],
        {"e_w2": [3.0, 1.0, 0.5], "t_w2": [1, 0.5, 0.3]},
        {"e_w2": [5.0, 2.0, 0.8], "t_w2": [2, 1, 0.4]},
    )
    assert out.stat().st_size > 1000


def test_log_weight_histogram_keeps_its_range_with_a_clash():
    lw = np.random.default_rng(0).normal(0.0, 2.0, 500)
    lw[0] = -4e16  # a proposal with a clash: u ~ 1e16 kT
    fig, ax = plt.subplots()
    plots.plot_log_weights(ax, lw, decades=40)
    lo, hi = ax.get_xlim()
    assert hi - lo < 45  # not stretched to -1e16
    assert "below 1e-40 of max=1" in ax.get_title()
    plt.close(fig)
