"""Metric tests against independent computations (closed forms, mdtraj, explicit duplicates)."""

from __future__ import annotations

import numpy as np
import pytest

from arbg.chem.geometry import dihedrals
from arbg.eval.basins import DEFAULT_BASINS, basin_populations, free_energy_differences
from arbg.eval.evaluate import evaluate_ensemble
from arbg.eval.tica import fit_tica, tica_features, tica_project
from arbg.eval.w2 import energy_w2, n_nonfinite, torsion_w2, torus_cost, w2_euclidean


def _ar1(T: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    a = np.linspace(0.99, 0.5, dims)
    x = np.zeros((T, dims))
    for t in range(1, T):
        x[t] = a * x[t - 1] + rng.normal(size=dims)
    return x


@pytest.mark.parametrize("mu1,s1,mu2,s2", [(0.0, 1.0, 1.5, 1.0), (2.0, 1.0, -1.0, 2.5)])
def test_energy_w2_gaussians_closed_form(mu1, s1, mu2, s2):
    rng = np.random.default_rng(0)
    n = 200_000  # 1-D exact W2 is O(n log n): cheap
    a, b = rng.normal(mu1, s1, n), rng.normal(mu2, s2, n)
    expected = np.sqrt((mu1 - mu2) ** 2 + (s1 - s2) ** 2)
    assert energy_w2(a, b) == pytest.approx(expected, abs=0.03)


def test_energy_w2_identical_zero_and_nonfinite_filtered():
    rng = np.random.default_rng(1)
    u = rng.normal(size=500)
    assert energy_w2(u, u) == pytest.approx(0.0, abs=1e-12)
    u_bad = np.concatenate([u, [np.inf, np.nan]])
    assert n_nonfinite(u_bad) == 2
    assert energy_w2(u_bad, u) == pytest.approx(0.0, abs=1e-6)


def test_energy_w2_weighted_equals_duplicates():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=30), rng.normal(1.0, 2.0, size=40)
    w = np.where(np.arange(30) < 10, 2.0, 1.0)
    dup = np.concatenate([a, a[:10]])
    assert energy_w2(a, b, weights_a=w) == pytest.approx(energy_w2(dup, b), rel=1e-10)


def test_torsion_w2_wraparound():
    rng = np.random.default_rng(3)
    a = np.pi - 0.05 + 0.01 * rng.normal(size=(50, 2))  # near +pi
    b = -np.pi + 0.05 + 0.01 * rng.normal(size=(50, 2))  # near -pi: 0.1 rad away on the torus
    d = torsion_w2(a, b)
    assert d < 0.2
    assert d == pytest.approx(np.sqrt(2) * 0.1, abs=0.03)
    assert torus_cost(np.array([[3.1]]), np.array([[-3.1]]))[0, 0] == pytest.approx(
        (2 * np.pi - 6.2) ** 2
    )


def test_w2_identical_sets_zero():
    rng = np.random.default_rng(4)
    x = rng.uniform(-np.pi, np.pi, size=(60, 4))
    assert torsion_w2(x, x) == pytest.approx(0.0, abs=1e-7)
    assert w2_euclidean(x, x[::-1]) == pytest.approx(0.0, abs=1e-7)


def test_weighted_transport_equals_duplicated_points():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(20, 2)), rng.normal(0.5, 1.0, size=(25, 2))
    w = np.ones(20)
    w[:5] = 2.0  # weights 2:1 == duplicating the first five points
    dup = np.concatenate([a, a[:5]])
    assert w2_euclidean(a, b, wa=w) == pytest.approx(w2_euclidean(dup, b), rel=1e-8)
    assert torsion_w2(a, b, weights_a=w) == pytest.approx(torsion_w2(dup, b), rel=1e-8)
    w0 = np.concatenate([np.ones(20), np.zeros(3)])  # zero weights are ignored
    assert w2_euclidean(np.concatenate([a, b[:3]]), b, wa=w0) == pytest.approx(w2_euclidean(a, b))


def test_gaussian_2d_w2_closed_form():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(800, 2))
    b = rng.normal(size=(800, 2)) + np.array([3.0, 0.0])
    assert w2_euclidean(a, b) == pytest.approx(3.0, abs=0.15)


def test_dihedrals_match_mdtraj():
    md = pytest.importorskip("mdtraj")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(10, 6, 3)).astype(np.float32)
    idx = np.array([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [5, 3, 1, 0]])
    top = md.Topology()
    chain = top.add_chain()
    res = top.add_residue("ALA", chain)
    for i in range(6):
        top.add_atom(f"C{i}", md.element.carbon, res)
    ref = md.compute_dihedrals(md.Trajectory(x, top), idx, periodic=False)
    np.testing.assert_allclose(dihedrals(x, idx), ref, atol=1e-4)


def test_tica_w2_self_is_zero():
    rng = np.random.default_rng(8)
    traj = _ar1(3000, 4, rng)
    tica = fit_tica(traj, lag=10, dim=2)
    z = tica_project(tica, traj[::10])
    assert z.shape == (300, 2)
    assert w2_euclidean(z, z) == pytest.approx(0.0, abs=1e-7)
    # two disjoint blocks of a stationary process are close relative to the TICA spread
    z1, z2 = tica_project(tica, traj[:1500:10]), tica_project(tica, traj[1500::10])
    assert w2_euclidean(z1, z2) < 0.5 * np.sqrt(np.sum(np.var(z, axis=0)))
    assert w2_euclidean(z, z + np.array([5.0, 0.0])) == pytest.approx(5.0, rel=1e-6)


def test_tica_features_shape():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(5, 8, 3))
    phi, psi = np.array([[0, 1, 2, 3]]), np.array([[1, 2, 3, 4]])
    f = tica_features(x, np.arange(5), phi, psi, np.array([[2, 3, 4, 5]]))
    assert f.shape == (5, 10 + 2 * 3)


def test_basin_populations_synthetic():
    rng = np.random.default_rng(10)
    n = 4000
    centres = np.radians([[-80, 150], [-70, -40], [60, 45]])  # beta, alphaR, alphaL
    lab = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    ang = centres[lab] + np.radians(10) * rng.normal(size=(n, 2))
    pops = basin_populations(ang[:, 0], ang[:, 1])
    names = [b.name for b in DEFAULT_BASINS]
    for i, name in enumerate(names):
        assert pops["basins"][name]["p"] == pytest.approx(np.mean(lab == i), abs=1e-12)
    assert pops["unassigned"] == 0.0
    # weights: doubling the weight of alphaR samples
    w = np.where(lab == 1, 2.0, 1.0)
    pw = basin_populations(ang[:, 0], ang[:, 1], weights=w)
    expected = 2 * np.sum(lab == 1) / w.sum()
    assert pw["basins"]["alphaR"]["p"] == pytest.approx(expected)
    assert pw["basins"]["alphaR"]["se"] > 0
    pb = basin_populations(ang[:, 0], ang[:, 1], n_blocks=10)
    assert pb["se_method"] == "block" and pb["basins"]["alphaR"]["se"] > 0
    df = free_energy_differences(pops)
    ref = df["alphaR"]["reference"]
    assert ref == "beta_C7eq_PII" and df[ref]["dF"] == 0.0
    p = pops["basins"]
    assert df["alphaR"]["dF"] == pytest.approx(-np.log(p["alphaR"]["p"] / p[ref]["p"]))
    assert df["alphaR"]["ci_low"] < df["alphaR"]["dF"] < df["alphaR"]["ci_high"]


def _toy_chain(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random-walk 6-atom chains with AR(1)-correlated frames, [n, 6, 3] nm."""
    steps = 0.15 * rng.normal(size=(6, 3))
    base = np.cumsum(steps, axis=0)
    noise = _ar1(n, 18, rng).reshape(n, 6, 3) * 0.02
    return base[None] + noise


def test_evaluate_ensemble_small():
    rng = np.random.default_rng(11)
    ref = _toy_chain(800, rng)
    u_ref = np.sum((ref - ref.mean(0)) ** 2, axis=(1, 2)) * 100
    prop = _toy_chain(300, rng)
    u = np.sum((prop - ref.mean(0)) ** 2, axis=(1, 2)) * 100
    u[0] = np.inf
    log_w = -u - np.logaddexp.reduce(-u[1:])
    phi, psi = np.array([[0, 1, 2, 3]]), np.array([[1, 2, 3, 4]])
    res = evaluate_ensemble(
        ref,
        u_ref,
        prop,
        u,
        log_w,
        phi_indices=phi,
        psi_indices=psi,
        omega_indices=np.array([[2, 3, 4, 5]]),
        backbone_indices=np.arange(6),
        n_eval=200,
        tica_lag=5,
        seed=0,
        n_repeats=2,
    )
    assert set(res["metrics"]) == {
        "proposal",
        "reweighted_resampled",
        "reweighted_weighted",
        "md_floor",
    }
    for ens in res["metrics"].values():
        for m in ("e_w2", "t_w2", "tica_w2"):
            assert np.isfinite(ens[m]["mean"])
    assert res["n_nonfinite_energies"]["proposal"] == 1
    assert 1 <= res["unique_resampled"]["mean"] <= 200
    import json

    json.dumps(res)
    with pytest.raises(ValueError, match="at least 1000 frames"):
        evaluate_ensemble(
            ref,
            u_ref,
            prop,
            u,
            log_w,
            phi_indices=phi,
            psi_indices=psi,
            omega_indices=None,
            backbone_indices=np.arange(6),
            n_eval=500,
        )


def test_basin_populations_all_in_one_basin_has_zero_error():
    # 2000 equal weights 1/n sum to 1 + 2e-16; the iid error must still be 0, not a domain error
    n = 2000
    phi, psi = np.full(n, -1.2), np.full(n, 2.5)  # all beta/C7eq/PII
    pops = basin_populations(phi, psi)["basins"]
    assert pops["beta_C7eq_PII"]["p"] == 1.0
    assert pops["beta_C7eq_PII"]["se"] == 0.0
    assert pops["alphaL_C7ax"]["p"] == 0.0
