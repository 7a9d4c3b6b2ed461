"""TICA of a reference trajectory (paper eqs. 20-23; the published recipe, ``shared/reference.md``).

Features are backbone pairwise distances plus sin/cos of the backbone dihedrals; TICA (deeptime,
kinetic-map scaling, Koopman-reweighted covariances) is fitted on the reference MD and projects
reference and samples alike. Units: positions in nm, angles in radians.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from deeptime.covariance import KoopmanWeightingEstimator
from deeptime.decomposition import TICA

from arbg.chem.geometry import dihedrals

log = logging.getLogger(__name__)


def tica_features(
    x: np.ndarray,
    backbone_indices: np.ndarray,
    phi_indices: np.ndarray,
    psi_indices: np.ndarray,
    omega_indices: np.ndarray | None = None,
) -> np.ndarray:
    """TICA input features: backbone pairwise distances plus sin/cos of phi, psi, omega.

    The published recipe uses the pairwise distances between backbone C and N atoms; arbg
    passes the backbone heavy atoms N, CA and C (CA included) via ``backbone_indices``.

    Parameters
    ----------
    x : ndarray, shape (N, n_atoms, 3)
        Positions in nm.
    backbone_indices : ndarray, shape (b,)
        Atom indices whose pairwise distances (all ``i < j`` pairs) are features, nm.
    phi_indices, psi_indices, omega_indices : ndarray, shape (k, 4)
        Dihedral definitions; ``omega_indices`` may be None or empty.

    Returns
    -------
    ndarray, shape (N, b(b-1)/2 + 2(k_phi + k_psi + k_omega))
        Features (distances in nm, then sines, then cosines).
    """
    x = np.asarray(x, dtype=np.float64)
    bb = np.asarray(backbone_indices, dtype=np.int64).reshape(-1)
    i, j = np.triu_indices(bb.size, k=1)
    dist = np.linalg.norm(x[:, bb[i]] - x[:, bb[j]], axis=-1)
    groups = [phi_indices, psi_indices]
    if omega_indices is not None and len(omega_indices):
        groups.append(omega_indices)
    ang = np.concatenate([dihedrals(x, g) for g in groups], axis=1)
    return np.concatenate([dist, np.sin(ang), np.cos(ang)], axis=1)


@dataclass
class TicaFit:
    """A TICA projection fitted on a reference trajectory.

    Attributes
    ----------
    model : deeptime CovarianceKoopmanModel
        The fitted deeptime model (kinetic-map scaling).
    lag : int
        Lag time in frames.
    dim : int
        Number of components kept.
    koopman_reweighting : bool
        Whether Koopman reweighting (``deeptime.covariance.KoopmanWeightingEstimator``) was used
        for the covariances, as in the published recipe; False if it failed and plain TICA
        was fitted.
    """

    model: Any
    lag: int
    dim: int
    koopman_reweighting: bool

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Project features ``[N, f]`` to ``[N, dim]`` TICA coordinates."""
        return tica_project(self, features)


def fit_tica(
    ref_features: np.ndarray, lag: int = 100, dim: int = 2, koopman: bool = True
) -> TicaFit:
    """Fit TICA (deeptime, kinetic-map scaling) on a reference feature trajectory.

    Parameters
    ----------
    ref_features : ndarray, shape (T, f)
        Time-ordered features of the reference MD (see :func:`tica_features`).
    lag : int
        Lag time in frames (published default: 100).
    dim : int
        Number of TICA components (published default: 2).
    koopman : bool
        Use Koopman reweighting of the covariances (published recipe); falls back to plain TICA
        with a warning if deeptime fails.

    Returns
    -------
    TicaFit
    """
    feats = np.asarray(ref_features, dtype=np.float64)
    if feats.shape[0] <= 2 * lag:
        raise ValueError(
            f"reference trajectory has {feats.shape[0]} frames; "
            f"TICA with lag {lag} needs more than {2 * lag}"
        )
    if koopman:
        try:
            weights = KoopmanWeightingEstimator(lagtime=lag).fit(feats).fetch_model()
            model = TICA(lagtime=lag, dim=dim).fit_from_timeseries(feats, weights=weights)
            return TicaFit(model.fetch_model(), lag, dim, True)
        except Exception as exc:  # noqa: BLE001 - deeptime raises assorted numerical errors
            log.warning("Koopman-reweighted TICA failed (%s); fitting plain TICA", exc)
    model = TICA(lagtime=lag, dim=dim).fit(feats).fetch_model()
    return TicaFit(model, lag, dim, False)


def tica_project(tica: TicaFit, features: np.ndarray) -> np.ndarray:
    """Project features ``[N, f]`` onto the fitted TICA components, ``[N, dim]``."""
    out = np.asarray(tica.model.transform(np.asarray(features, dtype=np.float64)))[:, : tica.dim]
    if out.shape[1] < tica.dim:  # deeptime keeps fewer components for (near-)degenerate data
        log.warning("TICA kept %d of %d components; padding with zeros", out.shape[1], tica.dim)
        out = np.concatenate([out, np.zeros((len(out), tica.dim - out.shape[1]))], axis=1)
    return out
