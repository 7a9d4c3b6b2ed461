"""Internal coordinates of batches of conformations: distances, angles and dihedrals.

One checked implementation, used by the metrics, the plots and the tests (conventions of
mdtraj's ``compute_distances`` / ``compute_angles`` / ``compute_dihedrals`` without periodic
boundaries). Positions in nm, angles in radians.
"""

from __future__ import annotations

import numpy as np

__all__ = ["angles", "dihedrals", "distances"]


def _checked(x: np.ndarray, indices: np.ndarray, k: int, what: str) -> tuple[np.ndarray, ...]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"positions must have shape (N, n_atoms, 3), got {x.shape}")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, k)
    if idx.size and (idx.min() < 0 or idx.max() >= x.shape[1]):
        raise ValueError(
            f"{what} indices must lie in [0, {x.shape[1]}) for {x.shape[1]} atoms, "
            f"got [{idx.min()}, {idx.max()}]"
        )
    return (x,) + tuple(x[:, idx[:, j]] for j in range(k))


def distances(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Distances of atom pairs.

    Parameters
    ----------
    x : ndarray, shape (N, n_atoms, 3)
        Positions in nm.
    pairs : ndarray, shape (b, 2)
        Atom indices.

    Returns
    -------
    ndarray, shape (N, b)
        Distances in nm.
    """
    _, p0, p1 = _checked(x, pairs, 2, "pair")
    return np.linalg.norm(p1 - p0, axis=-1)


def angles(x: np.ndarray, triples: np.ndarray) -> np.ndarray:
    """Angles (i, j, k) with the vertex at the middle atom j.

    Parameters
    ----------
    x : ndarray, shape (N, n_atoms, 3)
        Positions in nm.
    triples : ndarray, shape (a, 3)
        Atom indices, vertex in the middle.

    Returns
    -------
    ndarray, shape (N, a)
        Angles in radians in [0, pi].
    """
    _, p0, p1, p2 = _checked(x, triples, 3, "angle")
    u, v = p0 - p1, p2 - p1
    cos = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.arccos(np.clip(cos, -1.0, 1.0))


def dihedrals(x: np.ndarray, quadruples: np.ndarray) -> np.ndarray:
    """Dihedral angles (IUPAC sign convention, as mdtraj's ``compute_dihedrals``).

    Parameters
    ----------
    x : ndarray, shape (N, n_atoms, 3)
        Positions in nm.
    quadruples : ndarray, shape (k, 4)
        Atom indices of each dihedral.

    Returns
    -------
    ndarray, shape (N, k)
        Angles in radians in (-pi, pi].
    """
    x, p0, p1, p2, p3 = _checked(x, quadruples, 4, "dihedral")
    if p0.shape[1] == 0:
        return np.zeros((x.shape[0], 0))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    c1, c2 = np.cross(b2, b3), np.cross(b1, b2)
    y = np.sum(b1 * c1, axis=-1) * np.linalg.norm(b2, axis=-1)
    return np.arctan2(y, np.sum(c1 * c2, axis=-1))
