"""Plots a newcomer reads: blank near-zero-weight bins, proposal panel, log cost axis with the
floor, labelled bond/angle panels, empty panels that say so."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from arbg.eval import plots  # noqa: E402


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_ramachandran_blanks_near_zero_weights_and_shows_the_proposal():
    rng = np.random.default_rng(0)
    phi_ref, psi_ref = rng.normal(-1.4, 0.2, 2000), rng.normal(2.6, 0.2, 2000)
    phi = np.concatenate([rng.normal(-1.4, 0.2, 900), rng.normal(1.0, 0.2, 100)])
    psi = np.concatenate([rng.normal(2.6, 0.2, 900), rng.normal(0.5, 0.2, 100)])
    w = np.ones(1000)
    w[900:] = 1e-12  # the alpha-L samples carry (almost) no weight
    fig, axes = plt.subplots(1, 3)
    plots.plot_ramachandran(axes, phi_ref, psi_ref, phi, psi, weights=w, vmax=8.0)
    titles = [ax.get_title() for ax in axes]
    assert titles == ["reference MD", "proposal", "reweighted"]
    prop, rew = axes[1].collections[0].get_array(), axes[2].collections[0].get_array()
    # the proposal draws the alpha-L bins; the reweighted panel leaves them blank (> 8 kT)
    assert np.ma.count(prop) > np.ma.count(rew)
    assert float(np.ma.max(rew)) <= 8.0
    plt.close(fig)


def test_ramachandran_without_weights_has_two_panels():
    fig, axes = plt.subplots(1, 2)
    plots.plot_ramachandran(axes, np.zeros(10), np.ones(10), np.zeros(5), np.ones(5))
    assert [ax.get_title() for ax in axes] == ["reference MD", "samples"]
    plt.close(fig)


def test_cost_curve_log_axes_and_floor():
    fig, axes = plt.subplots(1, 2)
    plots.plot_cost_curve(
        axes,
        [1e3, 1e4, 1e5],
        {"e_w2": [300.0, 10.0, 0.5], "t_w2": [1, 0.5, 0.3]},
        {"e_w2": [5e4, 20.0, 0.8], "t_w2": [2, 1, 0.4]},
        floor={"e_w2": 0.2, "t_w2": 0.1},
    )
    for ax, floor in zip(axes, (0.2, 0.1), strict=True):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        lines = [ln for ln in ax.get_lines() if ln.get_label() == "MD floor"]
        assert len(lines) == 1 and np.allclose(lines[0].get_ydata(), floor)
    plt.close(fig)


def test_bond_panels_labelled_and_empty_panels_say_so(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x_ref = rng.normal(0, 0.01, (500, 3, 3)) + np.array([[0, 0, 0], [0.15, 0, 0], [0.3, 0.1, 0]])
    x = x_ref[:200].copy()
    x[:, 2] += 5.0  # every sample's second bond is 5 nm long: its panel is empty
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    plots.plot_bond_distributions(
        tmp_path / "b.png",
        x_ref,
        x,
        np.array([[0, 1], [1, 2]]),
        np.array([[0, 1, 2]]),
        weights=np.ones(200),
        n_show=2,
    )
    fig = figs[-1]
    texts = _texts(fig)
    assert any("all 200 samples with weight" in t and "outside" in t for t in texts)
    ylabels = {ax.get_ylabel() for ax in fig.axes}
    assert {"density (1/nm)", "density (1/deg)"} <= ylabels
    legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts]
    assert "reweighted proposals (SNIS)" in legends
    monkeypatch.undo()
    plt.close(fig)


def test_energy_histogram_says_when_all_samples_are_outside():
    fig, ax = plt.subplots()
    u_ref = np.random.default_rng(2).normal(0, 1, 1000)
    plots.plot_energy_histograms(ax, u_ref, np.full(50, 1e16))
    assert any("all 50 proposal energies" in t for t in _texts(fig))
    plt.close(fig)
