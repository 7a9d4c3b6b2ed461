"""Per-frame preprocessing: translation removal, scalar standardization and random rotations.

Translation treatment
---------------------
The Boltzmann density of a peptide in vacuum or implicit solvent is invariant under global
translations, so it is not normalisable over all 3n Cartesian coordinates. ARBG therefore models
the *centred* configuration space, a 3(n-1)-dimensional linear subspace of R^{3n}:

1. Each frame is centred on its centre of **geometry** (the unweighted mean of the atom positions),
   not its centre of mass. With mass weights the last atom would be placed from
   ``x_n = -(sum_i m_i x_i) / m_n``; if that atom is a hydrogen (mass ~1) and the others carry
   masses ~12-16, every error made on the modelled coordinates is multiplied by the mass ratio
   (~12-fold in distance, ~144-fold in squared error for C vs H), which ruins the placement of
   light atoms.
   With unweighted centring the error is spread evenly, ``x_n = -sum_{i<n} x_i``.
2. Only the first ``3(n-1)`` centred coordinates are modelled (flattened atom-major:
   atom 0 x, y, z, atom 1 x, y, z, ...). The last atom is *not* a model output: it is placed
   deterministically by the centring constraint ``sum_i x_i = 0``.
3. The map from the modelled coordinates to the centred conformation is linear and bijective onto
   the centred subspace, so ``log q`` of the model (after the constant Jacobian of the scalar
   standardization, :attr:`Standardization.log_det_forward`) is a proper density on the centred
   configuration space and self-normalised importance weights ``-u(x) - log q(x)`` are correct up
   to a constant.

Two tempting alternatives are wrong and are not supported:

* Modelling all ``3n`` centred coordinates. The last three are (almost) a deterministic function
  of the others, so the model has to put a near-delta conditional on them; its log-density then
  contains a large, conformation-dependent term (the log-probability of hitting the constraint to
  within a bin) that has nothing to do with the Boltzmann density and biases the weights.
* Modelling the raw (uncentred) coordinates and re-centring a sample after drawing it while keeping
  its ``log q``. Re-centring is a projection (many-to-one), so the density of the re-centred sample
  is the marginal of ``q`` along the translation direction, not ``q`` evaluated at the drawn point:
  the reported ``log q`` does not belong to the sample that is returned.

After centring, each coordinate is divided by one scalar standard deviation ``std_nm`` fitted on
the training frames (following the published preprocessing, see ``../shared/seeds/arbg-paper.txt``,
Table A.5 "Std"), and during training frames are randomly rotated (the target is rotation
invariant, so rotation is a free data augmentation).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Standardization:
    """Centre-of-geometry removal, scalar scaling and dropping of the last atom.

    Parameters
    ----------
    std_nm : float
        Scalar standard deviation (nm) of the centred training coordinates.
    n_atoms : int
        Number of atoms ``n``; the model sees ``3(n-1)`` coordinates.
    """

    std_nm: float
    n_atoms: int

    @property
    def n_coords(self) -> int:
        """Number of modelled coordinates, ``3(n-1)``."""
        return 3 * (self.n_atoms - 1)

    @property
    def log_det_forward(self) -> float:
        """log |det d z / d x_centred| = ``-3(n-1) log(std)``.

        With this, ``log q_x(x) = log q_z(z) + log_det_forward`` for the density of the centred
        conformation in nm (with respect to the Lebesgue measure on the first ``3(n-1)`` centred
        coordinates).
        """
        return -self.n_coords * math.log(self.std_nm)

    def forward(self, x: ArrayLike) -> ArrayLike:
        """Centre, scale and flatten frames.

        Parameters
        ----------
        x : np.ndarray or torch.Tensor, shape [B, n, 3], nm

        Returns
        -------
        z : same library as ``x``, shape [B, 3(n-1)], standardized units
            Computed in float64; numpy output is float64, torch output keeps ``x.dtype``
            (float64 in, float64 out).
        """
        if x.shape[-2:] != (self.n_atoms, 3):
            raise ValueError(f"expected frames [B, {self.n_atoms}, 3], got {tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float64
            x64 = x.to(torch.float64)
            xc = x64 - x64.mean(dim=-2, keepdim=True)  # [B, n, 3]
            z = xc[..., :-1, :].reshape(*x.shape[:-2], self.n_coords) / self.std_nm  # [B, 3(n-1)]
            return z.to(dtype)
        x64 = np.asarray(x, dtype=np.float64)
        xc = x64 - x64.mean(axis=-2, keepdims=True)  # [B, n, 3]
        return xc[..., :-1, :].reshape(*x64.shape[:-2], self.n_coords) / self.std_nm

    def inverse(self, z: ArrayLike) -> ArrayLike:
        """Undo :meth:`forward`, placing the last atom from the centring constraint.

        Parameters
        ----------
        z : np.ndarray or torch.Tensor, shape [B, 3(n-1)], standardized units

        Returns
        -------
        x : same library as ``z``, shape [B, n, 3], nm, centred on the centre of geometry
            (float64 for numpy; torch keeps ``z.dtype``, computed in float64).
        """
        if z.shape[-1] != self.n_coords:
            raise ValueError(f"expected [B, {self.n_coords}] coordinates, got {tuple(z.shape)}")
        if isinstance(z, torch.Tensor):
            dtype = z.dtype if z.is_floating_point() else torch.float64
            head = z.to(torch.float64).reshape(*z.shape[:-1], self.n_atoms - 1, 3)  # [B, n-1, 3]
            last = -head.sum(dim=-2, keepdim=True)  # [B, 1, 3]
            return (torch.cat([head, last], dim=-2) * self.std_nm).to(dtype)
        head = np.asarray(z, dtype=np.float64).reshape(*z.shape[:-1], self.n_atoms - 1, 3)
        last = -head.sum(axis=-2, keepdims=True)  # [B, 1, 3]
        return np.concatenate([head, last], axis=-2) * self.std_nm

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardization:
        """Inverse of :meth:`to_dict`."""
        return cls(std_nm=float(d["std_nm"]), n_atoms=int(d["n_atoms"]))


def centre_frames(x: np.ndarray) -> np.ndarray:
    """Subtract the centre of geometry of each frame.

    Parameters
    ----------
    x : np.ndarray, shape [F, n, 3], nm

    Returns
    -------
    np.ndarray, shape [F, n, 3], float64 nm
    """
    x64 = np.asarray(x, dtype=np.float64)
    return x64 - x64.mean(axis=-2, keepdims=True)


def fit_standardization(frames: np.ndarray) -> Standardization:
    """Fit one scalar standard deviation of the centred training coordinates.

    Parameters
    ----------
    frames : np.ndarray, shape [F, n, 3], nm

    Returns
    -------
    Standardization
        ``std_nm`` is the root mean square of all centred coordinates (the mean is zero by
        construction), pooled over frames, atoms and axes.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, n, 3], got {frames.shape}")
    xc = centre_frames(frames)
    std = float(np.sqrt(np.mean(xc**2)))
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"cannot standardize: std = {std}")
    logger.info("standardization: std = %.4f nm over %d frames", std, frames.shape[0])
    return Standardization(std_nm=std, n_atoms=int(frames.shape[1]))


def random_rotations(
    batch: int, generator: torch.Generator | np.random.Generator | None = None
) -> ArrayLike:
    """Draw rotation matrices uniformly (Haar) on SO(3).

    A unit quaternion drawn as a normalised 4-D standard Gaussian is uniform on S^3, and the
    double cover S^3 -> SO(3) maps it to the Haar measure.

    Parameters
    ----------
    batch : int
    generator : torch.Generator or np.random.Generator
        A torch generator gives a float64 torch tensor on the generator's device; a numpy
        generator (or None, a fresh default one) gives a float64 numpy array.

    Returns
    -------
    R : shape [B, 3, 3], orthonormal with det +1
    """
    if isinstance(generator, torch.Generator):
        q = torch.randn(batch, 4, generator=generator, dtype=torch.float64, device=generator.device)
        q = q / q.norm(dim=-1, keepdim=True)
        return _quat_to_matrix(q, torch.stack)
    rng = generator if generator is not None else np.random.default_rng()
    q = rng.standard_normal((batch, 4))
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return _quat_to_matrix(q, np.stack)


def _quat_to_matrix(q: ArrayLike, stack: Any) -> ArrayLike:
    """Unit quaternions [B, 4] (w, x, y, z) -> rotation matrices [B, 3, 3]."""
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    rows = [
        stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return stack(rows, -2)  # [B, 3, 3]


def rotate(x: ArrayLike, R: ArrayLike) -> ArrayLike:
    """Rotate each frame: ``x_b @ R_b^T``.

    Parameters
    ----------
    x : shape [B, n, 3]
    R : shape [B, 3, 3] (numpy or torch, matching ``x``)

    Returns
    -------
    shape [B, n, 3]; rotation is about the origin, so centred frames stay centred.
    """
    if isinstance(x, torch.Tensor):
        R = torch.as_tensor(R, dtype=x.dtype, device=x.device)
        return torch.einsum("bij,bnj->bni", R, x)
    return np.einsum("bij,bnj->bni", np.asarray(R), np.asarray(x))
