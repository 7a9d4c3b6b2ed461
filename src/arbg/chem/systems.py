"""Peptide systems: what one is built from (:class:`SystemSpec`, presets, :func:`make_spec`,
:class:`SystemOptions`), building from a sequence or a PDB, canonical atom order, descriptors.

A :class:`PeptideSystem` is the one object the rest of arbg needs to know about a molecule: its
atoms in canonical order (:mod:`arbg.chem.residues`), per-atom descriptors for the model, backbone
dihedral indices, the residue blocks used by the twisted SMC, and its reduced energy
``u(x) = E(x) / kT`` (positions in nm, energies in kT) together with the energies of capped
prefixes. OpenMM is used only inside this module and :mod:`arbg.chem.energy`.

Presets follow the published benchmark conventions (``docs/references.md``; the paper's
Appendix on datasets): ``aldp`` and ``ace-aaa-nme`` use amber99sbildn + amber99_obc, NoCutoff,
300 K; ``aaa``, ``aaaaaa``, ``chignolin`` and any sequence by default use amber14-all +
implicit/obc1, CutoffNonPeriodic 2 nm, 310 K. No constraints anywhere: every bond is flexible.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arbg import checks
from arbg.chem import residues as R
from arbg.chem.builder import (
    build_openmm_model,
    canonical_order,
    pdb_has_caps,
    reorder_topology,
    sequence_from_pdb_text,
)
from arbg.chem.energy import (
    OpenMMEnergy,
    create_openmm_system,
    minimize_positions,
    prefix_energy_model,
    resolve_forcefield_file,
)
from arbg.files import atomic_write_text

log = logging.getLogger(__name__)

BOLTZMANN_KJ_PER_MOL_K = 0.00831446261815324  # k_B in kJ/(mol K) (CODATA 2018, as OpenMM)
OXT_DISTANCE_NM = 0.125  # the published prefix cap: OXT along C->N(next) at 0.125 nm
N_ATOM_TYPES = len(R.ATOM_TYPES)
N_RESIDUE_TYPES = len(R.RESIDUE_TYPES)

# ----------------------------------------------------------------------------- specs and presets

AMBER99_OBC = ("amber99sbildn.xml", "amber99_obc.xml")
AMBER14_OBC1 = ("amber14-all.xml", "implicit/obc1.xml")


@dataclass(frozen=True)
class SystemSpec:
    """Everything needed to rebuild a system exactly (JSON-serialisable).

    Attributes
    ----------
    name : preset or user name.
    sequence : one-letter sequence of the standard residues (caps not included).
    capped : ACE-...-NME caps (True) or zwitterionic termini (False).
    forcefield : OpenMM force-field XML files (shipped with OpenMM or user paths).
    nonbonded : "NoCutoff" or "CutoffNonPeriodic".
    cutoff_nm : nonbonded cutoff in nm (used with CutoffNonPeriodic).
    temperature_k : physical temperature of the target, in K.
    histidine : protonation variant for every histidine ("HIE", "HID" or "HIP").
    pdb_text : the user's PDB text, for systems built from a PDB (None for sequences).
    """

    name: str
    sequence: str
    capped: bool = False
    forcefield: tuple[str, ...] = AMBER14_OBC1
    nonbonded: str = "CutoffNonPeriodic"
    cutoff_nm: float = 2.0
    temperature_k: float = 310.0
    histidine: str = "HIE"
    pdb_text: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["forcefield"] = list(self.forcefield)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SystemSpec:
        d = dict(d)
        d["forcefield"] = tuple(d["forcefield"])
        return cls(**d)

    def replace(self, **changes) -> SystemSpec:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, SystemSpec] = {
    "aldp": SystemSpec("aldp", "A", True, AMBER99_OBC, "NoCutoff", 2.0, 300.0),
    "ace-aaa-nme": SystemSpec("ace-aaa-nme", "AAA", True, AMBER99_OBC, "NoCutoff", 2.0, 300.0),
    "aaa": SystemSpec("aaa", "AAA", False, AMBER14_OBC1, "CutoffNonPeriodic", 2.0, 310.0),
    "aaaaaa": SystemSpec("aaaaaa", "AAAAAA", False, AMBER14_OBC1, "CutoffNonPeriodic", 2.0, 310.0),
    "chignolin": SystemSpec(
        "chignolin", "GYDPETGTWG", False, AMBER14_OBC1, "CutoffNonPeriodic", 2.0, 310.0
    ),
}
# `fast-implicit` is a force-field convention for any sequence (corpora made on CPUs).
FAST_IMPLICIT = dict(forcefield=AMBER99_OBC, nonbonded="NoCutoff", temperature_k=310.0)
DEFAULT_SYSTEM = "aldp"


def validate_sequence(sequence: str) -> str:
    """Upper-case and check a one-letter sequence; raise ValueError naming bad letters."""
    if not isinstance(sequence, str) or not sequence.strip():
        raise ValueError("empty sequence: give one-letter codes of the 20 standard amino acids")
    seq = sequence.strip().upper()
    bad = sorted({c for c in seq if c not in R.ONE_TO_THREE})
    if bad:
        raise ValueError(
            f"unknown residue letter(s) {', '.join(repr(c) for c in bad)} in sequence "
            f"{sequence!r}; allowed: {''.join(sorted(R.ONE_TO_THREE))}"
        )
    return seq


def make_spec(
    system: str | None = None,
    *,
    sequence: str | None = None,
    pdb: str | Path | None = None,
    capped: bool | None = None,
    forcefield: tuple[str, ...] | None = None,
    nonbonded: str | None = None,
    cutoff_nm: float | None = None,
    temperature_k: float | None = None,
    fast_implicit: bool = False,
    histidine: str | None = None,
) -> SystemSpec:
    """Resolve a preset name, a sequence or a PDB file plus user overrides into a SystemSpec."""
    given = [x is not None for x in (system, sequence, pdb)]
    if sum(given) != 1:
        raise ValueError("give exactly one of: a preset name, --sequence SEQ, --pdb FILE")
    if system is not None:
        if system not in PRESETS:
            raise ValueError(f"unknown system {system!r}; presets: {', '.join(PRESETS)}")
        spec = PRESETS[system]
    elif sequence is not None:
        seq = validate_sequence(sequence)
        spec = SystemSpec(name=seq, sequence=seq)
    else:
        path = Path(pdb)
        if not path.is_file():
            raise FileNotFoundError(f"PDB file not found: {path}")
        try:
            text = path.read_text()
            seq = sequence_from_pdb_text(text, str(path))
        except UnicodeDecodeError as e:
            raise ValueError(f"PDB file {str(path)!r} is not a PDB text file ({e.reason})") from e
        spec = SystemSpec(name=path.stem, sequence=seq, pdb_text=text, capped=pdb_has_caps(text))
    changes: dict = {}
    if fast_implicit:
        changes.update(FAST_IMPLICIT)
    for key, value in dict(
        capped=capped,
        forcefield=forcefield,
        nonbonded=nonbonded,
        cutoff_nm=cutoff_nm,
        temperature_k=temperature_k,
        histidine=histidine,
    ).items():
        if value is not None:
            changes[key] = tuple(value) if key == "forcefield" else value
    spec = spec.replace(**changes)
    if spec.nonbonded not in ("NoCutoff", "CutoffNonPeriodic"):
        raise ValueError(
            f"unknown nonbonded method {spec.nonbonded!r}; "
            "use NoCutoff or CutoffNonPeriodic (implicit solvent, no box)"
        )
    if spec.histidine not in ("HIE", "HID", "HIP"):
        raise ValueError(f"unknown histidine variant {spec.histidine!r}; use HIE, HID or HIP")
    checks.in_range("--temperature-k", spec.temperature_k, 0.0, 5000.0, low_open=True)
    checks.in_range("--cutoff-nm", spec.cutoff_nm, 0.0, 100.0, low_open=True)
    return spec


@dataclass(frozen=True)
class SystemOptions:
    """Overrides of a system's preset (the system flags of `arbg system`, `arbg md`, ...).

    Attributes
    ----------
    sequence : one-letter sequence (20 standard amino acids).
    pdb : a PDB file with one peptide chain.
    capped : ACE/NME caps (default: zwitterionic for sequences).
    forcefield : OpenMM force-field XML files (e.g. amber14-all.xml implicit/obc1.xml).
    nonbonded : nonbonded method (implicit solvent, no box).
    cutoff_nm : nonbonded cutoff in nm.
    temperature_k : physical temperature of the target in K (not the sampling --tau).
    fast_implicit : amber99sbildn + amber99_obc, NoCutoff, 310 K (fast on CPUs).
    histidine : protonation variant of histidine.
    """

    sequence: str | None = None
    pdb: str | None = None
    capped: bool | None = None
    forcefield: tuple[str, ...] | None = field(
        default=None, metadata={"flag": "--force-field", "aliases": ("--forcefield",)}
    )
    nonbonded: str | None = field(
        default=None, metadata={"choices": ("NoCutoff", "CutoffNonPeriodic")}
    )
    cutoff_nm: float | None = None
    temperature_k: float | None = None
    fast_implicit: bool = False
    histidine: str | None = field(default=None, metadata={"choices": ("HIE", "HID", "HIP")})

    def spec(self, system: str | None = None) -> SystemSpec:
        """:func:`make_spec` of the preset ``system`` (or of ``sequence``/``pdb``) with these
        overrides (no preset, sequence or PDB: ``aldp``)."""
        if system is None and self.sequence is None and self.pdb is None:
            system = DEFAULT_SYSTEM
        return make_spec(system, **dataclasses.asdict(self))


# ----------------------------------------------------------------------------- the system


@dataclass
class PeptideSystem:
    """A peptide in canonical atom order with its force field (see module docstring).

    Positions are [n_atoms, 3] in nm in canonical order; ``to_canonical`` maps the build/input
    order into canonical order: ``x_canonical = x_original[..., to_canonical, :]``.
    """

    spec: SystemSpec
    omm_topology: object  # openmm.app.Topology, canonical order
    positions: np.ndarray  # [n, 3] nm, canonical order
    to_canonical: np.ndarray  # [n] int
    residue_blocks: list[tuple[int, int]]  # canonical atom range of each standard residue
    block_resnames: list[str]  # residue name (variant) of each block
    _energy: object = field(default=None, repr=False)

    # -- basic descriptors
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_atoms(self) -> int:
        return len(self.to_canonical)

    @property
    def n_residues(self) -> int:
        return len(self.residue_blocks)

    @property
    def temperature_k(self) -> float:
        return self.spec.temperature_k

    @property
    def kT(self) -> float:
        """k_B T in kJ/mol."""
        return BOLTZMANN_KJ_PER_MOL_K * self.spec.temperature_k

    @functools.cached_property
    def to_original(self) -> np.ndarray:
        inv = np.empty_like(self.to_canonical)
        inv[self.to_canonical] = np.arange(len(self.to_canonical))
        return inv

    @functools.cached_property
    def topology(self):
        """mdtraj.Topology in canonical order."""
        import mdtraj

        return mdtraj.Topology.from_openmm(self.omm_topology)

    @functools.cached_property
    def _atoms(self) -> list[tuple[str, str, int, int]]:
        """(atom name, residue name, block index, element number) per canonical atom."""
        out = []
        block_of = np.empty(self.n_atoms, dtype=int)
        for b, (s, e) in enumerate(self.residue_blocks):
            block_of[s:e] = b
        for i, a in enumerate(self.omm_topology.atoms()):
            out.append((a.name, a.residue.name, int(block_of[i]), a.element.atomic_number))
        return out

    @functools.cached_property
    def atom_names(self) -> list[str]:
        return [a[0] for a in self._atoms]

    @functools.cached_property
    def element(self) -> np.ndarray:
        return np.array([a[3] for a in self._atoms], dtype=np.int64)

    @functools.cached_property
    def atom_type_id(self) -> np.ndarray:
        return np.array([R.ATOM_TYPE_ID[a[0]] for a in self._atoms], dtype=np.int64)

    @functools.cached_property
    def residue_type_id(self) -> np.ndarray:
        names = []
        for _name, resname, block, _ in self._atoms:
            names.append(resname if resname in ("ACE", "NME") else self.block_resnames[block])
        return np.array([R.RESIDUE_TYPE_ID[n] for n in names], dtype=np.int64)

    @functools.cached_property
    def residue_index(self) -> np.ndarray:
        return np.array([a[2] for a in self._atoms], dtype=np.int64)

    def atom_index(self, block: int, name: str, resname: str | None = None) -> int:
        """Canonical index of atom `name` in residue block `block` (-1 if absent).

        ``resname`` picks the residue inside the block (a block holds its residue and any cap):
        a protonation variant (``HIE``, the block's name) and its standard name (``HIS``, the
        topology's) are the same residue.
        """
        std = R.VARIANT_TO_STANDARD
        want = None if resname is None else std.get(resname, resname)
        for i in range(*self.residue_blocks[block]):
            a = self._atoms[i]
            if a[0] == name and (want is None or std.get(a[1], a[1]) == want):
                return i
        return -1

    # -- dihedrals and chirality
    @functools.cached_property
    def _backbone(self) -> dict[str, list[int]]:
        nb = self.n_residues
        get = self.atom_index
        std = [r for r in self.block_resnames]
        out = {"N": [], "CA": [], "C": []}
        for b in range(nb):
            for name in ("N", "CA", "C"):
                out[name].append(get(b, name, std[b]) if name != "N" else get(b, "N", std[b]))
        out["ACE_C"] = [get(0, "C", "ACE")]
        out["ACE_CH3"] = [get(0, "CH3", "ACE")]
        out["NME_N"] = [get(nb - 1, "N", "NME")]
        out["NME_CH3"] = [get(nb - 1, "CH3", "NME")]
        return out

    @functools.cached_property
    def phi_indices(self) -> np.ndarray:
        """[k, 4] atom indices (C(i-1), N, CA, C) of every defined phi, canonical order."""
        bb = self._backbone
        rows = []
        for b in range(self.n_residues):
            prev_c = bb["C"][b - 1] if b > 0 else bb["ACE_C"][0]
            if prev_c >= 0:
                rows.append((prev_c, bb["N"][b], bb["CA"][b], bb["C"][b]))
        return np.array(rows, dtype=np.int64).reshape(-1, 4)

    @functools.cached_property
    def psi_indices(self) -> np.ndarray:
        """[k, 4] atom indices (N, CA, C, N(i+1)) of every defined psi."""
        bb = self._backbone
        rows = []
        for b in range(self.n_residues):
            nxt = bb["N"][b + 1] if b + 1 < self.n_residues else bb["NME_N"][0]
            if nxt >= 0:
                rows.append((bb["N"][b], bb["CA"][b], bb["C"][b], nxt))
        return np.array(rows, dtype=np.int64).reshape(-1, 4)

    @functools.cached_property
    def omega_indices(self) -> np.ndarray:
        """[k, 4] atom indices (CA(i), C(i), N(i+1), CA(i+1)) of every peptide bond (caps too)."""
        bb = self._backbone
        rows = []
        if bb["ACE_C"][0] >= 0:
            rows.append((bb["ACE_CH3"][0], bb["ACE_C"][0], bb["N"][0], bb["CA"][0]))
        for b in range(self.n_residues - 1):
            rows.append((bb["CA"][b], bb["C"][b], bb["N"][b + 1], bb["CA"][b + 1]))
        if bb["NME_N"][0] >= 0:
            last = self.n_residues - 1
            rows.append((bb["CA"][last], bb["C"][last], bb["NME_N"][0], bb["NME_CH3"][0]))
        return np.array(rows, dtype=np.int64).reshape(-1, 4)

    @functools.cached_property
    def backbone_heavy_indices(self) -> np.ndarray:
        bb = self._backbone
        idx = sorted(i for name in ("N", "CA", "C") for i in bb[name] if i >= 0)
        return np.array(idx, dtype=np.int64)

    @functools.cached_property
    def gauge_atoms(self) -> tuple[int, int, int]:
        """(N, CA, C) of the central residue: the default gauge atoms of the gauge frame.

        The central residue keeps the lever arm to the far ends of the peptide short (see
        :class:`arbg.nn.coordinates.Standardization`).
        """
        bb = self._backbone
        b = (self.n_residues - 1) // 2
        atoms = (bb["N"][b], bb["CA"][b], bb["C"][b])
        if min(atoms) < 0:
            raise ValueError(f"residue block {b} lacks a backbone N, CA or C: {atoms}")
        return (int(atoms[0]), int(atoms[1]), int(atoms[2]))

    @functools.cached_property
    def chirality_atoms(self) -> np.ndarray:
        """[r, 4] (N, CA, C, CB) per chiral residue (glycine has no CB and is left out)."""
        rows = []
        for b in range(self.n_residues):
            cb = self.atom_index(b, "CB", self.block_resnames[b])
            if cb >= 0:
                bb = self._backbone
                rows.append((bb["N"][b], bb["CA"][b], bb["C"][b], cb))
        return np.array(rows, dtype=np.int64).reshape(-1, 4)

    @functools.cached_property
    def bonds(self) -> np.ndarray:
        """[b, 2] bonded atom pairs, canonical indices."""
        return np.array(
            [(a.index, b.index) for a, b in self.omm_topology.bonds()], dtype=np.int64
        ).reshape(-1, 2)

    @functools.cached_property
    def start_gauge_atoms(self) -> tuple[int, int, int]:
        """(A, B, C) at the start of the chain: the first heavy atom, its earliest heavy
        neighbour and that one's earliest heavy neighbour other than A (Ace-...: CH3, C, O).

        With bond offsets every later heavy atom is then an offset from an earlier neighbour;
        with the central gauge the heavy atoms before it stay absolute
        (:meth:`bond_parents`).
        """
        heavy = [k for k in range(self.n_atoms) if self.element[k] != 1]
        nbrs = self._neighbours
        a = heavy[0]
        b = min((n for n in nbrs.get(a, []) if self.element[n] != 1), default=-1)
        c = min((n for n in nbrs.get(b, []) if self.element[n] != 1 and n != a), default=-1)
        if min(b, c) < 0:
            raise ValueError(f"{self.name}: no chain of three heavy atoms from atom {a}")
        return (a, b, c)

    def gauge_atoms_at(self, where: str) -> tuple[int, int, int]:
        """The gauge atoms of ``arbg train --gauge``: ``"central"`` (:attr:`gauge_atoms`) or
        ``"start"`` (:attr:`start_gauge_atoms`)."""
        if where not in ("central", "start"):
            raise ValueError(f"gauge must be 'central' or 'start', got {where!r}")
        return self.start_gauge_atoms if where == "start" else self.gauge_atoms

    @functools.cached_property
    def _neighbours(self) -> dict[int, list[int]]:
        """Bonded neighbours of each atom (canonical indices)."""
        neighbours: dict[int, list[int]] = {}
        for a, b in self.bonds:
            neighbours.setdefault(int(a), []).append(int(b))
            neighbours.setdefault(int(b), []).append(int(a))
        return neighbours

    def bond_parents(self, gauge: tuple[int, int, int] | None = None) -> np.ndarray:
        """[n] int: the atom each atom is placed from by bond offsets, or -1 (absolute); see
        :class:`arbg.nn.coordinates.Standardization`, "Bond offsets".

        A hydrogen's parent is its heavy atom. A heavy atom after the first gauge atom has its
        latest earlier bonded neighbour. The gauge atoms (``gauge``, default
        :attr:`gauge_atoms`) and the heavy atoms before the first of them are absolute: a chain
        of offsets started before the gauge would have to close on a gauge atom fixed at the
        origin, and its summed errors would land in that one bond (with
        :attr:`start_gauge_atoms` there are none).
        """
        gauge = self.gauge_atoms if gauge is None else tuple(int(g) for g in gauge)
        first_gauge = min(gauge)
        par = np.full(self.n_atoms, -1, dtype=np.int64)
        for a, b in self.bonds:
            lo, hi = (int(a), int(b)) if a < b else (int(b), int(a))
            if self.element[hi] == 1 or hi > first_gauge:
                par[hi] = max(par[hi], lo)
        par[list(gauge)] = -1
        return par

    def frame_refs(self, gauge: tuple[int, int, int] | None = None) -> np.ndarray:
        """[n, 2] int: per atom, the two atoms ``(b, c)`` that orient the local frame of its bond
        offset (with its parent ``p`` from :meth:`bond_parents` of the same ``gauge``; see
        :class:`arbg.nn.coordinates.Standardization`, "Local frames"), or ``(-1, -1)`` where
        the offset stays in the gauge axes.

        ``b`` is an earlier bonded neighbour of ``p`` (``p``'s own parent where that is one);
        ``c`` is another earlier neighbour of ``p`` where there is one, so that bond lengths and
        angles alone fix the child (the second and third hydrogen of a CH3, for example), else an
        earlier neighbour of ``b`` (the child's place then turns with a dihedral). ``p``, ``b``
        and ``c`` all precede the child, so the frame is known when the child is generated.
        """
        neighbours = self._neighbours
        par = self.bond_parents(gauge)
        refs = np.full((self.n_atoms, 2), -1, dtype=np.int64)
        for k in range(self.n_atoms):
            p = int(par[k])
            if p < 0:
                continue
            before = [a for a in neighbours.get(p, []) if a < k]
            if not before:
                continue
            b = int(par[p]) if int(par[p]) in before else max(before)
            others = [a for a in before if a != b]
            if not others:
                others = [a for a in neighbours.get(b, []) if a < k and a != p]
            if others:
                refs[k] = (b, max(others))
        return refs

    @functools.cached_property
    def rotor_hydrogens(self) -> np.ndarray:
        """[m, 3] hydrogen triples on one heavy atom (CH3, NH3+) whose cyclic relabelling
        leaves the energy unchanged: a 120 degree turn of the group, which MD visits.

        Each candidate is checked with the force field (energy of the built conformation
        with the triple relabelled cyclically equals the original to 1e-6 kT), so a triple
        with unequal parameters is left out. Odd relabellings (swapping two hydrogens) are
        never implied: they mirror the group, a state MD of labelled atoms cannot reach.
        """
        candidates = []
        for atom, nbrs in sorted(self._neighbours.items()):
            hs = sorted(n for n in nbrs if self.element[n] == 1)
            if self.element[atom] != 1 and len(hs) == 3:
                candidates.append(hs)
        if not candidates:
            return np.zeros((0, 3), dtype=np.int64)
        x0 = self.positions[None].astype(np.float64)
        trials = []
        for hs in candidates:
            x = x0.copy()
            x[0, hs] = x0[0, [hs[1], hs[2], hs[0]]]
            trials.append(x[0])
        u0 = self.reduced_energy(x0)[0]
        u = self.reduced_energy(np.stack(trials))
        keep = [hs for hs, ui in zip(candidates, u, strict=True) if abs(ui - u0) < 1e-6]
        return np.array(keep, dtype=np.int64).reshape(-1, 3)

    # -- energies
    @property
    def energy_model(self):
        if self._energy is None:
            # parallel on the Dask engine of the running command, if any (arbg.cluster)
            self._energy = OpenMMEnergy(self.create_openmm_system(), self.kT)
        return self._energy

    def create_openmm_system(self, topology=None):
        """An openmm.System for this force field (no constraints), for `topology` or self."""

        return create_openmm_system(self.spec, topology or self.omm_topology)

    def reduced_energy(self, x: np.ndarray) -> np.ndarray:
        """Reduced energy u = E/kT.

        Parameters
        ----------
        x : [B, n_atoms, 3] or [n_atoms, 3] positions in nm, canonical order.

        Returns
        -------
        [B] float64 reduced energies in kT; +inf where OpenMM gives a non-finite energy.
        """
        return self.energy_model(x)

    @functools.cached_property
    def boundaries(self) -> list[int]:
        """Prefix lengths (atoms) at which a partial energy is defined (twisted SMC).

        Entry i is the prefix after residue block b = ``boundary_blocks[i]`` plus the next
        residue's N. Zwitterionic peptides have no boundary after residue 1: a free amino
        acid (NH3+ and COO- on one residue) has no template in the standard force fields.
        """
        return [self.residue_blocks[b][1] + 1 for b in self.boundary_blocks]

    @functools.cached_property
    def boundary_blocks(self) -> list[int]:
        start = 0 if self.spec.capped else 1
        return list(range(start, self.n_residues - 1))

    def prefix_energy(self, i: int, x_prefix: np.ndarray) -> np.ndarray:
        """Reduced energy (kT) of the i-th capped prefix.

        The prefix holds residue blocks 0..b (b = ``boundary_blocks[i]``) and the next
        residue's N as its last atom. That N is replaced by a terminal OXT along C->N at
        0.125 nm from C (the published recipe, paper E.5.1), so residue b becomes a standard
        C-terminal residue; the fragment is evaluated with the system's force field.

        Parameters
        ----------
        i : index into ``boundaries``.
        x_prefix : [B, boundaries[i], 3] positions in nm, canonical order.
        """

        x_prefix = np.asarray(x_prefix, dtype=np.float64)
        m = self.boundaries[i]
        if x_prefix.ndim == 2:
            x_prefix = x_prefix[None]
        if x_prefix.shape[1:] != (m, 3):
            raise ValueError(
                f"prefix {i} needs positions of shape [B, {m}, 3], got {list(x_prefix.shape)}"
            )
        b = self.boundary_blocks[i]
        c_idx = self.atom_index(b, "C", self.block_resnames[b])
        model = prefix_energy_model(self, b)
        c = x_prefix[:, c_idx]
        v = x_prefix[:, -1] - c
        norm = np.linalg.norm(v, axis=-1, keepdims=True)
        oxt = c + OXT_DISTANCE_NM * v / np.where(norm > 0, norm, 1.0)
        frag = np.concatenate([x_prefix[:, :-1], oxt[:, None]], axis=1)
        return model(frag)

    # -- I/O
    def to_pdb_string(self, positions: np.ndarray | None = None) -> str:
        from openmm import app

        pos = self.positions if positions is None else np.asarray(positions)
        buf = io.StringIO()
        app.PDBFile.writeFile(self.omm_topology, pos * 10.0, buf, keepIds=False)  # nm -> A
        return buf.getvalue()

    def save_pdb(self, path: str | Path, positions: np.ndarray | None = None) -> None:

        atomic_write_text(path, self.to_pdb_string(positions))

    def forcefield_hashes(self) -> dict[str, str]:
        """sha256 of each force-field file as OpenMM resolves it."""

        out = {}
        for f in self.spec.forcefield:
            out[f] = hashlib.sha256(Path(resolve_forcefield_file(f)).read_bytes()).hexdigest()
        return out

    def describe(self) -> dict:
        return {
            "spec": {k: v for k, v in self.spec.to_dict().items() if k != "pdb_text"},
            "n_atoms": self.n_atoms,
            "n_residues": self.n_residues,
            "atom_names": self.atom_names,
            "forcefield_sha256": self.forcefield_hashes(),
        }


def build_system(spec: SystemSpec | str, *, minimize: bool = True) -> PeptideSystem:
    """Build a peptide system from a spec or a preset name.

    The peptide is built with ideal backbone geometry (extended chain), completed by pdbfixer
    and OpenMM's Modeller (all hydrogens, protonation fixed by the sequence: histidine as
    ``spec.histidine``), put into canonical atom order and, by default, energy-minimised.
    """
    if isinstance(spec, str):
        spec = make_spec(spec)
    return _build_cached(spec, minimize)


@functools.lru_cache(maxsize=32)
def _build_cached(spec: SystemSpec, minimize: bool) -> PeptideSystem:
    from openmm import unit

    topology, positions = build_openmm_model(spec)
    pos = np.array(positions.value_in_unit(unit.nanometer), dtype=np.float64)
    order, blocks, names = canonical_order(topology, spec)
    canon_top = reorder_topology(topology, order)
    pos = pos[order]
    system = PeptideSystem(
        spec=spec,
        omm_topology=canon_top,
        positions=pos,
        to_canonical=order,
        residue_blocks=blocks,
        block_resnames=names,
    )
    if minimize:
        system.positions = minimize_positions(system, pos)
    return system


def system_from_pdb(path: str | Path, **overrides) -> PeptideSystem:
    """Build the peptide in a user's PDB file (single chain, standard residues, heavy atoms
    complete; hydrogens are added if the file has none). ``overrides`` go to :func:`make_spec`.
    The coordinates of the file are kept (not minimised)."""
    spec = make_spec(pdb=path, **overrides)
    return build_system(spec, minimize=False)
