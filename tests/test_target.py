"""Tests for arbg.sampling.targets: chirality convention, the harmonic-chain toy target and its
analytic proposal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from toys import (
    ChainProposal,
    HarmonicChainTarget,
    bond_angles,
    bond_lengths,
    dihedrals,
    random_rotations,
)

from arbg.sampling.sampler import chirality_signs, wrong_chirality
from arbg.sampling.targets import Target

# L-alanine (N, CA, C, CB), Angstrom, from pdbfixer's ALA template
L_ALA = (
    np.array(
        [
            [-1.444, -0.596, 0.968],
            [-0.194, -0.546, 0.198],
            [0.716, 0.684, 0.478],
            [-0.584, -0.626, -1.282],
        ]
    )
    / 10.0
)


def test_chirality_l_alanine_is_positive_and_mirror_negative():
    x = L_ALA[None]
    idx = np.array([[0, 1, 2, 3]])
    assert chirality_signs(x, idx).tolist() == [[1]]
    assert not wrong_chirality(x, idx)[0]
    assert chirality_signs(-x, idx).tolist() == [[-1]]  # mirror image = D
    assert wrong_chirality(-x, idx)[0]
    # rotation / translation do not change handedness
    rot = random_rotations(4, np.random.default_rng(0))
    xr = np.einsum("bij,nj->bni", rot, L_ALA) + 3.0
    assert np.all(chirality_signs(xr, idx) == 1)
    # glycine rows (negative index) and empty index arrays
    gly = np.array([[0, 1, 2, -1], [0, 1, 2, 3]])
    assert chirality_signs(x, gly).tolist() == [[0, 1]]
    empty = np.zeros((0, 4), dtype=int)
    assert chirality_signs(x, empty).shape == (1, 0) and not wrong_chirality(x, empty)[0]


def test_chirality_on_pdbfixer_templates():
    """Every chiral residue template that pdbfixer ships (L-amino acids, an independent source)
    has the L sign; a mirrored template has the D sign."""
    import mdtraj
    import pdbfixer

    from arbg.chem.residues import ONE_TO_THREE

    folder = Path(pdbfixer.__file__).parent / "templates"
    n = 0
    for three in sorted(set(ONE_TO_THREE.values()) - {"GLY"}):
        traj = mdtraj.load(str(folder / f"{three}.pdb"))
        names = {a.name: a.index for a in traj.topology.atoms}
        row = np.array([[names["N"], names["CA"], names["C"], names["CB"]]])
        x = traj.xyz[:1].astype(np.float64)
        assert chirality_signs(x, row).tolist() == [[1]], three
        assert chirality_signs(-x, row).tolist() == [[-1]], three
        n += 1
    assert n == 19


def test_geometry_roundtrip_nerf():
    target = HarmonicChainTarget(n_atoms=6)
    ic = target.sample_internal(50, np.random.default_rng(1))
    x = target.build(ic["bonds"], ic["angles"], ic["torsions"])
    np.testing.assert_allclose(bond_lengths(x), ic["bonds"], atol=1e-12)
    np.testing.assert_allclose(bond_angles(x), ic["angles"], atol=1e-10)
    np.testing.assert_allclose(dihedrals(x), ic["torsions"], atol=1e-10)


def test_dihedral_matches_mdtraj():
    md = pytest.importorskip("mdtraj")
    x = np.random.default_rng(2).normal(size=(5, 4, 3))
    top = md.Topology()
    chain = top.add_chain()
    res = top.add_residue("UNK", chain)
    for i in range(4):
        top.add_atom(f"C{i}", md.element.carbon, res)
    ref = md.compute_dihedrals(md.Trajectory(x.astype(np.float32), top), [[0, 1, 2, 3]])
    np.testing.assert_allclose(dihedrals(x)[:, 0], ref[:, 0], atol=1e-4)


def test_harmonic_chain_protocol_and_invariance():
    target = HarmonicChainTarget()
    assert isinstance(target, Target)
    assert target.boundaries == [2, 3, 4]
    assert target.chirality_atoms.shape == (0, 4)
    rng = np.random.default_rng(3)
    x = target.sample_exact(64, rng)
    assert x.shape == (64, 6, 3)
    np.testing.assert_allclose(x.mean(axis=1), 0.0, atol=1e-12)  # centred
    u = target.reduced_energy(x)
    assert u.dtype == np.float64 and np.all(np.isfinite(u))
    xr = np.einsum("bij,bnj->bni", random_rotations(64, rng), x) + rng.normal(size=(64, 1, 3))
    np.testing.assert_allclose(target.reduced_energy(xr), u, atol=1e-9)
    # prefix energy = energy of the sub-chain; the full energy adds the remaining terms
    for i, b in enumerate(target.boundaries):
        u_pref = target.prefix_energy(i, x[:, :b])
        np.testing.assert_allclose(u_pref, target._chain_energy(x[:, :b]))
    bad = x.copy()
    bad[0, 2, 0] = np.nan
    assert np.isinf(target.reduced_energy(bad)[0]) and np.isfinite(target.reduced_energy(bad)[1])
    with pytest.raises(ValueError):
        target.prefix_energy(0, x[:, :3])


def test_exact_samples_match_quadrature():
    target = HarmonicChainTarget()
    exact = target.exact_observables()
    assert 0.1 < exact["p_well_a"] < 0.35  # non-trivial well population
    x = target.sample_exact(40000, np.random.default_rng(4))
    obs = target.sample_observables(x)
    for key in ("p_well_a", "mean_energy", "mean_bond", "mean_torsion_energy"):
        v = obs[key]
        se = v.std() / np.sqrt(v.size)
        assert abs(v.mean() - exact[key]) < 3.0 * se, (key, v.mean(), exact[key], se)


def test_chain_proposal_interface():
    target = HarmonicChainTarget(n_atoms=5)
    prop = ChainProposal(target, rng=np.random.default_rng(6))
    state = prop.start(10)
    lq1 = prop.extend(state, 6)
    assert lq1.shape == (10,) and prop.coords(state).shape == (10, 6)
    lq2 = prop.extend(state, 6)
    assert prop.coords(state).shape == (10, 12)
    with pytest.raises(ValueError):
        prop.extend(state, 3)  # beyond 3 (n - 1)
    prop.reorder(state, np.zeros(10, dtype=int))
    x = prop.finish(state)
    assert x.shape == (10, 5, 3) and np.all(x == x[0])
    assert np.all(np.isfinite(lq1 + lq2))
