"""arbg.chem.geometry against mdtraj's reference implementations."""

import mdtraj
import numpy as np
import pytest

from arbg.chem.geometry import angles, dihedrals, distances


@pytest.fixture(scope="module")
def traj():
    rng = np.random.default_rng(0)
    top = mdtraj.Topology()
    chain = top.add_chain()
    res = top.add_residue("GLY", chain)
    for i in range(7):
        top.add_atom(f"C{i}", mdtraj.element.carbon, res)
    return mdtraj.Trajectory(rng.normal(size=(11, 7, 3)).astype(np.float32), top)


def test_match_mdtraj(traj):
    x = traj.xyz.astype(np.float64)
    rng = np.random.default_rng(1)
    quads = np.array([rng.choice(7, size=4, replace=False) for _ in range(9)])
    np.testing.assert_allclose(
        distances(x, quads[:, :2]), mdtraj.compute_distances(traj, quads[:, :2]), atol=1e-5
    )
    np.testing.assert_allclose(
        angles(x, quads[:, :3]), mdtraj.compute_angles(traj, quads[:, :3]), atol=1e-4
    )
    np.testing.assert_allclose(
        dihedrals(x, quads), mdtraj.compute_dihedrals(traj, quads), atol=1e-4
    )


def test_checks_shapes_and_indices():
    x = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="shape"):
        distances(np.zeros((4, 3)), [[0, 1]])
    with pytest.raises(ValueError, match=r"dihedral indices must lie in \[0, 4\)"):
        dihedrals(x, [[0, 1, 2, 4]])
    assert dihedrals(x, np.zeros((0, 4), int)).shape == (2, 0)
