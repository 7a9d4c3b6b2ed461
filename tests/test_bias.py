"""Enhanced-sampling MD (arbg.chem.bias through arbg.chem.md.run_md): exact reweighting on a toy
torsion.

The toy is a real OpenMM System: four particles in a chain with harmonic bonds and angles and a
double-well torsion U(theta) = a (1 + cos 2 theta) / 2 + c sin theta (barriers of ~10 kT). Bonds
and angles do not depend on the dihedral and the internal-coordinate Jacobian does not either,
so the exact marginal is p(theta) ~ exp(-U(theta)/kT): P(theta > 0) by numerical integration.
"""

import json

import numpy as np
import pytest

from arbg.chem.bias import (
    BiasConfig,
    _restore_grid,
    bias_energies,
    build_bias,
    frame_log_weights,
    frozen_bias_force,
    select_bias_dihedrals,
)
from arbg.chem.geometry import dihedrals
from arbg.chem.md import MDConfig, load_md_frames, load_md_log_weights, run_md
from arbg.chem.systems import BOLTZMANN_KJ_PER_MOL_K
from arbg.eval.basins import basin_populations


class _ToySpec:
    def __init__(self, temperature_k: float):
        self.temperature_k = temperature_k

    def to_dict(self) -> dict:
        return {"name": "toy-torsion", "temperature_k": self.temperature_k}


class ToyTorsion:
    """Duck-typed for run_md: four carbons, bonds, angles and a tilted double-well torsion."""

    name = "toy-torsion"
    n_atoms = 4
    phi_indices = np.array([[0, 1, 2, 3]])
    psi_indices = np.zeros((0, 4), dtype=np.int64)
    residue_index = np.zeros(4, dtype=np.int64)

    def __init__(
        self, temperature_k: float = 300.0, barrier_kt: float = 10.0, tilt_kt: float = 1.0
    ):
        self.temperature_k = temperature_k
        kT = BOLTZMANN_KJ_PER_MOL_K * temperature_k
        self.a, self.c = barrier_kt * kT, tilt_kt * kT
        self.spec = _ToySpec(temperature_k)
        b, ang = 0.15, np.radians(109.5)  # starts at theta = +90 deg, the upper well
        self.positions = np.array(
            [
                [b * np.sin(ang), -b * np.cos(ang), 0.0],
                [0.0, 0.0, 0.0],
                [0.0, b, 0.0],
                [0.0, b - b * np.cos(ang), -b * np.sin(ang)],
            ]
        )

    def torsion_energy(self, theta: np.ndarray) -> np.ndarray:
        return self.a * (1 + np.cos(2 * theta)) / 2 + self.c * np.sin(theta)

    def create_openmm_system(self):
        import openmm

        s = openmm.System()
        for _ in range(4):
            s.addParticle(12.0)
        bonds = openmm.HarmonicBondForce()
        for i in range(3):
            bonds.addBond(i, i + 1, 0.15, 2.0e5)
        angles = openmm.HarmonicAngleForce()
        for i in range(2):
            angles.addAngle(i, i + 1, i + 2, np.radians(109.5), 400.0)
        tors = openmm.CustomTorsionForce("a*(1+cos(2*theta))/2 + c*sin(theta)")
        tors.addGlobalParameter("a", self.a)
        tors.addGlobalParameter("c", self.c)
        tors.addTorsion(0, 1, 2, 3, [])
        for f in (bonds, angles, tors):
            s.addForce(f)
        return s

    def forcefield_hashes(self) -> dict:
        return {}

    @property
    def topology(self):
        import mdtraj

        top = mdtraj.Topology()
        res = top.add_residue("TOY", top.add_chain())
        for i in range(4):
            top.add_atom(f"C{i}", mdtraj.element.carbon, res)
        return top

    def save_pdb(self, path) -> None:
        import mdtraj

        mdtraj.Trajectory(self.positions[None].astype(np.float32), self.topology).save_pdb(
            str(path)
        )

    def exact_p_positive(self) -> float:
        kT = BOLTZMANN_KJ_PER_MOL_K * self.temperature_k
        th = np.linspace(-np.pi, np.pi, 200_001)
        p = np.exp(-self.torsion_energy(th) / kT)
        return float(np.trapezoid(p * (th > 0), th) / np.trapezoid(p, th))

    def energies_kj(self, x: np.ndarray) -> np.ndarray:
        from arbg.chem.energy import energies_kj, make_context

        return energies_kj(make_context(self.create_openmm_system()), x.astype(np.float64))


def _config(ns: float = 1.0, **kw) -> MDConfig:
    bias = BiasConfig(build_ns=0.1, deposit_ps=0.2)
    base = dict(
        ns=ns,
        frame_interval_ps=0.2,
        warmup_ps=5.0,
        friction_per_ps=1.0,
        chunk_frames=1000,
        seed=0,
        bias=bias,
    )
    base.update(kw)
    return MDConfig(**base)


def _reweighted_p_positive(out) -> tuple[float, float, float]:
    x, lw = load_md_frames(out), load_md_log_weights(out)
    th = dihedrals(x, ToyTorsion.phi_indices)[:, 0]
    pops = basin_populations(th, np.zeros_like(th), weights=np.exp(lw - lw.max()), n_blocks=20)
    b = pops["basins"]["alphaL_C7ax"]  # phi >= 0
    return b["p"], b["se"], float(np.mean(th > 0))


@pytest.fixture(scope="module")
def biased_toy(tmp_path_factory):
    toy = ToyTorsion()
    out = tmp_path_factory.mktemp("toy") / "biased"
    run_md(toy, out, _config(), progress=False)
    return toy, out


def test_biased_toy_reweights_to_the_exact_answer(biased_toy):
    toy, out = biased_toy
    exact = toy.exact_p_positive()
    p, se, raw = _reweighted_p_positive(out)
    assert 0.15 < raw < 0.9  # the bias made both wells visited (exact: 0.125)
    assert abs(p - exact) < 3 * se, (p, se, exact)
    assert se < 0.04


def _as_dataset(system, out):
    from arbg.data.datasets import Dataset

    meta = json.loads((out / "metadata.json").read_text())
    x = load_md_frames(out)
    splits = {"train": [0, int(0.8 * len(x))], "val": [int(0.8 * len(x)), len(x)]}
    return Dataset(x, system, splits, {**meta, "source": str(out)}, load_md_log_weights(out))


def test_joined_plain_and_biased_runs_are_pooled_by_their_biases(tmp_path):
    """A plain and a biased run of one system, joined (``join_datasets``): the frames are pooled
    by MBAR, which keeps the exact answer while the weights get far flatter than the biased
    run's own (a 3 kT barrier, which the plain run crosses)."""
    from arbg.data.datasets import join_datasets
    from arbg.reweight import kish_ess

    toy = ToyTorsion(barrier_kt=3.0)
    run_md(toy, tmp_path / "plain", _config(ns=0.6, bias=None), progress=False)
    run_md(toy, tmp_path / "biased", _config(ns=0.6), progress=False)
    plain, biased = _as_dataset(toy, tmp_path / "plain"), _as_dataset(toy, tmp_path / "biased")
    joined = join_datasets([plain, biased])
    assert joined.metadata["joined_weights"] == "mbar"
    th = dihedrals(joined.positions, ToyTorsion.phi_indices)[:, 0]
    pops = basin_populations(th, 0 * th, weights=np.exp(joined.log_weights), n_blocks=20)
    p, se = pops["basins"]["alphaL_C7ax"]["p"], pops["basins"]["alphaL_C7ax"]["se"]
    exact = toy.exact_p_positive()
    assert abs(p - exact) < 3 * se, (p, se, exact)
    assert kish_ess(joined.log_weights) > kish_ess(biased.log_weights) + 0.5 * len(plain)
    check = {c["source"]: c for c in joined.metadata["joined_phi_check"]}
    assert abs(check[str(tmp_path / "plain")]["observed"] - exact) < 0.1


def test_a_trapped_plain_run_is_named_when_pooled(biased_toy, tmp_path, caplog):
    """A plain run that never leaves the major well (10 kT barrier) breaks pooling's
    assumption that each run sampled its own ensemble: the join says so, naming the run."""
    from arbg.data.datasets import join_datasets

    toy, biased_dir = biased_toy
    trapped = ToyTorsion()
    trapped.spec = toy.spec  # the same system, started in the lower well (theta = -90 deg)
    trapped.positions = toy.positions * np.array([1.0, 1.0, -1.0])
    run_md(trapped, tmp_path / "plain", _config(ns=0.4, bias=None), progress=False)
    plain = _as_dataset(toy, tmp_path / "plain")
    assert np.all(dihedrals(plain.positions, ToyTorsion.phi_indices)[:, 0] < 0)
    with caplog.at_level("WARNING", logger="arbg.data.datasets"):
        joined = join_datasets([plain, _as_dataset(toy, biased_dir)])
    check = joined.metadata["joined_phi_check"][0]
    assert check["observed"] == 0.0 and check["expected"] > 0.05
    assert f"{tmp_path / 'plain'}: 0.0 % of its frames have some phi > 0" in caplog.text


def test_heated_biased_toy_reweights_to_the_target_temperature(tmp_path):
    toy = ToyTorsion()
    out = tmp_path / "heated"
    run_md(toy, out, _config(temperature_k=450.0), progress=False)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["target_temperature_k"] == 300.0 and meta["sampling_temperature_k"] == 450.0
    exact = toy.exact_p_positive()
    p, se, _ = _reweighted_p_positive(out)
    assert abs(p - exact) < 3 * se, (p, se, exact)
    # the heated weight term: -(1/kT_t - 1/kT_s) E on the stored frames
    x = load_md_frames(out)
    e = toy.energies_kj(x)
    v = bias_energies(
        x, np.array(meta["bias"]["settings"]["dihedrals"]), np.load(out / "bias" / "grid.npy")
    )
    kb = BOLTZMANN_KJ_PER_MOL_K
    expect = v / (kb * 450.0) - (1 / (kb * 300.0) - 1 / (kb * 450.0)) * e
    np.testing.assert_allclose(load_md_log_weights(out), expect, rtol=1e-9, atol=1e-9)


def test_stored_bias_energies_equal_the_frozen_force_on_stored_frames(biased_toy):
    toy, out = biased_toy
    meta = json.loads((out / "metadata.json").read_text())
    bias = meta["bias"]
    grid = np.load(out / bias["grid_file"])
    assert list(grid.shape) == bias["build"]["grid_shape"] == [bias["settings"]["grid_points"]]
    assert bias["build"]["steps"] == 100_000 and bias["build"]["n_gaussians"] == 500
    assert bias["build"]["wall_s"] > 0 and grid.max() > 0
    x = load_md_frames(out)
    kT = BOLTZMANN_KJ_PER_MOL_K * 300.0
    stored = np.concatenate([np.load(f) for f in sorted((out / "chunks").glob("bias_*.npy"))])
    recomputed = bias_energies(x, np.array(bias["settings"]["dihedrals"]), grid) / kT
    np.testing.assert_allclose(stored, recomputed, rtol=1e-10, atol=1e-10)
    u = np.concatenate([np.load(f) for f in sorted((out / "chunks").glob("energy_*.npy"))])
    np.testing.assert_allclose(u, toy.energies_kj(x) / kT, rtol=1e-10, atol=1e-10)
    lw = load_md_log_weights(out)
    np.testing.assert_array_equal(lw, np.load(out / "log_weights.npy"))
    np.testing.assert_allclose(lw, recomputed, atol=1e-10)  # T_s = T_t: log w = V/kT
    assert meta["log_weights"]["normalised"] is False


@pytest.mark.parametrize("n_vars", [1, 2])
def test_frozen_force_equals_openmm_metadynamics_force(n_vars):
    import openmm
    from openmm import app

    from arbg.chem.energy import energies_kj, make_context

    rng = np.random.default_rng(n_vars)
    dih = np.array([[0, 1, 2, 3], [1, 2, 3, 4]])[:n_vars]
    n = 30
    grid = rng.normal(size=(n,) * n_vars) * 5.0
    for axis in range(n_vars):  # periodic: the node at +pi equals the node at -pi
        first = np.take(grid, [0], axis=axis)
        idx = [slice(None)] * n_vars
        idx[axis] = slice(-1, None)
        grid[tuple(idx)] = first
    omm = openmm.System()
    for _ in range(5):
        omm.addParticle(1.0)
    variables = [
        app.BiasVariable(openmm.CustomTorsionForce("theta"), -np.pi, np.pi, 0.3, True, n)
        for _ in dih
    ]
    for v, d in zip(variables, dih, strict=True):
        v.force.addTorsion(*(int(i) for i in d), [])
    meta = app.Metadynamics(omm, variables, 300.0, 5.0, 1.0, 100)
    ctx = make_context(omm)
    _restore_grid(meta, grid, ctx)
    x = rng.normal(scale=0.2, size=(50, 5, 3))
    np.testing.assert_allclose(
        bias_energies(x, dih, grid), energies_kj(ctx, x), rtol=1e-10, atol=1e-9
    )
    assert frozen_bias_force(dih, grid, 7).getForceGroup() == 7


def test_build_resume_is_bit_identical(tmp_path):
    toy = ToyTorsion()
    dih = toy.phi_indices
    kw = dict(seed=2, warmup_ps=1.0, segment_steps=4000)
    full = build_bias(
        toy.create_openmm_system(),
        toy.positions,
        dih,
        BiasConfig(build_ns=0.02, deposit_ps=0.2),
        300.0,
        tmp_path / "a.npz",
        **kw,
    )
    # "interrupted" after 0.01 ns, then resumed from the state file to 0.02 ns
    half = build_bias(
        toy.create_openmm_system(),
        toy.positions,
        dih,
        BiasConfig(build_ns=0.01, deposit_ps=0.2),
        300.0,
        tmp_path / "b.npz",
        **kw,
    )
    assert half.steps == 10_000 and half.n_gaussians == 50
    resumed = build_bias(
        toy.create_openmm_system(),
        toy.positions,
        dih,
        BiasConfig(build_ns=0.02, deposit_ps=0.2),
        300.0,
        tmp_path / "b.npz",
        **kw,
    )
    assert resumed.steps == full.steps == 20_000 and resumed.n_gaussians == 100
    np.testing.assert_array_equal(resumed.grid, full.grid)
    np.testing.assert_array_equal(resumed.positions, full.positions)
    np.testing.assert_array_equal(resumed.velocities, full.velocities)
    # a complete build is returned from the file without running anything
    again = build_bias(
        toy.create_openmm_system(),
        toy.positions,
        dih,
        BiasConfig(build_ns=0.02, deposit_ps=0.2),
        300.0,
        tmp_path / "b.npz",
        **kw,
    )
    np.testing.assert_array_equal(again.grid, full.grid)


def test_biased_production_resume_loses_and_duplicates_nothing(tmp_path):
    toy = ToyTorsion()
    cfg = _config(ns=0.01, chunk_frames=20)  # 50 frames
    run_md(toy, tmp_path / "full", cfg, progress=False)
    part = tmp_path / "part"
    run_md(toy, part, _config(ns=0.006, chunk_frames=20), progress=False)  # 30 frames
    # a crash after a partial chunk was completed on disk but before progress.json moved on
    for prefix in ("chunk", "energy", "bias"):
        path = part / "chunks" / f"{prefix}_000001.npy"
        arr = np.load(path)
        np.save(path, np.concatenate([arr, arr[:3] + 1]))
    run_md(toy, part, cfg, progress=False)
    np.testing.assert_array_equal(load_md_frames(part), load_md_frames(tmp_path / "full"))
    np.testing.assert_array_equal(load_md_log_weights(part), load_md_log_weights(tmp_path / "full"))
    assert len(load_md_log_weights(part)) == 50
    run_md(toy, part, cfg, progress=False)  # nothing to do: the record of the build stays
    meta = json.loads((part / "metadata.json").read_text())
    assert meta["bias"]["build"]["steps"] == 100_000 and meta["bias"]["force_group"] == 31
    with pytest.raises(ValueError, match="different 'bias'"):
        run_md(toy, part, _config(ns=0.02, bias=BiasConfig(build_ns=0.2)), progress=False)


def test_frame_log_weights_formula():
    u, v = np.array([10.0, -5.0]), np.array([1.0, 2.0])
    np.testing.assert_allclose(frame_log_weights(u, v, 300.0, 300.0), v)
    # heated: -(1/kT_t - 1/kT_s) E = -(1 - T_t/T_s) u
    np.testing.assert_allclose(frame_log_weights(u, 0 * v, 300.0, 600.0), -0.5 * u)


def test_bias_selection_and_config_errors(aldp, aaa):
    idx, names = select_bias_dihedrals(aldp, BiasConfig(variables="phi-psi"))
    assert names == ["phi1", "psi1"]
    np.testing.assert_array_equal(idx, np.concatenate([aldp.phi_indices, aldp.psi_indices]))
    idx, names = select_bias_dihedrals(aaa, BiasConfig())  # zwitterionic: phi on residues 2, 3
    assert names == ["phi2"]
    with pytest.raises(ValueError, match="no phi"):
        select_bias_dihedrals(aaa, BiasConfig(residues=(0,)))
    with pytest.raises(ValueError, match="no psi"):
        select_bias_dihedrals(aaa, BiasConfig(variables="phi-psi", residues=(2,)))
    from types import SimpleNamespace

    chain = SimpleNamespace(
        phi_indices=np.arange(16).reshape(4, 4),
        psi_indices=np.zeros((0, 4)),
        residue_index=np.repeat(np.arange(4), 4),
    )
    assert select_bias_dihedrals(chain, BiasConfig())[1] == ["phi2"]
    with pytest.raises(ValueError, match="at most 3"):
        select_bias_dihedrals(chain, BiasConfig(residues=(0, 1, 2, 3)))
    with pytest.raises(ValueError, match="bias factor"):
        BiasConfig(bias_factor=1.0)
    with pytest.raises(ValueError, match="unknown bias variables"):
        BiasConfig(variables="chi")
