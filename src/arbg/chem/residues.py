"""Fixed residue and atom vocabularies, and the canonical atom order inside a residue.

The vocabularies are part of every checkpoint's meaning: append to them, never reorder.

Canonical order inside a standard residue (see ``docs/architecture.md``):
backbone nitrogen ``N`` first (the twisted SMC closes a prefix with the next residue's N),
then the rest of the backbone with its hydrogens (``H`` or ``H1 H2 H3``, ``CA``, ``HA``/``HA2 HA3``,
``C``, ``O``, ``OXT``), then the side chain in the order of the Amber residue templates.
An ACE cap is ordered before the first residue's atoms, in the same block; an NME cap after the
last residue's atoms, in the same block.
"""

from __future__ import annotations

ONE_TO_THREE: dict[str, str] = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip
THREE_TO_ONE: dict[str, str] = {v: k for k, v in ONE_TO_THREE.items()}

# Protonation variants (Amber names). They are fixed by the sequence and options, never by geometry.
VARIANT_TO_STANDARD: dict[str, str] = {
    "HIE": "HIS", "HID": "HIS", "HIP": "HIS", "ASH": "ASP", "GLH": "GLU", "LYN": "LYS",
    "CYX": "CYS",
}  # fmt: skip

# Residue-type vocabulary: 0 is padding, then the 20 standard residues, the variants, and caps.
RESIDUE_TYPES: tuple[str, ...] = (
    "<pad>", "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIE", "ILE", "LEU", "LYS",
    "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL", "HID", "HIP", "ASH", "GLH", "LYN",
    "CYX", "ACE", "NME",
)  # fmt: skip
RESIDUE_TYPE_ID: dict[str, int] = {name: i for i, name in enumerate(RESIDUE_TYPES)}

# Atom-type vocabulary (atom names of the 20 amino acids, their variants, termini and caps).
ATOM_TYPES: tuple[str, ...] = (
    "<pad>", "C", "CA", "CB", "CD", "CD1", "CD2", "CE", "CE1", "CE2", "CE3", "CG", "CG1", "CG2",
    "CH2", "CH3", "CZ", "CZ2", "CZ3", "H", "H1", "H2", "H3", "HA", "HA2", "HA3", "HB", "HB1",
    "HB2", "HB3", "HD1", "HD11", "HD12", "HD13", "HD2", "HD21", "HD22", "HD23", "HD3", "HE",
    "HE1", "HE2", "HE21", "HE22", "HE3", "HG", "HG1", "HG11", "HG12", "HG13", "HG2", "HG21",
    "HG22", "HG23", "HG3", "HH", "HH11", "HH12", "HH2", "HH21", "HH22", "HH31", "HH32", "HH33",
    "HZ", "HZ1", "HZ2", "HZ3", "N", "ND1", "ND2", "NE", "NE1", "NE2", "NH1", "NH2", "NZ", "O",
    "OD1", "OD2", "OE1", "OE2", "OG", "OG1", "OH", "OXT", "SD", "SG",
)  # fmt: skip
ATOM_TYPE_ID: dict[str, int] = {name: i for i, name in enumerate(ATOM_TYPES)}

BACKBONE_ORDER: tuple[str, ...] = (
    "N", "H", "H1", "H2", "H3", "CA", "HA", "HA2", "HA3", "C", "O", "OXT",
)  # fmt: skip
ACE_ORDER: tuple[str, ...] = ("CH3", "HH31", "HH32", "HH33", "C", "O")
NME_ORDER: tuple[str, ...] = ("N", "H", "CH3", "HH31", "HH32", "HH33")

# Side-chain atoms in Amber template order (amber14-all.xml; amber99sbildn uses the same names).
SIDE_CHAIN: dict[str, tuple[str, ...]] = {
    "ALA": ("CB", "HB1", "HB2", "HB3"),
    "ARG": (
        "CB",
        "HB2",
        "HB3",
        "CG",
        "HG2",
        "HG3",
        "CD",
        "HD2",
        "HD3",
        "NE",
        "HE",
        "CZ",
        "NH1",
        "HH11",
        "HH12",
        "NH2",
        "HH21",
        "HH22",
    ),
    "ASN": ("CB", "HB2", "HB3", "CG", "OD1", "ND2", "HD21", "HD22"),
    "ASP": ("CB", "HB2", "HB3", "CG", "OD1", "OD2"),
    "CYS": ("CB", "HB2", "HB3", "SG", "HG"),
    "GLN": ("CB", "HB2", "HB3", "CG", "HG2", "HG3", "CD", "OE1", "NE2", "HE21", "HE22"),
    "GLU": ("CB", "HB2", "HB3", "CG", "HG2", "HG3", "CD", "OE1", "OE2"),
    "GLY": (),
    "HIE": ("CB", "HB2", "HB3", "CG", "ND1", "CE1", "HE1", "NE2", "HE2", "CD2", "HD2"),
    "ILE": (
        "CB",
        "HB",
        "CG2",
        "HG21",
        "HG22",
        "HG23",
        "CG1",
        "HG12",
        "HG13",
        "CD1",
        "HD11",
        "HD12",
        "HD13",
    ),
    "LEU": (
        "CB",
        "HB2",
        "HB3",
        "CG",
        "HG",
        "CD1",
        "HD11",
        "HD12",
        "HD13",
        "CD2",
        "HD21",
        "HD22",
        "HD23",
    ),
    "LYS": (
        "CB",
        "HB2",
        "HB3",
        "CG",
        "HG2",
        "HG3",
        "CD",
        "HD2",
        "HD3",
        "CE",
        "HE2",
        "HE3",
        "NZ",
        "HZ1",
        "HZ2",
        "HZ3",
    ),
    "MET": ("CB", "HB2", "HB3", "CG", "HG2", "HG3", "SD", "CE", "HE1", "HE2", "HE3"),
    "PHE": (
        "CB",
        "HB2",
        "HB3",
        "CG",
        "CD1",
        "HD1",
        "CE1",
        "HE1",
        "CZ",
        "HZ",
        "CE2",
        "HE2",
        "CD2",
        "HD2",
    ),
    "PRO": ("CD", "HD2", "HD3", "CG", "HG2", "HG3", "CB", "HB2", "HB3"),
    "SER": ("CB", "HB2", "HB3", "OG", "HG"),
    "THR": ("CB", "HB", "CG2", "HG21", "HG22", "HG23", "OG1", "HG1"),
    "TRP": (
        "CB",
        "HB2",
        "HB3",
        "CG",
        "CD1",
        "HD1",
        "NE1",
        "HE1",
        "CE2",
        "CZ2",
        "HZ2",
        "CH2",
        "HH2",
        "CZ3",
        "HZ3",
        "CE3",
        "HE3",
        "CD2",
    ),
    "TYR": (
        "CB",
        "HB2",
        "HB3",
        "CG",
        "CD1",
        "HD1",
        "CE1",
        "HE1",
        "CZ",
        "OH",
        "HH",
        "CE2",
        "HE2",
        "CD2",
        "HD2",
    ),
    "VAL": ("CB", "HB", "CG1", "HG11", "HG12", "HG13", "CG2", "HG21", "HG22", "HG23"),
    "HID": ("CB", "HB2", "HB3", "CG", "ND1", "HD1", "CE1", "HE1", "NE2", "CD2", "HD2"),
    "HIP": ("CB", "HB2", "HB3", "CG", "ND1", "HD1", "CE1", "HE1", "NE2", "HE2", "CD2", "HD2"),
    "ASH": ("CB", "HB2", "HB3", "CG", "OD1", "OD2", "HD2"),
    "GLH": ("CB", "HB2", "HB3", "CG", "HG2", "HG3", "CD", "OE1", "OE2", "HE2"),
    "LYN": (
        "CB",
        "HB2",
        "HB3",
        "CG",
        "HG2",
        "HG3",
        "CD",
        "HD2",
        "HD3",
        "CE",
        "HE2",
        "HE3",
        "NZ",
        "HZ2",
        "HZ3",
    ),
    "CYX": ("CB", "HB2", "HB3", "SG"),
}

HEAVY_SIDE_CHAIN: dict[str, tuple[str, ...]] = {
    res: tuple(a for a in atoms if not a.startswith("H")) for res, atoms in SIDE_CHAIN.items()
}
# Default protonation at pH 7 (fixed by sequence): histidine is HIE unless the user says otherwise.
DEFAULT_VARIANT: dict[str, str] = {"HIS": "HIE"}


def residue_atom_order(resname: str) -> tuple[str, ...]:
    """Canonical atom-name order of one residue (standard, variant or cap) in the vocabulary."""
    if resname == "ACE":
        return ACE_ORDER
    if resname == "NME":
        return NME_ORDER
    if resname not in SIDE_CHAIN:
        raise ValueError(
            f"unknown residue {resname!r}; arbg supports the 20 standard amino "
            f"acids ({', '.join(sorted(SIDE_CHAIN))}) and the caps ACE/NME"
        )
    return BACKBONE_ORDER + SIDE_CHAIN[resname]
