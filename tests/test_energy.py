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


def test_parallel_equals_serial(aldp):
    from arbg.chem.energy import OpenMMEnergy

    rng = np.random.default_rng(2)
    x = aldp.positions[None] + rng.normal(scale=0.003, size=(16, aldp.n_atoms, 3))
    par = OpenMMEnergy(aldp.create_openmm_system(), aldp.kT, n_workers=2)
    try:
        np.testing.assert_allclose(par(x), aldp.reduced_energy(x), rtol=1e-10)
    finally:
        par.close()


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
