"""What a peptide system is built from: :class:`SystemSpec` (JSON-serialisable), the presets,
and :func:`make_spec` (a preset name, a sequence or a PDB file plus :class:`SystemOptions`).

Presets follow the published benchmark conventions (``docs/references.md``): ``aldp`` and
``ace-aaa-nme`` use amber99sbildn + amber99_obc, NoCutoff, 300 K; ``aaa``, ``aaaaaa``,
``chignolin`` and any sequence by default use amber14-all + implicit/obc1, CutoffNonPeriodic
2 nm, 310 K.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from arbg import checks
from arbg.chem import residues as R
from arbg.chem.builder import pdb_has_caps, sequence_from_pdb_text

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
