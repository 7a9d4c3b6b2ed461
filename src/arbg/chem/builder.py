"""Building peptides: ideal-geometry backbones, completion with pdbfixer and OpenMM's Modeller,
PDB input checks, and the canonical atom order (see :mod:`arbg.chem.residues`).

Used by :mod:`arbg.chem.systems`; OpenMM objects stay inside this module and ``systems``/``energy``.
A ``spec`` argument is a :class:`arbg.chem.systems.SystemSpec` (not imported: ``systems`` builds
through this module).
"""

from __future__ import annotations

import io
import threading

import numpy as np

from arbg.chem import residues as R
from arbg.chem.energy import load_forcefield

# ----------------------------------------------------------------------------- geometry helpers


def place_atom(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle_deg: float, torsion_deg: float
) -> np.ndarray:
    """NeRF: position of atom d with |cd| = bond, angle bcd, dihedral abcd (nm, degrees)."""
    angle, torsion = np.radians(angle_deg), np.radians(torsion_deg)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d = np.array(
        [
            -bond * np.cos(angle),
            bond * np.sin(angle) * np.cos(torsion),
            bond * np.sin(angle) * np.sin(torsion),
        ]
    )
    return c + d[0] * bc + d[1] * m + d[2] * n


def backbone_pdb(resnames: list[str]) -> str:
    """PDB text with backbone heavy atoms of an extended chain (caps included), ideal geometry."""
    n_res = len(resnames)
    phi, psi, omega = -140.0, 135.0, 180.0
    # Place N, CA, C for every residue (for caps: ACE = (-, CH3, C), NME = (N, CH3, -)).
    xyz: list[np.ndarray] = [np.array([0.0, 0.0, 0.0]), np.array([0.1458, 0.0, 0.0])]
    xyz.append(place_atom(np.array([0.0, 1.0, 0.0]), xyz[0], xyz[1], 0.1525, 111.2, -60.0))
    for _ in range(1, n_res):
        n, ca, c = xyz[-3], xyz[-2], xyz[-1]
        n1 = place_atom(n, ca, c, 0.1329, 116.2, psi)
        ca1 = place_atom(ca, c, n1, 0.1458, 121.7, omega)
        c1 = place_atom(c, n1, ca1, 0.1525, 111.2, phi)
        xyz += [n1, ca1, c1]
    lines = []
    serial = 1

    def atom(name: str, resname: str, resid: int, p: np.ndarray) -> None:
        nonlocal serial
        x, y, z = p * 10.0  # nm -> Angstrom for the PDB format
        lines.append(
            f"ATOM  {serial:5d} {name:<4s} {resname:3s} A{resid:4d}    "
            f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           {name[0]:>1s}"
        )
        serial += 1

    for i, res in enumerate(resnames):
        n, ca, c = xyz[3 * i : 3 * i + 3]
        if res == "ACE":
            atom("CH3", res, i + 1, ca)
            atom("C", res, i + 1, c)
        elif res == "NME":
            atom("N", res, i + 1, n)
            atom("CH3", res, i + 1, ca)
            continue
        else:
            atom("N", res, i + 1, n)
            atom("CA", res, i + 1, ca)
            atom("C", res, i + 1, c)
        if i + 1 < n_res:
            o = place_atom(xyz[3 * i + 3], ca, c, 0.1231, 120.5, 180.0)
        else:
            o = place_atom(n, ca, c, 0.1231, 120.5, psi + 180.0)
        atom("O", res, i + 1, o)
    lines.append("END")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- PDB input


def pdb_residues(text: str) -> list[tuple[str, str, list[str]]]:
    """(chain, resname, [atom names]) for each residue of the first model, in file order."""
    out: list[tuple[str, str, list[str]]] = []
    key = None
    for line in text.splitlines():
        if line.startswith("ENDMDL"):
            break
        if not line.startswith(("ATOM", "HETATM")):
            continue
        chain, resname, resid = line[21], line[17:20].strip(), line[22:27]
        if (chain, resid) != key:
            key = (chain, resid)
            out.append((chain, resname, []))
        out[-1][2].append(line[12:16].strip())
    return out


def pdb_has_caps(text: str) -> bool:
    names = [r[1] for r in pdb_residues(text)]
    return bool(names) and names[0] == "ACE" and names[-1] == "NME"


def sequence_from_pdb_text(text: str, source: str) -> str:
    res = pdb_residues(text)
    if not res:
        raise ValueError(f"{source}: no ATOM records found")
    res = [r for r in res if r[1] not in ("HOH", "WAT", "NA", "CL", "SOL")]
    chains = sorted({r[0] for r in res})
    if len(chains) > 1:
        raise ValueError(
            f"{source}: found {len(chains)} chains ({', '.join(chains)}); arbg "
            "models a single peptide chain: extract one chain first"
        )
    core = res
    if core and core[0][1] == "ACE":
        core = core[1:]
    if core and core[-1][1] == "NME":
        core = core[:-1]
    seq = []
    for i, (_, name, atoms) in enumerate(core):
        std = R.VARIANT_TO_STANDARD.get(name, name)
        if std not in R.THREE_TO_ONE:
            raise ValueError(
                f"{source}: residue {i + 1} {name!r} is not one of the 20 standard "
                "amino acids (caps ACE/NME allowed only at the chain ends)"
            )
        expected = {"N", "CA", "C", "O"} | set(
            R.HEAVY_SIDE_CHAIN.get(name, R.HEAVY_SIDE_CHAIN.get(std if std != "HIS" else "HIE", ()))
        )
        missing = sorted(expected - set(atoms))
        if missing:
            raise ValueError(
                f"{source}: residue {i + 1} {name} is missing heavy atom(s) "
                f"{', '.join(missing)}; complete the structure (e.g. with pdbfixer)"
            )
        seq.append(R.THREE_TO_ONE[std])
    return "".join(seq)


# ----------------------------------------------------------------------------- building


def _variant(resname3: str, spec) -> str:
    return spec.histidine if resname3 == "HIS" else resname3


def build_openmm_model(spec):
    """OpenMM (topology, positions[nm]) with all hydrogens, in build order.

    Reproducible: ``Modeller.addHydrogens`` places new atoms at random positions (Python's
    ``random``), so the build gives OpenMM's modeller a private generator seeded with 0 (the
    stream ``random.seed(0)`` gives, but one that other threads, e.g. a Dask worker's event
    loop, cannot draw from in the middle of a build), and the hydrogens are relaxed on the
    deterministic Reference platform, as are pdbfixer's new heavy atoms (with a fixed integrator
    seed): a sequence gives the same atoms and positions on every machine, whatever its
    platforms and thread counts. Builds are serialised by a lock.
    """
    import random

    from openmm.app import modeller

    with _BUILD_LOCK:
        shared = modeller.random
        modeller.random = random.Random(0)
        try:
            return _build_openmm_model(spec)
        finally:
            modeller.random = shared


_BUILD_LOCK = threading.Lock()


def _reference_platform():
    import openmm

    return openmm.Platform.getPlatformByName("Reference")


def _build_openmm_model(spec):
    from openmm import app
    from pdbfixer import PDBFixer

    ff = load_forcefield(spec.forcefield)
    if spec.pdb_text is not None:
        pdb = app.PDBFile(io.StringIO(spec.pdb_text))
        topology, positions = pdb.topology, pdb.positions
        modeller = app.Modeller(topology, positions)
        modeller.delete([r for r in topology.residues() if r.name in ("HOH", "WAT")])
        has_h = any(
            a.element is not None and a.element.symbol == "H" for a in modeller.topology.atoms()
        )
        if not has_h:
            modeller.addHydrogens(
                ff, variants=_variants(modeller.topology, spec), platform=_reference_platform()
            )
        _normalise_cap_names(modeller.topology)
        return modeller.topology, modeller.positions
    seq3 = [R.ONE_TO_THREE[c] for c in spec.sequence]
    resnames = (["ACE"] if spec.capped else []) + seq3 + (["NME"] if spec.capped else [])
    # relaxed on Reference too: the default platform (CPU, CUDA) depends on threads and hardware
    fixer = PDBFixer(pdbfile=io.StringIO(backbone_pdb(resnames)), platform=_reference_platform())
    fixer.findMissingResidues()
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    # a fixed seed for the clash-relief dynamics (OpenMM's seed 0 means "a new one every time")
    fixer.addMissingAtoms(seed=1)
    modeller = app.Modeller(fixer.topology, fixer.positions)
    modeller.addHydrogens(
        ff, variants=_variants(modeller.topology, spec), platform=_reference_platform()
    )
    _normalise_cap_names(modeller.topology)
    return modeller.topology, modeller.positions


_CAP_RENAMES = {
    "ACE": {"H1": "HH31", "H2": "HH32", "H3": "HH33", "C1": "CH3", "CA": "CH3"},
    "NME": {"C": "CH3", "CA": "CH3", "H1": "HH31", "H2": "HH32", "H3": "HH33", "HN": "H"},
}


def _normalise_cap_names(topology) -> None:
    """Use the Amber template names for cap and N-terminal atoms (Modeller and PDB files
    vary): ACE/NME methyl hydrogens HH31-HH33, and H1 H2 H3 on a charged N-terminus."""
    for res in topology.residues():
        renames = _CAP_RENAMES.get(res.name)
        if renames:
            for a in res.atoms():
                a.name = renames.get(a.name, a.name)
        names = {a.name for a in res.atoms()}
        if {"H", "H2", "H3"} <= names:
            for a in res.atoms():
                if a.name == "H":
                    a.name = "H1"


def _variants(topology, spec) -> list[str | None]:
    out: list[str | None] = []
    for res in topology.residues():
        std = R.VARIANT_TO_STANDARD.get(res.name, res.name)
        if res.name in R.VARIANT_TO_STANDARD:
            out.append(res.name)  # a user's explicit variant in a PDB
        elif std == "HIS":
            out.append(spec.histidine)
        elif std in ("ASP", "GLU", "LYS", "CYS"):
            out.append(std)
        else:
            out.append(None)
    return out


def canonical_order(topology, spec) -> tuple[np.ndarray, list[tuple[int, int]], list[str]]:
    """Permutation build-order -> canonical, residue blocks, block residue names."""
    residues = list(topology.residues())
    if residues and residues[0].name == "ACE" and not spec.capped:
        raise ValueError("structure has an ACE cap but the system is not marked capped")
    order: list[int] = []
    blocks: list[tuple[int, int]] = []
    names: list[str] = []
    n_std = len(spec.sequence)
    std_residues = [r for r in residues if r.name not in ("ACE", "NME")]
    if len(std_residues) != n_std:
        raise ValueError(
            f"structure has {len(std_residues)} standard residues, sequence "
            f"{spec.sequence!r} has {n_std}"
        )
    ace = residues[0] if residues[0].name == "ACE" else None
    nme = residues[-1] if residues[-1].name == "NME" else None
    for b, res in enumerate(std_residues):
        start = len(order)
        pieces = []
        if b == 0 and ace is not None:
            pieces.append(("ACE", ace))
        std3 = R.VARIANT_TO_STANDARD.get(res.name, res.name)
        resname = res.name if res.name in R.VARIANT_TO_STANDARD else _variant(std3, spec)
        pieces.append((resname, res))
        if b == n_std - 1 and nme is not None:
            pieces.append(("NME", nme))
        for tname, r in pieces:
            by_name = {a.name: a.index for a in r.atoms()}
            wanted = R.residue_atom_order(tname)
            extra = sorted(set(by_name) - set(wanted))
            if extra:
                raise ValueError(
                    f"residue {b + 1} {r.name}: unexpected atom(s) {', '.join(extra)} for {tname}"
                )
            missing_heavy = sorted(
                a for a in wanted if not a.startswith("H") and a != "OXT" and a not in by_name
            )
            if missing_heavy:
                raise ValueError(
                    f"residue {b + 1} {r.name} is missing heavy atom(s) {', '.join(missing_heavy)}"
                )
            order += [by_name[a] for a in wanted if a in by_name]
        blocks.append((start, len(order)))
        names.append(resname)
    n_atoms = topology.getNumAtoms()
    if len(order) != n_atoms:
        raise ValueError(f"could not place {n_atoms - len(order)} atom(s) in canonical order")
    return np.array(order, dtype=np.int64), blocks, names


def reorder_topology(topology, order: np.ndarray):
    """A new openmm Topology with atoms in `order` (residues kept, in chain order)."""
    from openmm import app

    atoms = list(topology.atoms())
    new = app.Topology()
    chain = new.addChain("A")
    res_map: dict[int, object] = {}
    new_atoms = {}
    for old_idx in order:
        a = atoms[old_idx]
        r = a.residue
        if r.index not in res_map:
            res_map[r.index] = new.addResidue(r.name, chain, id=str(len(res_map) + 1))
        new_atoms[old_idx] = new.addAtom(a.name, a.element, res_map[r.index])
    for a, b in topology.bonds():
        new.addBond(new_atoms[a.index], new_atoms[b.index])
    return new
