"""Peptide systems and their physics (OpenMM; no torch): build a peptide from a preset, a
sequence or a PDB, reduced energies in kT, reference and enhanced-sampling MD, internal
coordinates. Positions in nm, energies in kT."""

from __future__ import annotations

from arbg.chem.bias import BiasConfig
from arbg.chem.geometry import angles, dihedrals, distances
from arbg.chem.md import MDConfig, SimulationError, load_md_frames, load_md_log_weights, run_md
from arbg.chem.systems import PeptideSystem, SystemSpec, build_system, make_spec, system_from_pdb

__all__ = [
    "BiasConfig",
    "MDConfig",
    "PeptideSystem",
    "SimulationError",
    "SystemSpec",
    "angles",
    "build_system",
    "dihedrals",
    "distances",
    "load_md_frames",
    "load_md_log_weights",
    "make_spec",
    "run_md",
    "system_from_pdb",
]
