"""Every residue letter at the first, a middle and the last position, capped and uncapped: arbg's
phi, psi and chirality atoms are those mdtraj finds on the same topology, and no index is
negative (issue 27: histidine's variant name HIE hid its backbone, giving -1 indices)."""

from __future__ import annotations

import mdtraj
import numpy as np
import pytest

from arbg.chem.residues import ONE_TO_THREE
from arbg.chem.systems import build_system, make_spec
from arbg.sampling.sampler import chirality_signs

LETTERS = sorted(ONE_TO_THREE)


def _sequences() -> list[str]:
    """Each letter at the first, a middle and the last position of some sequence."""
    return ["".join(LETTERS), "".join(reversed(LETTERS))] + [f"{x}G{x}" for x in LETTERS]


def _mdtraj_rows(system, kind: str) -> set[tuple[int, ...]]:
    traj = mdtraj.Trajectory(system.positions[None].astype(np.float32), system.topology)
    idx, _ = getattr(mdtraj, f"compute_{kind}")(traj)
    return {tuple(int(i) for i in row) for row in idx}


@pytest.mark.parametrize("capped", [True, False], ids=["capped", "zwitterionic"])
@pytest.mark.parametrize("sequence", _sequences())
def test_backbone_and_chirality_atoms_match_mdtraj(sequence, capped):
    system = build_system(make_spec(sequence=sequence, capped=capped), minimize=False)
    for kind, ours in (("phi", system.phi_indices), ("psi", system.psi_indices)):
        assert (np.asarray(ours) >= 0).all(), (kind, ours)
        assert {tuple(int(i) for i in r) for r in ours} == _mdtraj_rows(system, kind), kind
    top = system.topology
    expect = []
    for res in top.residues:
        names = {a.name: a.index for a in res.atoms}
        if res.name in ("ACE", "NME") or "CB" not in names:
            continue
        expect.append((names["N"], names["CA"], names["C"], names["CB"]))
    chir = np.asarray(system.chirality_atoms)
    assert (chir >= 0).all() and [tuple(int(i) for i in r) for r in chir] == expect
    n_chiral = sum(x != "G" for x in sequence)
    assert len(chir) == n_chiral
    # the built peptide is all-L: every stereocentre has the L sign
    assert (chirality_signs(system.positions[None], chir) == 1).all()
    n, ca, c = system.gauge_atoms
    assert min(n, ca, c) >= 0
