"""Targets for reweighting and SMC: the `Target` protocol.

Units: positions in nm, reduced energies in kT, angles in radians.

The `Target` protocol is what `arbg.reweight` / `arbg.sampling.smc` consume.  A peptide
(`arbg.chem.systems.PeptideSystem`) implements it with force-field energies; the harmonic
harmonic chain of the tests (``tests/toys.py``) implements it analytically so that SNIS and
twisted SMC (paper, Algorithm 1 and Sec. E.5.1) can be checked against exact expectations.

The chirality convention (the signed volume of N, CA, C, CB; L > 0) and its helpers are in
:mod:`arbg.sampling.sampler`.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Target"]


@runtime_checkable
class Target(Protocol):
    """What sampling and reweighting code needs from a target distribution exp(-u).

    Attributes
    ----------
    n_atoms : int
    boundaries : list[int]
        Increasing prefix atom counts (in the generation order) at which SMC evaluates a
        partial energy; for a peptide: end of residue block k plus the next residue's N.
    chirality_atoms : np.ndarray, shape (r, 4), int
        (N, CA, C, CB) atom indices per residue (a row with a negative index, e.g. Gly's
        CB = -1, is skipped); shape (0, 4) for targets without chirality.
    """

    n_atoms: int
    boundaries: list[int]
    chirality_atoms: np.ndarray

    def reduced_energy(self, x: np.ndarray) -> np.ndarray:
        """``x`` [B, n_atoms, 3] nm -> u [B] float64 kT, +inf where non-finite."""
        ...

    def prefix_energy(self, i: int, x_prefix: np.ndarray) -> np.ndarray:
        """``x_prefix`` [B, boundaries[i], 3] nm -> u_i [B] float64 kT (closed prefix)."""
        ...
