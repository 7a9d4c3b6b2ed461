"""Weighted datasets: the loader, splits, the evaluation against a weighted reference."""

import json

import numpy as np
import pytest

from arbg.chem.geometry import dihedrals
from arbg.chem.systems import BOLTZMANN_KJ_PER_MOL_K
from arbg.cli import main
from arbg.data.datasets import Dataset, load_dataset
from arbg.eval.basins import basin_populations
from arbg.eval.w2 import energy_w2


@pytest.fixture(scope="module")
def biased_aldp(tmp_path_factory):
    out = tmp_path_factory.mktemp("biased") / "md"
    rc = main(
        [
            "md",
            "aldp",
            "--ns",
            "0.02",
            "--warmup-ps",
            "0.5",
            "--out",
            str(out),
            "--quiet",
            "--bias",
            "dihedrals",
            "--bias-build-ns",
            "0.01",
            "--bias-psi",
        ]
    )
    assert rc == 0
    return out


def test_cli_biased_md_loader_and_splits(biased_aldp):
    from arbg.chem.bias import bias_energies

    out = biased_aldp
    ds = load_dataset(out)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["bias"]["settings"]["names"] == ["phi1", "psi1"]
    assert meta["bias"]["build"]["ns"] == pytest.approx(0.01)
    assert ds.weighted and ds.log_weights.shape == (20,)
    np.testing.assert_array_equal(ds.log_weights, np.load(out / "log_weights.npy"))
    # weights follow frames through the contiguous splits
    grid = np.load(out / "bias" / "grid.npy")
    assert grid.shape == (90, 90)
    kT = BOLTZMANN_KJ_PER_MOL_K * 300.0
    dih = np.array(meta["bias"]["settings"]["dihedrals"])
    parts = []
    for name, (a, b) in ds.splits.items():
        lw = ds.split_log_weights(name)
        np.testing.assert_array_equal(lw, ds.log_weights[a:b])
        np.testing.assert_allclose(lw, bias_energies(ds.split(name), dih, grid) / kT, atol=1e-9)
        parts.append(lw)
    np.testing.assert_array_equal(np.concatenate(parts), ds.log_weights)
    w = np.exp(ds.log_weights - ds.log_weights.max())
    assert ds.kish_ess() == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)
    assert 1.0 <= ds.kish_ess() < len(ds.log_weights)  # a biased run: not equilibrium frames


def test_cli_heated_md_log_weights(tmp_path, aldp):
    out = tmp_path / "hot"
    rc = main(
        [
            "md",
            "aldp",
            "--ns",
            "0.005",
            "--warmup-ps",
            "0.2",
            "--out",
            str(out),
            "--quiet",
            "--sampling-temperature-k",
            "400",
        ]
    )
    assert rc == 0
    ds = load_dataset(out)
    assert ds.metadata["target_temperature_k"] == 300.0
    assert ds.metadata["sampling_temperature_k"] == 400.0
    assert ds.system.temperature_k == 300.0
    u = aldp.reduced_energy(ds.positions)  # E / kT_target
    np.testing.assert_allclose(ds.log_weights, -(1.0 - 300.0 / 400.0) * u, rtol=1e-9)
    assert "bias" not in ds.metadata


def test_unweighted_data_has_zero_log_weights_and_npz_weights_load(tmp_path, aldp):
    x = np.repeat(aldp.positions[None], 5, 0).astype(np.float32)
    pdb = tmp_path / "a.pdb"
    aldp.save_pdb(pdb)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(tmp_path / "x.npy", topology=pdb, system=aldp)
    np.testing.assert_array_equal(ds.log_weights, np.zeros(5))
    assert not ds.weighted and ds.kish_ess() == pytest.approx(5.0)
    lw = np.array([0.0, 1.0, -2.0, 0.5, 3.0])
    np.savez(tmp_path / "x.npz", log_weights=lw, positions=x)
    ds = load_dataset(tmp_path / "x.npz", topology=pdb, system=aldp)
    np.testing.assert_array_equal(ds.log_weights, lw)
    np.testing.assert_array_equal(ds.split_log_weights("test"), lw[ds.splits["test"][0] :])
    with pytest.raises(ValueError, match="log-weights for"):
        Dataset(x, aldp, {"train": [0, 5]}, {}, np.zeros(4))


def _mirrored_frames(system, n: int, rng) -> np.ndarray:
    """Noisy copies of the minimised structure, every other one mirrored (phi -> -phi)."""
    x = system.positions[None] + rng.normal(scale=0.003, size=(n, system.n_atoms, 3))
    x[1::2, :, 0] *= -1.0
    return x.astype(np.float32)


def test_weighted_reference_in_evaluate(aldp):
    from arbg.eval.evaluate import evaluate_samples

    rng = np.random.default_rng(0)
    ref_x = _mirrored_frames(aldp, 400, rng)
    ref_lw = rng.normal(scale=1.0, size=400) + np.where(np.arange(400) % 2 == 1, -1.5, 0.0)
    reference = Dataset(ref_x, aldp, {"test": [0, 400]}, {"source": "synthetic"}, ref_lw)
    x = _mirrored_frames(aldp, 100, rng)
    u = aldp.reduced_energy(x)
    m = evaluate_samples(aldp, x, u, np.zeros(100), reference, n_eval=100, tica_lag=5, seed=1)
    # hand computation of the weighted reference populations
    w = np.exp(ref_lw - ref_lw.max())
    w /= w.sum()
    phi = np.degrees(dihedrals(ref_x, aldp.phi_indices)[:, 0])
    psi = np.degrees(dihedrals(ref_x, aldp.psi_indices)[:, 0])
    hand = {
        "alphaL_C7ax": w[phi >= 0].sum(),
        "alphaR": w[(phi < 0) & (psi >= -120) & (psi < 50)].sum(),
        "beta_C7eq_PII": w[(phi < 0) & ((psi >= 50) | (psi < -120))].sum(),
    }
    assert hand["alphaL_C7ax"] == pytest.approx(w[1::2].sum())  # the mirrored frames
    table = {r["basin"]: r for r in m["basin_table"]}
    pops = m["populations"]["ALA1 / reference MD"]["populations"]
    assert pops["se_method"] == "block_jackknife"
    for basin, p in hand.items():
        assert table[basin]["reference"] == pytest.approx(p, abs=1e-12)
        assert pops["basins"][basin]["p"] == pytest.approx(p, abs=1e-12)
    assert table["alphaL_C7ax"]["reference_se"] > 0
    assert m["reference_weighted"] and m["reference_weight_mode"] == "transport"
    assert m["reference_ess"] == pytest.approx(1.0 / np.sum(w**2))
    assert "md_floor" in m["metrics"]
    # transport: the stride-subsampled reference frames carry their renormalised weights
    ref_u = aldp.reduced_energy(ref_x)
    idx = np.arange(0, 400, 4)[:100]
    e = energy_w2(u, ref_u[idx], None, w[idx] / w[idx].sum())
    assert m["metrics"]["proposal"]["e_w2"]["values"][0] == pytest.approx(e, rel=1e-9)
    # ignoring the weights gives the frame fractions; resampling runs
    m0 = evaluate_samples(
        aldp, x, u, np.zeros(100), reference, n_eval=100, tica_lag=5, reference_weights="ignore"
    )
    t0 = {r["basin"]: r for r in m0["basin_table"]}
    assert t0["alphaL_C7ax"]["reference"] == pytest.approx(0.5)
    assert not m0["reference_weighted"] and m0["reference_ess"] == 400
    mr = evaluate_samples(
        aldp, x, u, np.zeros(100), reference, n_eval=100, tica_lag=5, reference_weights="resample"
    )
    assert mr["reference_weight_mode"] == "resample"
    assert np.isfinite(mr["metrics"]["md_floor"]["e_w2"]["mean"])


def test_weighted_block_jackknife_standard_error():
    rng = np.random.default_rng(3)
    phi = rng.uniform(-np.pi, np.pi, size=1000)
    psi = np.zeros(1000)
    # uniform weights: the jackknife of equal blocks equals the block standard error
    a = basin_populations(phi, psi, weights=np.ones(1000), n_blocks=10)
    b = basin_populations(phi, psi, n_blocks=10)
    assert a["se_method"] == "block_jackknife" and b["se_method"] == "block"
    for name in a["basins"]:
        assert a["basins"][name]["p"] == pytest.approx(b["basins"][name]["p"])
        assert a["basins"][name]["se"] == pytest.approx(b["basins"][name]["se"], rel=1e-9)
    # weighted: by hand
    w = rng.exponential(size=1000)
    got = basin_populations(phi, psi, weights=w, n_blocks=4)["basins"]["alphaL_C7ax"]
    ind = (phi >= 0).astype(float)
    p_minus = [
        np.sum(np.delete(w * ind, np.s_[k * 250 : (k + 1) * 250]))
        / np.sum(np.delete(w, np.s_[k * 250 : (k + 1) * 250]))
        for k in range(4)
    ]
    se = np.sqrt(3 / 4 * np.sum((np.array(p_minus) - np.mean(p_minus)) ** 2))
    assert got["p"] == pytest.approx(np.sum(w * ind) / np.sum(w))
    assert got["se"] == pytest.approx(se)


def test_cli_evaluate_against_a_weighted_reference(biased_aldp, tmp_path, aldp, capsys):
    """`arbg evaluate --reference <biased md>`: metrics.json carries the reference's Kish ESS."""
    from arbg.files import atomic_save_npz, atomic_write_json

    rng = np.random.default_rng(1)
    run = tmp_path / "run"
    x = _mirrored_frames(aldp, 30, rng)
    atomic_save_npz(
        run / "samples.npz",
        coords=x,
        u=aldp.reduced_energy(x),
        log_w=np.full(30, -np.log(30.0)),
        log_q=np.zeros(30),
    )
    atomic_write_json(run / "summary.json", {"system_spec": aldp.spec.to_dict(), "n_samples": 30})
    aldp.save_pdb(run / "topology.pdb")
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--reference",
                str(biased_aldp),
                "--n-eval",
                "8",
                "--tica-lag",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert any(
        x.startswith("reference MD") and "weighted (transport), Kish ESS" in x
        for x in out.splitlines()
    )
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    ref = load_dataset(biased_aldp)
    assert metrics["reference"]["weighted"] and metrics["reference"]["biased"]
    assert metrics["reference"]["kish_ess"] == pytest.approx(ref.kish_ess())
    assert metrics["reference_ess"] == pytest.approx(ref.kish_ess())
    assert (run / "report" / "report.html").exists()


def test_md_cost_curve_transports_md_frame_weights(biased_aldp):
    from arbg.eval.cost import md_cost_curve

    ds = load_dataset(biased_aldp)
    x = ds.positions.astype(np.float64)
    u = ds.system.reduced_energy(x)
    common = dict(
        system=ds.system,
        md_frames=x,
        steps_per_frame=1000,
        positions=x,
        energies=u,
        log_w_raw=-u,
        reference=ds,
        budgets=[5000, 20000],
    )
    plain = md_cost_curve(**common)
    flat = md_cost_curve(**common, md_log_weights=np.zeros(len(x)))
    weighted = md_cost_curve(**common, md_log_weights=ds.log_weights)
    assert plain["md"]["budgets"] == [5000, 20000]
    np.testing.assert_allclose(flat["md"]["e_w2"], plain["md"]["e_w2"], rtol=1e-9)
    # at the full budget the weighted MD frames are the (weighted) reference itself
    assert weighted["md"]["e_w2"][-1] == pytest.approx(0.0, abs=1e-6)
    assert plain["md"]["e_w2"][-1] > 1e-3
