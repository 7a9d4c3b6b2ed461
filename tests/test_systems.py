import io

import mdtraj
import numpy as np
import pytest

from arbg.chem import residues as R
from arbg.chem.systems import build_system, make_spec, system_from_pdb


def test_aldp_atoms_and_blocks(aldp):
    assert aldp.n_atoms == 22
    assert aldp.n_residues == 1 and aldp.residue_blocks == [(0, 22)]
    # ACE is ordered with the first block, then the residue's N first, NME last
    assert aldp.atom_names[:6] == list(R.ACE_ORDER)
    assert aldp.atom_names[6] == "N"
    assert aldp.atom_names[-6:] == list(R.NME_ORDER)
    assert aldp.boundaries == []  # no interior residue boundary


@pytest.mark.parametrize("name,n_atoms", [("aaa", 33), ("ace-aaa-nme", 42)])
def test_canonical_order_n_first(name, n_atoms):
    s = build_system(name)
    assert s.n_atoms == n_atoms
    for b, (start, stop) in enumerate(s.residue_blocks):
        names = s.atom_names[start:stop]
        first = 6 if (b == 0 and s.spec.capped) else 0
        assert names[first] == "N"
        # backbone before side chain
        assert names.index("C") < names.index("CB")
    # boundary = end of block + the next residue's N
    for blk, m in zip(s.boundary_blocks, s.boundaries, strict=False):
        assert m == s.residue_blocks[blk][1] + 1
        assert s.atom_names[m - 1] == "N"


def test_permutation_round_trip(aaa):
    rng = np.random.default_rng(0)
    x_canon = rng.normal(size=(3, aaa.n_atoms, 3))
    x_orig = x_canon[:, aaa.to_original]
    np.testing.assert_array_equal(x_orig[:, aaa.to_canonical], x_canon)
    # the built topology in build order, permuted, has canonical names
    assert sorted(aaa.to_canonical.tolist()) == list(range(aaa.n_atoms))


def test_descriptors(aaa):
    assert aaa.atom_type_id.shape == (aaa.n_atoms,)
    assert (aaa.atom_type_id > 0).all() and (aaa.residue_type_id > 0).all()
    assert set(aaa.residue_index.tolist()) == {0, 1, 2}
    assert aaa.atom_names[:4] == ["N", "H1", "H2", "H3"]  # zwitterion N-terminus
    assert "OXT" in aaa.atom_names[aaa.residue_blocks[2][0] :]


@pytest.mark.parametrize("name", ["aldp", "ace-aaa-nme", "aaa"])
def test_dihedral_indices_match_mdtraj(name):
    s = build_system(name)
    rng = np.random.default_rng(1)
    x = s.positions[None] + rng.normal(scale=0.01, size=(4, s.n_atoms, 3))
    traj = mdtraj.Trajectory(x, s.topology)
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    _, omega = mdtraj.compute_omega(traj)
    np.testing.assert_allclose(mdtraj.compute_dihedrals(traj, s.phi_indices), phi, atol=1e-5)
    np.testing.assert_allclose(mdtraj.compute_dihedrals(traj, s.psi_indices), psi, atol=1e-5)
    # mdtraj's omega leaves out the caps (CH3 instead of CA); compare the interior ones
    names = np.array(s.atom_names)
    interior = [row for row in s.omega_indices if names[row[0]] == "CA" and names[row[3]] == "CA"]
    got = mdtraj.compute_dihedrals(traj, np.array(interior).reshape(-1, 4))
    np.testing.assert_allclose(got, omega, atol=1e-5)
    assert len(s.omega_indices) == len(interior) + 2 * s.spec.capped


def test_histidine_fixed_by_sequence():
    a = build_system(make_spec(sequence="AHA"), minimize=False)
    b = build_system(make_spec(sequence="AHA"), minimize=False)
    assert a.atom_names == b.atom_names
    his = a.atom_names[a.residue_blocks[1][0] : a.residue_blocks[1][1]]
    assert "HE2" in his and "HD1" not in his  # HIE
    c = build_system(make_spec(sequence="AHA", histidine="HIP"), minimize=False)
    assert c.n_atoms == a.n_atoms + 1


def test_all_twenty_residues_build():
    s = build_system(make_spec(sequence="ACDEFGHIKLMNPQRSTVWY"), minimize=False)
    assert s.n_residues == 20
    assert np.isfinite(s.reduced_energy(s.positions)).all()


def test_pdb_round_trip(tmp_path, aldp):
    pdb = tmp_path / "in.pdb"
    aldp.save_pdb(pdb)
    s = system_from_pdb(
        pdb, forcefield=aldp.spec.forcefield, nonbonded="NoCutoff", temperature_k=300.0
    )
    assert s.atom_names == aldp.atom_names
    np.testing.assert_allclose(s.positions, aldp.positions, atol=1e-3)


@pytest.mark.parametrize(
    "seq,msg",
    [("AXA", "unknown residue letter"), ("", "empty sequence"), ("A1", "unknown residue letter")],
)
def test_bad_sequences(seq, msg):
    with pytest.raises(ValueError, match=msg):
        make_spec(sequence=seq)


def test_unknown_preset_and_forcefield():
    with pytest.raises(ValueError, match="unknown system"):
        make_spec("not-a-peptide")
    with pytest.raises(FileNotFoundError, match="unknown force-field file 'nope.xml'"):
        build_system(make_spec(sequence="AA", forcefield=("nope.xml",)))


def test_pdb_errors(tmp_path, aldp):
    text = aldp.to_pdb_string()
    # missing heavy atom: drop CB
    lines = [
        ln for ln in text.splitlines() if not (ln.startswith("ATOM") and ln[12:16].strip() == "CB")
    ]
    p = tmp_path / "missing.pdb"
    p.write_text("\n".join(lines))
    with pytest.raises(ValueError, match="missing heavy atom.*CB"):
        system_from_pdb(p)
    # two chains
    two = []
    for ln in text.splitlines():
        if ln.startswith(("ATOM", "HETATM")) and ln[17:20] == "NME":
            ln = ln[:21] + "B" + ln[22:]
        two.append(ln)
    p2 = tmp_path / "two.pdb"
    p2.write_text("\n".join(two))
    with pytest.raises(ValueError, match="2 chains"):
        system_from_pdb(p2)
    with pytest.raises(FileNotFoundError):
        system_from_pdb(tmp_path / "absent.pdb")


def test_spec_round_trip(aaa):
    from arbg.chem.systems import SystemSpec

    assert SystemSpec.from_dict(aaa.spec.to_dict()) == aaa.spec
    assert io.StringIO(aaa.to_pdb_string()).read().count("ATOM") == aaa.n_atoms


def test_pdb_without_hydrogens_gets_them(tmp_path, aaa):
    heavy = [
        ln
        for ln in aaa.to_pdb_string().splitlines()
        if not (ln.startswith(("ATOM", "HETATM")) and ln[76:78].strip() == "H")
        and not ln.startswith("CONECT")
    ]
    p = tmp_path / "heavy.pdb"
    p.write_text("\n".join(heavy) + "\n")
    s = system_from_pdb(p)
    assert s.n_atoms == aaa.n_atoms and sorted(s.atom_names) == sorted(aaa.atom_names)


def test_systems_implement_the_target_protocol(aldp):
    from arbg.sampling.targets import Target

    assert isinstance(aldp, Target)
