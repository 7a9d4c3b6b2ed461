"""Coordinates: from a conformation in nm to the model's tokens and back, with exact Jacobians.

Two maps, read in order: the standardization (:class:`Standardization`: translation removal or the
gauge frame, one scalar std) takes a conformation ``x`` [n, 3] nm to ``D`` standardized
coordinates ``z``; the binning (:class:`Binning`) takes each ``z_j`` to one of ``L`` uniform bins.
De-quantizing uniformly inside a bin makes the model's categorical a density, so

    log q(x) = sum_j log p(b_j | b_<j) - D log(width) + log J(z),

with ``log J`` the Jacobian of :meth:`Standardization.log_det` (assembled in one place,
:func:`arbg.sampling.sampler.log_q`).

Per-frame preprocessing: translation removal, scalar standardization and random rotations.

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
the training frames (following the published preprocessing, see ``docs/references.md``,
Table A.5 "Std"), and during training frames are randomly rotated (the target is rotation
invariant, so rotation is a free data augmentation).

The gauge frame (``frame="gauge"``, an arbg addition)
-----------------------------------------------------
Rotation augmentation makes the model learn rotational equivariance from data, which a small model
trained briefly does poorly. The gauge frame removes the six external degrees of freedom exactly
instead. Three *gauge atoms* (A, B, C), by default N, CA, C of the central residue, fix the frame:
A at the origin, B on the +x axis, C in the xy half-plane with y > 0. The six fixed coordinates
(A's x, y, z; B's y, z; C's z) are not modelled, so the model sees ``D = 3n - 6`` coordinates (in
canonical atom order, atom-major) and needs no augmentation.

Density. Write a conformation as ``x_i = R g_i + t`` with gauge coordinates ``g`` (``g_A = 0``,
``g_B = (a, 0, 0)``, ``g_C = (b, c, 0)``, ``a, c > 0``), a rotation ``R`` and a translation ``t``.
The Lebesgue measure factorises as ``dx = a^2 c dg dR dt`` with the Haar measure ``dR`` of total
mass ``8 pi^2`` (``x_B - x_A = a u`` in spherical coordinates about A; ``x_C`` in cylindrical
coordinates about the axis ``u``). A sample ``g ~ q_g`` composed with a Haar-uniform rotation
therefore has the density

    q(x) = q_g(g) / (8 pi^2 a^2 c)

on the translation-reduced space (Lebesgue measure on the 3(n-1) coordinates ``x_i - x_A``,
``i != A``; a constant factor away from the centred-space convention above, irrelevant for
self-normalised weights). :meth:`Standardization.log_det` returns this conformation-dependent
Jacobian; the rotation itself is never drawn because every quantity arbg computes from a sample
(energy, dihedrals, distances) is rotation invariant. Mirror images stay in the gauge (``-x``
re-canonicalises to ``z -> -z``), so the chirality policies of :mod:`arbg.sampling.sampler` apply
unchanged.

Bond offsets (``parents``, an arbg addition; gauge frame only)
--------------------------------------------------------------
A Cartesian model places every atom in absolute gauge coordinates, so a bond length is the
difference of two far-apart model outputs, and the model must compute that difference to a few
pm. With ``parents`` (each atom's earlier bonded neighbour, :meth:`PeptideSystem.bond_parents`)
an atom's modelled coordinates are its offset from its parent, ``r_k = g_k - g_parent(k)``
(the gauge atoms stay absolute, so the fixed zeros and the gauge Jacobian are unchanged; so do
the heavy atoms before the gauge, whose chain of offsets would otherwise have to close on the
gauge atom at the origin, putting its summed errors into one bond). Bond lengths become the
norm of three consecutive tokens and bond angles relate two nearby triples. Every parent
precedes its child, so the map ``g -> r`` is unit lower-triangular: its Jacobian is 1, ``log q``
is assembled exactly as above, and a prefix of tokens still determines the positions of the
atoms it covers (twisted SMC).

Local frames (``frame_refs``, with bond offsets)
------------------------------------------------
In the gauge axes a bond vector points anywhere as the molecule flexes, so the model must learn
each bond's direction anew for every conformation of the atoms before it. With ``frame_refs``
an atom's offset is written in a frame built from three earlier atoms: its parent ``p`` and two
atoms ``(b, c)`` (:meth:`PeptideSystem.frame_refs`), ``e1 = (g_p - g_b) / |g_p - g_b|``, ``e2``
the unit part of ``g_c - g_p`` orthogonal to ``e1``, ``e3 = e1 x e2``; the tokens are
``(e1 . r, e2 . r, e3 . r)`` for ``r = g_k - g_p``. The first token is then ``-|r| cos`` of the
bond angle at ``p`` and the other two turn with one dihedral, which for most atoms (a CH3's
second hydrogen, a carbonyl O, an sp2 N) is fixed by the geometry: the same narrow
conditional in every conformation. The frame depends only on earlier atoms and is a rotation,
so the map stays block lower-triangular with orthogonal diagonal blocks: Jacobian 1 again,
``log q`` unchanged in form, prefixes still fix their atoms. A mirror image flips the third token
of every atom, as it flips the third gauge coordinate without local frames.

Where the gauge atoms sit matters with offsets: with the central residue's N, CA, C
(:attr:`PeptideSystem.gauge_atoms`) the heavy atoms before them stay absolute, and on
Ace-AAA-Nme their bonds were the worst of the proposal (C-O of the Ace cap 9 standard deviations
off at the 90th percentile). ``arbg train --gauge start`` puts the gauge on the first three heavy
atoms (:attr:`PeptideSystem.start_gauge_atoms`), so every other atom is an offset.

Binning
-------
Uniform-bin tokenizer for standardized coordinates, with an exact piecewise-constant density.

Each standardized coordinate ``z`` (see :mod:`arbg.nn.coordinates`) is mapped to one of ``L``
uniform
bins over ``[low, high)``. The model outputs a categorical over the bins; de-quantizing uniformly
inside the chosen bin turns it into a piecewise-constant density on R^D with

    log q_z(z) = sum_j log p(b_j | b_<j) - D log(width),

and the density of the centred conformation in nm adds the standardization Jacobian
(:attr:`arbg.nn.coordinates.Standardization.log_det_forward`). This follows the uniform binning of
the
ARBG paper (``docs/references.md``, Sec. 3 and Table A.5).

De-quantization is uniform inside the bin (:meth:`Binning.decode`), the only choice with a
density; bin centres (:attr:`Binning.centres`) are for plots and tests, never for log q.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor

# --------------------------------------------------------------------------------------------------
# standardization

FRAMES = ("centroid", "gauge")
_LOG_HAAR = math.log(8 * math.pi**2)


@dataclass(frozen=True)
class Standardization:
    """Removal of the external degrees of freedom and scalar scaling.

    Parameters
    ----------
    std_nm : float
        Scalar standard deviation (nm) of the centred training coordinates.
    n_atoms : int
        Number of atoms ``n``.
    frame : {"centroid", "gauge"}
        ``"centroid"`` (published): centre of geometry removed, the last atom dropped, ``3(n-1)``
        coordinates, rotations by augmentation. ``"gauge"``: translation and rotation fixed by
        ``gauge_atoms``, ``3n - 6`` coordinates (module docstring).
    gauge_atoms : (A, B, C) atom indices (canonical order), required for ``frame="gauge"``.
    parents : per atom, the earlier atom whose position its coordinates are offsets from, or -1
        for absolute coordinates (gauge frame only; the gauge atoms are -1; module docstring,
        "Bond offsets"). None: every atom absolute.
    frame_refs : per atom, two earlier atoms ``(b, c)`` that orient the local frame of its offset
        from its parent, or ``(-1, -1)`` for the gauge axes (needs ``parents``; module docstring,
        "Local frames"). None: every offset in the gauge axes.
    """

    std_nm: float
    n_atoms: int
    frame: str = "centroid"
    gauge_atoms: tuple[int, int, int] | None = None
    parents: tuple[int, ...] | None = None
    frame_refs: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"unknown frame {self.frame!r}; choose from {FRAMES}")
        if self.frame == "gauge":
            g = self.gauge_atoms
            if g is None or len(g) != 3 or len(set(g)) != 3:
                raise ValueError(f"frame='gauge' needs three distinct gauge atoms, got {g}")
            if not all(0 <= int(i) < self.n_atoms for i in g):
                raise ValueError(f"gauge atoms {g} out of range for {self.n_atoms} atoms")
            object.__setattr__(self, "gauge_atoms", tuple(int(i) for i in g))
            if self.n_atoms < 3:
                raise ValueError("the gauge frame needs at least 3 atoms")
        if self.parents is not None:
            par = tuple(int(p) for p in self.parents)
            if self.frame != "gauge":
                raise ValueError("bond offsets (parents) need the gauge frame")
            if len(par) != self.n_atoms:
                raise ValueError(f"{len(par)} parents for {self.n_atoms} atoms")
            bad = [k for k, p in enumerate(par) if not -1 <= p < k]
            if bad:
                raise ValueError(f"atom {bad[0]}'s parent {par[bad[0]]} does not precede it")
            if any(par[g] != -1 for g in self.gauge_atoms):  # type: ignore[union-attr]
                raise ValueError("the gauge atoms must have absolute coordinates (parent -1)")
            object.__setattr__(self, "parents", par)
        if self.frame_refs is not None:
            if self.parents is None:
                raise ValueError("local frames (frame_refs) need bond offsets (parents)")
            refs = tuple((int(b), int(c)) for b, c in self.frame_refs)
            if len(refs) != self.n_atoms:
                raise ValueError(f"{len(refs)} frame_refs for {self.n_atoms} atoms")
            for k, ((b, c), p) in enumerate(zip(refs, self.parents, strict=True)):
                if (b, c) == (-1, -1):
                    continue
                if p < 0 or not (0 <= b < k and 0 <= c < k) or len({p, b, c}) != 3:
                    raise ValueError(
                        f"atom {k}'s frame atoms {(b, c)} must be two distinct earlier atoms "
                        f"other than its parent {p}"
                    )
            object.__setattr__(self, "frame_refs", refs)

    @property
    def n_coords(self) -> int:
        """Number of modelled coordinates: ``3(n-1)`` (centroid) or ``3n - 6`` (gauge)."""
        return 3 * (self.n_atoms - 1) if self.frame == "centroid" else 3 * self.n_atoms - 6

    @property
    def coord_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(atom, axis) of each modelled coordinate, int arrays [D], atom-major order."""
        atom = np.repeat(np.arange(self.n_atoms), 3)
        axis = np.tile(np.arange(3), self.n_atoms)
        keep = np.ones(3 * self.n_atoms, dtype=bool)
        if self.frame == "centroid":
            keep[-3:] = False
        else:
            a, b, c = self.gauge_atoms  # type: ignore[misc]
            keep[[3 * a, 3 * a + 1, 3 * a + 2, 3 * b + 1, 3 * b + 2, 3 * c + 2]] = False
        return atom[keep], axis[keep]

    def coords_before_atom(self, k: int) -> int:
        """Number of modelled coordinates that belong to atoms ``0 .. k-1``."""
        atom, _ = self.coord_index
        return int(np.count_nonzero(atom < int(k)))

    @property
    def log_det_forward(self) -> float:
        """Constant part of the log-Jacobian: ``-D log(std)``.

        With this, ``log q_x(x) = log q_z(z) + log_det_forward`` for the density of the centred
        conformation in nm (with respect to the Lebesgue measure on the first ``3(n-1)`` centred
        coordinates). In the gauge frame add the conformation-dependent part, see :meth:`log_det`.
        """
        return -self.n_coords * math.log(self.std_nm)

    def log_det(self, z: ArrayLike | None = None, n_tokens: int | None = None) -> Any:
        """Log-Jacobian ``log q_x - log q_z`` per conformation, or of the prefix of its first
        ``n_tokens`` tokens.

        Parameters
        ----------
        z : [B, D] standardized coordinates; needed for the gauge frame.
        n_tokens : int, optional
            Prefix length ``k`` (default ``D``): ``-k log(std)``, and in the gauge frame the
            conformation-dependent part once both gauge tokens ``a`` and ``c`` are in the prefix
            (the prefix densities of the twisted SMC; the full ``D`` gives the density of ``x``).

        Returns
        -------
        float (centroid frame, or no ``z``) or np.ndarray [B] float64 (gauge frame):
        ``-D log(std) - log(8 pi^2) - 2 log(a) - log(c)`` with ``a, c`` in nm (module docstring).
        """
        if n_tokens is not None and int(n_tokens) != self.n_coords:
            k = int(n_tokens)
            if not 0 <= k <= self.n_coords:
                raise ValueError(f"n_tokens must be in [0, {self.n_coords}], got {k}")
            partial = -k * math.log(self.std_nm)
            if self.frame == "centroid" or k <= max(self.gauge_token_index):
                return partial
            return self.log_det(z) - self.log_det_forward + partial
        if self.frame == "centroid":
            return self.log_det_forward
        if z is None:
            raise ValueError("the gauge-frame Jacobian depends on the conformation: pass z")
        zz = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
        ia, ic = self.gauge_token_index
        a = np.abs(zz[..., ia]) * self.std_nm
        c = np.abs(zz[..., ic]) * self.std_nm
        with np.errstate(divide="ignore"):
            return self.log_det_forward - _LOG_HAAR - 2 * np.log(a) - np.log(c)

    @property
    def gauge_token_index(self) -> tuple[int, int]:
        """Token indices of ``a`` (B's x) and ``c`` (C's y) in the gauge frame."""
        _, b, c = self.gauge_atoms  # type: ignore[misc]
        atom, axis = self.coord_index
        ia = int(np.flatnonzero((atom == b) & (axis == 0))[0])
        ic = int(np.flatnonzero((atom == c) & (axis == 1))[0])
        return ia, ic

    def to_gauge(self, x: ArrayLike) -> ArrayLike:
        """Translate and rotate frames into the gauge (A at 0, B on +x, C in the y > 0 plane).

        Parameters
        ----------
        x : [B, n, 3] nm (numpy or torch)

        Returns
        -------
        [B, n, 3] float64 nm (same library); a frame whose gauge atoms are collinear gets NaN.
        """
        a, b, c = self.gauge_atoms  # type: ignore[misc]
        if isinstance(x, torch.Tensor):
            return torch.as_tensor(self.to_gauge(x.detach().cpu().numpy()), device=x.device)
        x64 = np.asarray(x, dtype=np.float64)
        xr = x64 - x64[..., a : a + 1, :]  # [B, n, 3]
        e1 = xr[..., b, :] / np.linalg.norm(xr[..., b, :], axis=-1, keepdims=True)  # [B, 3]
        v = xr[..., c, :] - np.sum(xr[..., c, :] * e1, axis=-1, keepdims=True) * e1
        e2 = v / np.linalg.norm(v, axis=-1, keepdims=True)
        e3 = np.cross(e1, e2)
        R = np.stack([e1, e2, e3], axis=-2)  # [B, 3, 3], rows = new axes
        g = np.einsum("...ij,...nj->...ni", R, xr)
        # exact zeros on the fixed coordinates (rounding leaves ~1e-17)
        g[..., a, :] = 0.0
        g[..., b, 1:] = 0.0
        g[..., c, 2] = 0.0
        return g

    def forward(self, x: ArrayLike) -> ArrayLike:
        """Remove the external degrees of freedom, scale and flatten frames.

        Parameters
        ----------
        x : np.ndarray or torch.Tensor, shape [B, n, 3], nm

        Returns
        -------
        z : same library as ``x``, shape [B, D], standardized units
            Computed in float64; numpy output is float64, torch output keeps ``x.dtype``
            (float64 in, float64 out).
        """
        if x.shape[-2:] != (self.n_atoms, 3):
            raise ValueError(f"expected frames [B, {self.n_atoms}, 3], got {tuple(x.shape)}")
        if self.frame == "gauge":
            atom, axis = self.coord_index
            if isinstance(x, torch.Tensor):
                dtype = x.dtype if x.is_floating_point() else torch.float64
                g = torch.as_tensor(self._offsets(self.to_gauge(x.detach().cpu().numpy())))
                return (g[..., atom, axis] / self.std_nm).to(dtype=dtype, device=x.device)
            return self._offsets(self.to_gauge(x))[..., atom, axis] / self.std_nm
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
        """Undo :meth:`forward`.

        Centroid frame: the last atom is placed from the centring constraint. Gauge frame: the
        modelled coordinates are scattered into the gauge (fixed coordinates are zero).

        Parameters
        ----------
        z : np.ndarray or torch.Tensor, shape [B, D], standardized units

        Returns
        -------
        x : same library as ``z``, shape [B, n, 3], nm, centred on the centre of geometry
            (centroid) or in the gauge (float64 for numpy; torch keeps ``z.dtype``, computed in
            float64).
        """
        if z.shape[-1] != self.n_coords:
            raise ValueError(f"expected [B, {self.n_coords}] coordinates, got {tuple(z.shape)}")
        if self.frame == "gauge":
            atom, axis = self.coord_index
            if isinstance(z, torch.Tensor):
                dtype = z.dtype if z.is_floating_point() else torch.float64
                x = torch.zeros(
                    *z.shape[:-1], self.n_atoms, 3, dtype=torch.float64, device=z.device
                )
                x[..., atom, axis] = z.to(torch.float64) * self.std_nm
                return self._absolute(x).to(dtype)
            zz = np.asarray(z, dtype=np.float64)
            x = np.zeros((*zz.shape[:-1], self.n_atoms, 3))
            x[..., atom, axis] = zz * self.std_nm
            return self._absolute(x)
        if isinstance(z, torch.Tensor):
            dtype = z.dtype if z.is_floating_point() else torch.float64
            head = z.to(torch.float64).reshape(*z.shape[:-1], self.n_atoms - 1, 3)  # [B, n-1, 3]
            last = -head.sum(dim=-2, keepdim=True)  # [B, 1, 3]
            return (torch.cat([head, last], dim=-2) * self.std_nm).to(dtype)
        head = np.asarray(z, dtype=np.float64).reshape(*z.shape[:-1], self.n_atoms - 1, 3)
        last = -head.sum(axis=-2, keepdims=True)  # [B, 1, 3]
        return np.concatenate([head, last], axis=-2) * self.std_nm

    def _offsets(self, g: np.ndarray) -> np.ndarray:
        """Gauge positions [..., n, 3] -> modelled per-atom vectors (offsets from parents, in
        their local frames where ``frame_refs`` gives one)."""
        if self.parents is None:
            return g
        par = np.asarray(self.parents)
        child = np.flatnonzero(par >= 0)
        r = g.copy()
        r[..., child, :] -= g[..., par[child], :]
        if self.frame_refs is not None:
            refs = np.asarray(self.frame_refs)  # [n, 2]
            loc = np.flatnonzero(refs[:, 0] >= 0)
            axes = local_axes(g[..., par[loc], :], g[..., refs[loc, 0], :], g[..., refs[loc, 1], :])
            r[..., loc, :] = np.einsum("...mij,...mj->...mi", axes, r[..., loc, :])
        return r

    def _absolute(self, r: ArrayLike) -> ArrayLike:
        """Inverse of :meth:`_offsets` (parents and frame atoms precede children: one pass in
        atom order)."""
        if self.parents is None:
            return r
        if self.frame_refs is not None and isinstance(r, torch.Tensor):
            return torch.as_tensor(self._absolute(r.cpu().numpy()), device=r.device)
        refs = self.frame_refs
        for k, p in enumerate(self.parents):
            if p < 0:
                continue
            if refs is not None and refs[k][0] >= 0:
                b, c = refs[k]
                axes = local_axes(r[..., p, :], r[..., b, :], r[..., c, :])  # [..., 3, 3] rows
                r[..., k, :] = np.einsum("...ij,...i->...j", axes, r[..., k, :])
            r[..., k, :] += r[..., p, :]
        return r

    def atom_radius(self, z: np.ndarray) -> float:
        """Largest ``|coordinate|`` range needed for bins, std units (see ``fit_binning``).

        Centroid frame: the largest atom distance from the centre (any axis can point anywhere
        after rotation). Gauge frame: the largest absolute modelled coordinate (no rotations;
        ``-x`` maps to ``z -> -z``, covered by a symmetric range).
        """
        zz = np.asarray(z, dtype=np.float64)
        if self.frame == "gauge":
            return float(np.abs(zz).max())
        x = self.inverse(zz) / self.std_nm  # [F, n, 3]
        return float(np.linalg.norm(x, axis=-1).max())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation."""
        d = asdict(self)
        d["gauge_atoms"] = None if self.gauge_atoms is None else list(self.gauge_atoms)
        d["parents"] = None if self.parents is None else list(self.parents)
        d["frame_refs"] = None if self.frame_refs is None else [list(r) for r in self.frame_refs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardization:
        """Inverse of :meth:`to_dict` (a record without ``frame`` is refused: no guessing)."""
        missing = [k for k in ("std_nm", "n_atoms", "frame") if k not in d]
        if missing:
            raise ValueError(f"standardization record lacks {', '.join(missing)}: {d}")
        g, par, refs = d.get("gauge_atoms"), d.get("parents"), d.get("frame_refs")
        return cls(
            std_nm=float(d["std_nm"]),
            n_atoms=int(d["n_atoms"]),
            frame=str(d["frame"]),
            gauge_atoms=None if g is None else tuple(int(i) for i in g),
            parents=None if par is None else tuple(int(i) for i in par),
            frame_refs=None if refs is None else tuple((int(b), int(c)) for b, c in refs),
        )


def local_axes(origin: np.ndarray, back: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Orthonormal frames from three points (module docstring, "Local frames").

    Parameters
    ----------
    origin, back, side : [..., 3] positions of the parent ``p`` and the frame atoms ``b``, ``c``

    Returns
    -------
    [..., 3, 3] float64, rows ``e1 = (p - b)/|p - b|``, ``e2`` = the unit part of ``c - p``
    orthogonal to ``e1``, ``e3 = e1 x e2`` (right-handed). Degenerate input (coincident or
    collinear points, as in the not yet generated atoms of a prefix) gives zero rows, not NaN.
    """

    def unit(v: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(v, axis=-1, keepdims=True)
        return np.divide(v, n, out=np.zeros_like(v), where=n > 1e-12)

    e1 = unit(np.asarray(origin, dtype=np.float64) - back)
    v = np.asarray(side, dtype=np.float64) - origin
    e2 = unit(v - np.sum(v * e1, axis=-1, keepdims=True) * e1)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=-2)


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


def fit_standardization(
    frames: np.ndarray,
    frame: str = "centroid",
    gauge_atoms: tuple[int, int, int] | None = None,
    parents: Sequence[int] | None = None,
    frame_refs: np.ndarray | Sequence[Sequence[int]] | None = None,
) -> Standardization:
    """Fit one scalar standard deviation of the centred training coordinates.

    Parameters
    ----------
    frames : np.ndarray, shape [F, n, 3], nm
    frame, gauge_atoms : see :class:`Standardization`
    parents : bond offsets (:meth:`arbg.chem.systems.PeptideSystem.bond_parents`; gauge frame,
        the gauge atoms -1); None: absolute coordinates
    frame_refs : local frames of the offsets (:meth:`arbg.chem.systems.PeptideSystem.frame_refs`,
        [n, 2]); None: the gauge axes

    Returns
    -------
    Standardization
        ``std_nm`` is the root mean square of all centred coordinates (the mean is zero by
        construction), pooled over frames, atoms and axes (the same in both frames, so bin
        widths in nm are comparable).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, n, 3], got {frames.shape}")
    xc = centre_frames(frames)
    std = float(np.sqrt(np.mean(xc**2)))
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"cannot standardize: std = {std}")
    logger.info(
        "standardization: std = %.4f nm over %d frames (%s frame)", std, frames.shape[0], frame
    )
    return Standardization(
        std_nm=std,
        n_atoms=int(frames.shape[1]),
        frame=frame,
        gauge_atoms=gauge_atoms,
        parents=None if parents is None else tuple(int(p) for p in parents),
        frame_refs=None if frame_refs is None else tuple((int(b), int(c)) for b, c in frame_refs),
    )


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


# --------------------------------------------------------------------------------------------------
# binning


def default_n_bins(n_atoms: int) -> int:
    """Published default bin count: 4096 up to ~40 atoms, 8192 above (paper Table A.5)."""
    return 4096 if n_atoms <= 40 else 8192


@dataclass(frozen=True)
class Binning:
    """Uniform bins over ``[low, high)`` in standardized units.

    Parameters
    ----------
    n_bins : int
        Number of bins ``L``.
    low, high : float
        Range of the bins (standardized units, i.e. multiples of the data std).
    """

    n_bins: int
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.n_bins < 1 or not self.high > self.low:
            raise ValueError(f"invalid binning {self}")

    @property
    def width(self) -> float:
        """Bin width (standardized units)."""
        return (self.high - self.low) / self.n_bins

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, shape [L+1], float64."""
        return self.low + self.width * np.arange(self.n_bins + 1, dtype=np.float64)

    @property
    def centres(self) -> np.ndarray:
        """Bin centres, shape [L], float64."""
        return self.low + self.width * (np.arange(self.n_bins, dtype=np.float64) + 0.5)

    def encode(self, z: ArrayLike) -> tuple[ArrayLike, int]:
        """Map standardized coordinates to bin indices.

        Values outside ``[low, high)`` (and non-finite values) are clipped to the end bins; they are
        counted and a warning is logged, because clipping changes the likelihood.

        Parameters
        ----------
        z : np.ndarray or torch.Tensor, any shape, standardized units

        Returns
        -------
        bins : int64 array/tensor, same shape as ``z``, values in [0, L)
        n_clipped : int
            Number of clipped entries.
        """
        if isinstance(z, torch.Tensor):
            z64 = z.to(torch.float64)
            outside = ~((z64 >= self.low) & (z64 < self.high))
            n_clipped = int(outside.sum())
            idx = torch.floor((z64 - self.low) / self.width)
            idx = torch.nan_to_num(idx, nan=0.0)
            bins = idx.clamp(0, self.n_bins - 1).to(torch.int64)
        else:
            z64 = np.asarray(z, dtype=np.float64)
            outside = ~((z64 >= self.low) & (z64 < self.high))
            n_clipped = int(outside.sum())
            with np.errstate(invalid="ignore"):
                idx = np.floor((z64 - self.low) / self.width)
            idx = np.nan_to_num(idx, nan=0.0, posinf=self.n_bins - 1, neginf=0.0)
            bins = np.clip(idx, 0, self.n_bins - 1).astype(np.int64)
        if n_clipped:
            logger.warning(
                "binning: %d of %d values outside [%.3f, %.3f) clipped to the end bins",
                n_clipped,
                outside.size if isinstance(outside, np.ndarray) else outside.numel(),
                self.low,
                self.high,
            )
        return bins, n_clipped

    def decode(
        self,
        bins: ArrayLike,
        generator: torch.Generator | np.random.Generator | None = None,
    ) -> ArrayLike:
        """Uniform de-quantization: bin start + U(0, w), the draw whose density is exact.

        Parameters
        ----------
        bins : int array/tensor, any shape, values in [0, L)
        generator : torch.Generator or np.random.Generator, optional
            Source of the uniform offsets. Torch ``bins`` need a torch generator (or None);
            numpy ``bins`` accept either.

        Returns
        -------
        z : float64, same library and shape as ``bins``, standardized units
        """
        if isinstance(bins, torch.Tensor):
            if isinstance(generator, np.random.Generator):
                u = torch.from_numpy(generator.random(tuple(bins.shape))).to(bins.device)
            else:
                u = torch.rand(
                    bins.shape, generator=generator, dtype=torch.float64, device=bins.device
                )
            return self.low + (bins.to(torch.float64) + u) * self.width
        b = np.asarray(bins)
        if isinstance(generator, torch.Generator):
            u = torch.rand(b.shape, generator=generator, dtype=torch.float64).numpy()
        else:
            u = (generator if generator is not None else np.random.default_rng()).random(b.shape)
        return self.low + (b.astype(np.float64) + u) * self.width

    def token_floor(self, standardization: Standardization) -> np.ndarray | None:
        """Lowest allowed bin per token: the gauge frame's ``a`` and ``c`` must be positive.

        Returns
        -------
        int64 array [D] (zero except the two gauge tokens, which start at the first bin whose
        lower edge is >= 0), or None for frames without constraints.
        """
        if standardization.frame != "gauge":
            return None
        floor = np.zeros(standardization.n_coords, dtype=np.int64)
        first = int(np.searchsorted(self.edges, -1e-12 * self.width))  # first edge >= ~0
        if not 0 < first < self.n_bins:
            raise ValueError(f"bin range [{self.low}, {self.high}) does not straddle 0")
        floor[list(standardization.gauge_token_index)] = first
        return floor

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Binning:
        """Inverse of :meth:`to_dict`."""
        return cls(n_bins=int(d["n_bins"]), low=float(d["low"]), high=float(d["high"]))


def max_atom_radius(z_train: np.ndarray) -> float:
    """Largest distance of any atom from the centre of geometry, in std units.

    Parameters
    ----------
    z_train : np.ndarray, shape [F, 3(n-1)], standardized coordinates (last atom dropped)

    Returns
    -------
    float
        ``max_{f,i} |x_fi|`` over all n atoms (the last one rebuilt from the centring constraint).
    """
    z = np.asarray(z_train, dtype=np.float64)
    head = z.reshape(z.shape[0], -1, 3)  # [F, n-1, 3]
    last = -head.sum(axis=1, keepdims=True)  # [F, 1, 3]
    r = np.linalg.norm(np.concatenate([head, last], axis=1), axis=-1)  # [F, n]
    return float(r.max())


def fit_binning(
    z_train: np.ndarray,
    n_bins: int | None = None,
    n_atoms: int | None = None,
    margin: float = 1.1,
    standardization: Standardization | None = None,
) -> Binning:
    """Choose a symmetric bin range from the training data.

    With random-rotation augmentation any axis can point anywhere, so the range must cover the
    largest *distance* of any atom from the centre (not the per-axis extremes of the unrotated
    data), times a safety ``margin``. The bin widths of the paper's Table A.5 (e.g. aldp: std
    0.163 nm, 0.358 pm per bin, 4096 bins) imply a range of about +-4.5 std
    (``docs/references.md``). In the gauge frame (no rotations) the range covers the
    largest absolute modelled coordinate instead (:meth:`Standardization.atom_radius`).

    Parameters
    ----------
    z_train : np.ndarray, shape [F, D], standardized training coordinates
    n_bins : int, optional
        Default :func:`default_n_bins` of the atom count.
    n_atoms : int, optional
        Default ``3(n-1) / 3 + 1`` from ``z_train`` (centroid frame) or the standardization's.
    margin : float
        Multiplicative margin on the largest radius.
    standardization : Standardization, optional
        The frame of ``z_train``; default: a centroid frame.

    Returns
    -------
    Binning with ``low = -high``.
    """
    z = np.asarray(z_train, dtype=np.float64)
    if standardization is not None:
        if z.ndim != 2 or z.shape[1] != standardization.n_coords:
            raise ValueError(f"expected z_train [F, {standardization.n_coords}], got {z.shape}")
        n_atoms = standardization.n_atoms if n_atoms is None else n_atoms
        radius = standardization.atom_radius(z)
    else:
        if z.ndim != 2 or z.shape[1] % 3:
            raise ValueError(f"expected z_train [F, 3(n-1)], got {z.shape}")
        radius = max_atom_radius(z)
    if n_atoms is None:
        n_atoms = z.shape[1] // 3 + 1
    if n_bins is None:
        n_bins = default_n_bins(n_atoms)
    r = radius * margin
    binning = Binning(n_bins=int(n_bins), low=-r, high=r)
    logger.info("binning: %d bins over +-%.3f std (width %.3g std)", n_bins, r, binning.width)
    return binning


def _w2_1d(a: np.ndarray, b: np.ndarray) -> float:
    """Exact squared 1-D Wasserstein-2 distance between two empirical distributions.

    Integrates ``(F_a^{-1}(t) - F_b^{-1}(t))^2`` over t in (0, 1) exactly, using the union of the
    quantile breakpoints of both samples (works for unequal sizes).

    Parameters
    ----------
    a, b : np.ndarray, shape [Na], [Nb], finite

    Returns
    -------
    float, W2^2 in the squared units of the inputs.
    """
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    na, nb = a.size, b.size
    if na == 0 or nb == 0:
        return float("nan")
    t = np.union1d(np.arange(1, na + 1) / na, np.arange(1, nb + 1) / nb)  # breakpoints in (0,1]
    t_prev = np.concatenate([[0.0], t[:-1]])
    mid = 0.5 * (t + t_prev)
    ia = np.minimum((mid * na).astype(np.int64), na - 1)
    ib = np.minimum((mid * nb).astype(np.int64), nb - 1)
    return float(np.sum((t - t_prev) * (a[ia] - b[ib]) ** 2))


def quantization_bound(
    frames_nm: np.ndarray,
    standardization: Standardization,
    n_bins_list: Sequence[int],
    energy_fn: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    margin: float = 1.1,
    binning_range: tuple[float, float] | None = None,
) -> list[dict[str, Any]]:
    """Upper-bound analysis of the discretization error (the paper's bin-count study).

    Each frame is discretized with ``L`` bins, de-quantized uniformly inside its bins and mapped
    back to nm; the shift of the reduced-energy distribution against the original frames (E-W2)
    is a lower bound on the error any model with that binning can reach, so it tells how many bins
    a system needs.

    Parameters
    ----------
    frames_nm : np.ndarray, shape [F, n, 3], nm
    standardization : Standardization
    n_bins_list : sequence of int
        Bin counts ``L`` to test.
    energy_fn : callable
        ``energy_fn(x[B, n, 3] nm) -> u[B]`` reduced energies (kT); non-finite values allowed.
    rng : np.random.Generator
        Source of the de-quantization noise.
    margin : float
        Range margin passed to :func:`fit_binning` (ignored with ``binning_range``).
    binning_range : (low, high), optional
        Fixed range in std units instead of fitting one.

    Returns
    -------
    list of dict, one per L, with keys ``n_bins``, ``low``, ``high``, ``bin_width_pm``,
    ``e_w2`` (kT), ``mean_shift`` (kT, mean dequantized minus mean original), ``n_clipped``,
    ``n_nonfinite_ref``, ``n_nonfinite_dequant``, ``n_frames``.
    """
    frames = np.asarray(frames_nm, dtype=np.float64)
    z = standardization.forward(frames)  # [F, 3(n-1)]
    u_ref = np.asarray(energy_fn(frames), dtype=np.float64)
    ref_ok = np.isfinite(u_ref)
    results: list[dict[str, Any]] = []
    for n_bins in n_bins_list:
        if binning_range is None:
            binning = fit_binning(z, n_bins=n_bins, margin=margin, standardization=standardization)
        else:
            binning = Binning(int(n_bins), float(binning_range[0]), float(binning_range[1]))
        bins, n_clipped = binning.encode(z)
        z_dq = binning.decode(bins, generator=rng)
        x_dq = standardization.inverse(z_dq)  # [F, n, 3] nm
        u_dq = np.asarray(energy_fn(x_dq), dtype=np.float64)
        dq_ok = np.isfinite(u_dq)
        w2sq = _w2_1d(u_ref[ref_ok], u_dq[dq_ok])
        res = {
            "n_bins": int(n_bins),
            "low": binning.low,
            "high": binning.high,
            "bin_width_pm": binning.width * standardization.std_nm * 1000.0,
            "e_w2": math.sqrt(w2sq) if np.isfinite(w2sq) else float("nan"),
            "mean_shift": float(u_dq[dq_ok].mean() - u_ref[ref_ok].mean())
            if dq_ok.any() and ref_ok.any()
            else float("nan"),
            "n_clipped": int(n_clipped),
            "n_nonfinite_ref": int((~ref_ok).sum()),
            "n_nonfinite_dequant": int((~dq_ok).sum()),
            "n_frames": int(frames.shape[0]),
        }
        logger.info("quantization bound: %s", res)
        results.append(res)
    return results


def format_bound_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rows of :func:`quantization_bound` as a text table (bins, width, E-W2, clipped)."""
    lines = [f"{'bins':>6s} {'width (pm)':>11s} {'E-W2 (kT)':>10s} {'clipped':>8s}"]
    for r in rows:
        lines.append(
            f"{r['n_bins']:6d} {r['bin_width_pm']:11.3f} {r['e_w2']:10.3f} {r['n_clipped']:8d}"
        )
    return lines
