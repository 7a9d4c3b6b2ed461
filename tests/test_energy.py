import io

import numpy as np
import openmm
import pytest
from openmm import app, unit

from arbg.chem.energy import load_forcefield
from arbg.chem.systems import BOLTZMANN_KJ_PER_MOL_K


def direct_reduced_energy(system, x, topology_pdb=None):
    """Independent path: PDB text -> OpenMM ForceField.createSystem -> Reference platform."""
    pdb = app.PDBFile(io.StringIO(topology_pdb or system.to_pdb_string()))
    ff = app.ForceField(*system.spec.forcefield)
    kw = {}
    if system.spec.nonbonded == "CutoffNonPeriodic":
        kw = dict(
            nonbondedMethod=app.CutoffNonPeriodic,
            nonbondedCutoff=system.spec.cutoff_nm * unit.nanometer,
        )
    else:
        kw = dict(nonbondedMethod=app.NoCutoff)
    omm = ff.createSystem(pdb.topology, constraints=None, **kw)
    ctx = openmm.Context(
        omm, openmm.VerletIntegrator(1.0), openmm.Platform.getPlatformByName("Reference")
    )
    kT = (unit.MOLAR_GAS_CONSTANT_R * system.temperature_k * unit.kelvin).value_in_unit(
        unit.kilojoule_per_mole
    )
    out = []
    for xi in x:
        ctx.setPositions(xi * unit.nanometer)
        e = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        out.append(e / kT)
    return np.array(out)


def test_kT_units(aldp):
    # k_B T at 300 K is 2.494 kJ/mol
    assert aldp.kT == pytest.approx(2.4943, rel=1e-4)
    assert BOLTZMANN_KJ_PER_MOL_K * 310 == pytest.approx(2.5775, rel=1e-4)


@pytest.mark.parametrize("fixture", ["aldp", "aaa"])
def test_energy_matches_direct_openmm(fixture, request):
    s = request.getfixturevalue(fixture)
    rng = np.random.default_rng(0)
    x = s.positions[None] + rng.normal(scale=0.003, size=(5, s.n_atoms, 3))
    u = s.reduced_energy(x.astype(np.float32))
    ref = direct_reduced_energy(s, x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(u, ref, rtol=1e-5)
    # float64 input, single frame input
    assert s.reduced_energy(x[0]).shape == (1,)


def test_nonfinite_energy_is_inf(aldp):
    x = np.repeat(aldp.positions[None], 3, axis=0)
    x[1] = 0.0  # every atom on one point
    x[2, 0] = np.nan
    u = aldp.reduced_energy(x)
    assert np.isfinite(u[0]) and np.isinf(u[1]) and u[1] > 0 and np.isinf(u[2])


def test_dask_workers_equal_serial(aldp, monkeypatch):
    """Chunks on a LocalCluster of 2 workers (loopback) give the in-process energies exactly."""
    import arbg.chem.energy as E
    from arbg.cluster import ClusterConfig, open_engine, use_engine

    rng = np.random.default_rng(2)
    x = aldp.positions[None] + rng.normal(scale=0.003, size=(100, aldp.n_atoms, 3))
    x[70] = np.nan  # a bad conformation stays +inf on a worker too
    serial = aldp.reduced_energy(x)
    monkeypatch.setattr(E, "MIN_PARALLEL_S", 0.0)  # distribute even this small batch
    monkeypatch.setattr(E, "TARGET_TASK_S", 1e-6)  # many small tasks
    with open_engine(ClusterConfig(workers=2)) as engine:
        assert engine.distributed and engine.n_workers == 2
        assert engine.client.scheduler.address.startswith("tcp://127.0.0.1:")
        par = E.OpenMMEnergy(aldp.create_openmm_system(), aldp.kT)
        with use_engine(engine):
            u = par(x)
            u2 = par(x[:60])  # Contexts are cached on the workers: same answers again
        assert par.n_tasks >= 2 and par.sec_per_eval > 0
        assert 0 < par.task_cpu_seconds <= par.task_seconds * 1.05 + 0.01
        # many tasks over two calls, yet each worker built the system's Context once
        assert par.n_contexts_built == 2 < par.n_tasks
        # one Context per worker and system: the task ran where the system's XML was cached
        client = engine.client
        workers = list(client.scheduler_info()["workers"])
        keys = [client.submit(_cached_keys, workers=[w], pure=False).result() for w in workers]
        assert keys == [[("openmm-energy", par.key)]] * 2
    np.testing.assert_array_equal(u, serial)
    np.testing.assert_array_equal(u2, serial[:60])
    assert np.isinf(u[70]) and par.n_nonfinite == 1


def test_unaligned_and_float32_batches_give_the_same_energies(aldp):
    """Dask hands tasks unaligned arrays: copied once, not evaluated differently."""
    from arbg.chem.energy import energies_kj, make_context

    rng = np.random.default_rng(3)
    x = aldp.positions[None] + rng.normal(scale=0.003, size=(6, aldp.n_atoms, 3))
    raw = np.zeros(x.nbytes + 1, dtype=np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=np.float64, count=x.size, offset=1)
    unaligned = unaligned.reshape(x.shape)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    context = make_context(aldp.create_openmm_system())
    ref = np.array([energies_kj(context, xi[None])[0] for xi in x])
    np.testing.assert_array_equal(energies_kj(context, unaligned), ref)
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(
        energies_kj(context, x32), energies_kj(context, x32.astype(float))
    )
    # force groups as a set (every group of the system here): the same total
    np.testing.assert_array_equal(energies_kj(context, x, groups=set(range(32))), ref)


def _cached_keys():
    from arbg.cluster import worker_cache

    return list(worker_cache())


def test_plan_tasks_sizes_chunks():
    from arbg.chem.energy import TARGET_TASK_S, plan_tasks

    assert plan_tasks(100, 1e-5, 2) == 0  # 1 ms of work: not worth a round trip
    assert plan_tasks(100_000, 3e-5, 2) == 2 * round(3.0 / 2 / TARGET_TASK_S)  # ~0.25 s tasks
    assert plan_tasks(100_000, 3e-5, 2) % 2 == 0
    assert plan_tasks(10, 1.0, 4) == 10 and plan_tasks(3, 1.0, 4) == 3  # no empty chunk


def test_cpu_context_runs_one_thread_whatever_the_environment(aldp, monkeypatch):
    """A worker per core needs one OpenMM thread each: OPENMM_CPU_THREADS does not override."""
    from arbg.chem.energy import make_context

    monkeypatch.setenv("ARBG_OPENMM_PLATFORM", "CPU")
    monkeypatch.setenv("OPENMM_CPU_THREADS", "2")
    context = make_context(aldp.create_openmm_system())
    platform = context.getPlatform()
    assert platform.getName() == "CPU"
    assert platform.getPropertyValue(context, "Threads") == "1"


def test_assign_workers_round_robin_over_threads():
    from arbg.chem.energy import assign_workers

    two = {"tcp://b:2": 1, "tcp://a:1": 1}
    assert assign_workers(4, two) == ["tcp://a:1", "tcp://b:2"] * 2  # equal chunks, equal shares
    assert assign_workers(3, {"w1": 2, "w2": 1}) == ["w1", "w1", "w2"]  # by threads
    assert assign_workers(6, {"w1": 2, "w2": 1}).count("w1") == 4
    assert assign_workers(2, {}) == [None, None]  # no worker yet: the scheduler decides


def test_shape_mismatch(aldp):
    with pytest.raises(ValueError, match=r"\[B, 22, 3\]"):
        aldp.reduced_energy(np.zeros((2, 21, 3)))


@pytest.mark.parametrize("name", ["ace-aaa-nme", "aaa"])
def test_prefix_energy_matches_capped_fragment(name):
    from arbg.chem.energy import fragment_topology
    from arbg.chem.systems import build_system

    s = build_system(name)
    for i, (blk, m) in enumerate(zip(s.boundary_blocks, s.boundaries, strict=False)):
        x = s.positions[None, :m]
        u = s.prefix_energy(i, x)
        assert np.isfinite(u).all()
        # direct: the fragment with OXT placed by hand at 0.125 nm along C -> N(next)
        c_idx = s.atom_index(blk, "C", s.block_resnames[blk])
        v = x[0, -1] - x[0, c_idx]
        oxt = x[0, c_idx] + 0.125 * v / np.linalg.norm(v)
        frag = np.concatenate([x[0, :-1], oxt[None]])
        top = fragment_topology(s, blk)
        buf = io.StringIO()
        app.PDBFile.writeFile(top, frag * 10.0, buf)
        ff = load_forcefield(s.spec.forcefield)
        assert ff is not None
        ref = direct_reduced_energy(s, frag[None], topology_pdb=buf.getvalue())
        np.testing.assert_allclose(u, ref, rtol=1e-5)


def test_energies_count_openmm_failures_and_let_bugs_through(caplog):
    """Issue 27: any exception became u = +inf in silence. An OpenMM error of one conformation
    gives +inf and a warning with its count; any other exception is a bug and propagates."""
    import openmm

    from arbg.chem.energy import energies_kj

    class Context:
        def __init__(self, error):
            self.error, self.i = error, 0

        def setPositions(self, x):  # noqa: N802 (OpenMM's name)
            self.i += 1
            if self.i == 2:
                raise self.error

        def getState(self, **kw):  # noqa: N802
            class State:
                def getPotentialEnergy(self):  # noqa: N802
                    class Q:
                        _value = 1.5

                    return Q()

            return State()

    x = np.zeros((3, 4, 3))
    with caplog.at_level("WARNING"):
        e = energies_kj(Context(openmm.OpenMMException("Particle coordinate is NaN")), x)
    assert e.tolist() == [1.5, np.inf, 1.5]
    assert "1 of 3 conformations raised an OpenMM error" in caplog.text
    with pytest.raises(TypeError, match="a bug"):
        energies_kj(Context(TypeError("a bug")), x)
