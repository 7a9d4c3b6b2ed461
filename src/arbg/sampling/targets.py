"""Targets for reweighting and SMC: the `Target` protocol and chirality helpers.

Units: positions in nm, reduced energies in kT, angles in radians.

The `Target` protocol is what `arbg.reweight` / `arbg.sampling.smc` consume.  A peptide
(`arbg.chem.systems.PeptideSystem`) implements it with force-field energies; the harmonic
harmonic chain of the tests (``tests/toys.py``) implements it analytically so that SNIS and
twisted SMC (paper, Algorithm 1 and Sec. E.5.1) can be checked against exact expectations.

Chirality convention
--------------------
For a residue with atoms (N, CA, C, CB) the signed volume is
``V = ((N - CA) x (C - CA)) . (CB - CA)``.  **L-amino acids have V > 0** (checked against
the L-alanine template of pdbfixer and every residue of OpenMM's villin ``test.pdb``; see
``tests/test_target.py``).  `chirality_signs` returns ``sign(V)``: +1 = L, -1 = D.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Target", "chirality_signs", "wrong_chirality"]


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


# ----------------------------------------------------------------------------- chirality


def chirality_signs(x: np.ndarray, chirality_atoms: np.ndarray) -> np.ndarray:
    """Sign of ``((N - CA) x (C - CA)) . (CB - CA)`` per residue: +1 = L, -1 = D.

    Parameters
    ----------
    x : np.ndarray, shape (B, n, 3) (nm; only relative positions matter)
    chirality_atoms : np.ndarray, shape (r, 4), int
        (N, CA, C, CB) per residue; rows with a negative index (Gly) give 0.

    Returns
    -------
    np.ndarray, shape (B, r), int8
        +1 (L), -1 (D), 0 (no stereocentre, or degenerate / non-finite coordinates).
    """
    x = np.asarray(x, dtype=np.float64)
    idx = np.asarray(chirality_atoms, dtype=np.int64).reshape(-1, 4)
    out = np.zeros((x.shape[0], idx.shape[0]), dtype=np.int8)
    valid = np.all(idx >= 0, axis=1)
    if not valid.any():
        return out
    i = idx[valid]
    ca = x[:, i[:, 1]]
    vol = np.sum(np.cross(x[:, i[:, 0]] - ca, x[:, i[:, 2]] - ca) * (x[:, i[:, 3]] - ca), -1)
    out[:, valid] = np.sign(np.nan_to_num(vol, nan=0.0)).astype(np.int8)
    return out


def wrong_chirality(x: np.ndarray, chirality_atoms: np.ndarray) -> np.ndarray:
    """True where any residue with a stereocentre is D (signed volume < 0), shape (B,)."""
    return np.any(chirality_signs(x, chirality_atoms) < 0, axis=1)
