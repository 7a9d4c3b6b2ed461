"""Analytic toy targets and proposals for the tests (not part of the library).

`HarmonicChainTarget` is a 3-D chain whose Boltzmann distribution is known exactly (it
implements :class:`arbg.sampling.targets.Target`); `ChainProposal` is an exact-density
autoregressive proposal for it. Positions in nm, reduced energies in kT, angles in radians.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import integrate, stats

from arbg.chem.geometry import angles, distances
from arbg.chem.geometry import dihedrals as _dihedrals
from arbg.nn.coordinates import random_rotations as _rotations
from arbg.sampling.sampler import chirality_signs, wrong_chirality  # noqa: F401

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- chain geometry


def _chain(n: int, k: int) -> np.ndarray:
    return np.arange(n - k + 1)[:, None] + np.arange(k)[None, :]


def bond_lengths(x: np.ndarray) -> np.ndarray:
    """Consecutive distances of a chain, [B, n, 3] -> [B, n-1] (nm)."""
    return distances(x, _chain(x.shape[-2], 2))


def bond_angles(x: np.ndarray) -> np.ndarray:
    """Angles (i, i+1, i+2) of a chain, [B, n, 3] -> [B, n-2] in [0, pi] (rad)."""
    return angles(x, _chain(x.shape[-2], 3))


def dihedrals(x: np.ndarray) -> np.ndarray:
    """IUPAC dihedrals (i, i+1, i+2, i+3) of a chain, [B, n, 3] -> [B, n-3]."""
    return _dihedrals(x, _chain(x.shape[-2], 4))


def nerf_place(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    r: np.ndarray,
    theta: np.ndarray,
    phi: np.ndarray,
) -> np.ndarray:
    """Natural-extension reference frame placement (Parsons et al., 2005).

    Returns d [B, 3] with |d - c| = r, angle(b, c, d) = theta, dihedral(a, b, c, d) = phi.
    """
    bc = c - b
    bc /= np.linalg.norm(bc, axis=-1, keepdims=True)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    m = np.cross(n, bc)
    r, theta, phi = (np.asarray(v)[..., None] for v in (r, theta, phi))
    return c - r * np.cos(theta) * bc + r * np.sin(theta) * (np.cos(phi) * m + np.sin(phi) * n)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-uniform rotation matrices [n, 3, 3] (see
    :func:`arbg.nn.coordinates.random_rotations`)."""

    return np.asarray(_rotations(n, rng))


def _unit_perpendicular(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random unit vector perpendicular to each row of unit ``v`` [B, 3]."""
    g = rng.standard_normal(v.shape)
    g -= np.sum(g * v, axis=-1, keepdims=True) * v
    return g / np.linalg.norm(g, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- toy target


def _grid_inverse_cdf(
    log_density, lo: float, hi: float, n_grid: int = 20001
) -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(lo, hi, n_grid)
    ld = log_density(grid)
    p = np.exp(ld - ld.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
    return grid, cdf / cdf[-1]


@dataclass
class HarmonicChainTarget:
    """A 3-D chain of ``n_atoms`` particles with exactly known Boltzmann statistics.

    ``u(x) = sum_bonds k_b/2 (r - r0)^2 + sum_angles k_a/2 (theta - theta0)^2
    + sum_torsions [a cos(2 phi) + b sin(phi)]`` (kT).  The torsion term has two wells,
    near phi = -pi/2 (deeper for b > 0) and phi = +pi/2 ("well a", phi in (0, pi)).

    The energy is a sum of one-internal-coordinate terms and the Cartesian volume element
    (modulo translation and rotation) is ``prod r^2 dr prod sin(theta) dtheta prod dphi``,
    so bonds, angles and torsions are independent with 1-D marginals
    ``r^2 exp(-u_b)``, ``sin(theta) exp(-u_a)``, ``exp(-u_t)``: exact expectations follow
    by 1-D quadrature (`exact_observables`) and exact samples by inverse-CDF
    (`sample_exact`).

    ``boundaries = [2, ..., n_atoms - 2]``; ``prefix_energy(i, .)`` is the sum of the
    terms involving only the first ``boundaries[i]`` atoms.  The last generated prefix
    (n - 1 atoms) is not a boundary: the full energy follows immediately, and the
    last atom of a centred model is placed from the centring constraint.
    """

    n_atoms: int = 6
    k_bond: float = 5000.0  # kT / nm^2
    r0: float = 0.15  # nm
    k_angle: float = 20.0  # kT / rad^2
    theta0: float = 1.91  # rad
    torsion_a: float = 2.0  # kT
    torsion_b: float = 0.75  # kT
    boundaries: list[int] = field(init=False)
    chirality_atoms: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_atoms < 4:
            raise ValueError("HarmonicChainTarget needs at least 4 atoms (one torsion)")
        self.boundaries = list(range(2, self.n_atoms - 1))
        self.chirality_atoms = np.zeros((0, 4), dtype=np.int64)
        self._sampler_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- energy terms (vectorized over any shape)
    def bond_energy(self, r: np.ndarray) -> np.ndarray:
        return 0.5 * self.k_bond * (r - self.r0) ** 2

    def angle_energy(self, theta: np.ndarray) -> np.ndarray:
        return 0.5 * self.k_angle * (theta - self.theta0) ** 2

    def torsion_energy(self, phi: np.ndarray) -> np.ndarray:
        return self.torsion_a * np.cos(2.0 * phi) + self.torsion_b * np.sin(phi)

    @property
    def bond_sigma(self) -> float:
        return float(1.0 / np.sqrt(self.k_bond))

    @property
    def angle_sigma(self) -> float:
        return float(1.0 / np.sqrt(self.k_angle))

    def _chain_energy(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"expected positions [B, m, 3], got {x.shape}")
        m = x.shape[1]
        u = np.zeros(x.shape[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            if m >= 2:
                u += self.bond_energy(bond_lengths(x)).sum(-1)
            if m >= 3:
                u += self.angle_energy(bond_angles(x)).sum(-1)
            if m >= 4:
                u += self.torsion_energy(dihedrals(x)).sum(-1)
        bad = ~np.all(np.isfinite(x), axis=(1, 2)) | ~np.isfinite(u)
        u[bad] = np.inf
        return u

    def reduced_energy(self, x: np.ndarray) -> np.ndarray:
        """Reduced energy [B] (kT) of full conformations ``x`` [B, n_atoms, 3] (nm)."""
        if np.shape(x)[1] != self.n_atoms:
            raise ValueError(f"expected {self.n_atoms} atoms, got shape {np.shape(x)}")
        return self._chain_energy(x)

    def prefix_energy(self, i: int, x_prefix: np.ndarray) -> np.ndarray:
        """Energy [B] of the terms within the first ``boundaries[i]`` atoms."""
        if np.shape(x_prefix)[1] != self.boundaries[i]:
            raise ValueError(
                f"boundary {i} needs {self.boundaries[i]} atoms, got {np.shape(x_prefix)}"
            )
        return self._chain_energy(x_prefix)

    # -- exact 1-D marginals (log densities, unnormalized)
    def _log_marginal(self, kind: str):
        if kind == "bond":
            return lambda r: 2.0 * np.log(np.maximum(r, 1e-300)) - self.bond_energy(r)
        if kind == "angle":
            return lambda t: np.log(np.maximum(np.sin(t), 1e-300)) - self.angle_energy(t)
        return lambda p: -self.torsion_energy(p)

    def _range(self, kind: str) -> tuple[float, float]:
        if kind == "bond":
            w = 12.0 * self.bond_sigma
            return max(self.r0 - w, 0.0), self.r0 + w
        if kind == "angle":
            return 0.0, float(np.pi)
        return -float(np.pi), float(np.pi)

    def _log_partition(self, kind: str) -> float:
        ld = self._log_marginal(kind)
        lo, hi = self._range(kind)
        shift = float(np.max(ld(np.linspace(lo, hi, 2001))))
        val = integrate.quad(
            lambda t: np.exp(ld(t) - shift), lo, hi, limit=200, epsabs=0.0, epsrel=1e-11
        )[0]
        return float(np.log(val) + shift)

    def exact_log_z(self) -> float:
        """log of ``Z = int exp(-u)`` over the relative coordinates ``x_j - x_0``
        (j = 1..n-1, nm^(3(n-1))): ``8 pi^2 prod Z_bond prod Z_angle prod Z_torsion``
        (8 pi^2 = volume of SO(3)).  This is the reference measure of `ChainProposal`,
        so SMC / SNIS normalizing-constant estimates with it are comparable."""
        n = self.n_atoms
        return float(
            np.log(8.0 * np.pi**2)
            + (n - 1) * self._log_partition("bond")
            + (n - 2) * self._log_partition("angle")
            + (n - 3) * self._log_partition("torsion")
        )

    def _expect(self, kind: str, f) -> float:
        ld = self._log_marginal(kind)
        lo, hi = self._range(kind)
        peak = self.r0 if kind == "bond" else (self.theta0 if kind == "angle" else None)
        shift = float(np.max(ld(np.linspace(lo, hi, 2001))))
        opts = {"points": [peak]} if peak is not None and lo < peak < hi else {}
        kw = {"limit": 200, "epsabs": 0.0, "epsrel": 1e-11, **opts}
        num = integrate.quad(lambda t: f(t) * np.exp(ld(t) - shift), lo, hi, **kw)[0]
        den = integrate.quad(lambda t: np.exp(ld(t) - shift), lo, hi, **kw)[0]
        return num / den

    def exact_observables(self) -> dict[str, float]:
        """Exact Boltzmann expectations by 1-D quadrature.

        Returns
        -------
        dict
            ``p_well_a``: probability that the first torsion (atoms 0-1-2-3) is in (0, pi);
            ``mean_energy``: <u> in kT; ``mean_bond``: <r> in nm;
            ``mean_torsion_energy``: <u_t> of one torsion, kT.
        """
        n_b, n_a, n_t = self.n_atoms - 1, self.n_atoms - 2, self.n_atoms - 3
        e_b = self._expect("bond", self.bond_energy)
        e_a = self._expect("angle", self.angle_energy)
        e_t = self._expect("torsion", self.torsion_energy)
        p_a = self._expect("torsion", lambda p: float(p > 0))
        return {
            "p_well_a": p_a,
            "mean_energy": n_b * e_b + n_a * e_a + n_t * e_t,
            "mean_bond": self._expect("bond", lambda r: r),
            "mean_torsion_energy": e_t,
        }

    def sample_observables(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per-sample observables matching `exact_observables` (arrays of shape [B])."""
        x = np.asarray(x, dtype=np.float64)
        return {
            "p_well_a": (dihedrals(x)[:, 0] > 0).astype(np.float64),
            "mean_energy": self.reduced_energy(x),
            "mean_bond": bond_lengths(x).mean(-1),
            "mean_torsion_energy": self.torsion_energy(dihedrals(x)[:, 0]),
        }

    def _inverse_cdf(self, kind: str, u: np.ndarray) -> np.ndarray:
        if kind not in self._sampler_cache:
            lo, hi = self._range(kind)
            self._sampler_cache[kind] = _grid_inverse_cdf(self._log_marginal(kind), lo, hi)
        grid, cdf = self._sampler_cache[kind]
        return np.interp(u, cdf, grid)

    def sample_internal(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Exact internal coordinates: bonds [n, n_atoms-1], angles [n, n_atoms-2],
        torsions [n, n_atoms-3] (inverse CDF on a fine grid of each 1-D marginal)."""
        m = self.n_atoms
        return {
            "bonds": self._inverse_cdf("bond", rng.uniform(size=(n, m - 1))),
            "angles": self._inverse_cdf("angle", rng.uniform(size=(n, m - 2))),
            "torsions": self._inverse_cdf("torsion", rng.uniform(size=(n, m - 3))),
        }

    def build(self, bonds: np.ndarray, angles: np.ndarray, torsions: np.ndarray) -> np.ndarray:
        """NeRF chain in a standard frame: atom 0 at the origin, atom 1 on +x, atom 2 in
        the xy-plane.  Returns [B, n_atoms, 3] (nm)."""
        b = bonds.shape[0]
        x = np.zeros((b, self.n_atoms, 3))
        x[:, 1, 0] = bonds[:, 0]
        t = angles[:, 0]
        x[:, 2] = x[:, 1] + bonds[:, 1, None] * np.stack(
            [-np.cos(t), np.sin(t), np.zeros_like(t)], -1
        )
        for j in range(3, self.n_atoms):
            x[:, j] = nerf_place(
                x[:, j - 3],
                x[:, j - 2],
                x[:, j - 1],
                bonds[:, j - 1],
                angles[:, j - 2],
                torsions[:, j - 3],
            )
        return x

    def sample_exact(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Exact Boltzmann samples [n, n_atoms, 3] (nm): randomly rotated and centred
        (centre of geometry at the origin), like MD training frames."""
        ic = self.sample_internal(n, rng)
        x = self.build(ic["bonds"], ic["angles"], ic["torsions"])
        x = np.einsum("bij,bnj->bni", random_rotations(n, rng), x)
        return x - x.mean(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- proposal


@dataclass
class _ChainState:
    x: np.ndarray  # [M, n, 3]
    n_done: int = 0  # atoms whose coordinates count as generated


class ChainProposal:
    """Analytic autoregressive proposal for `HarmonicChainTarget` with exact ``log q``.

    Atoms are placed one at a time in internal coordinates relative to the previous
    atoms: bond ~ N(r0, (s_b sigma_b)^2) truncated to r > 0, angle ~ N(theta0,
    (s_a sigma_a)^2) truncated to (0, pi), torsion ~ equal mixture of von Mises at
    +-pi/2 (concentration ``kappa``), orientation uniform.  The Cartesian density of
    atom j given its predecessors is ``q(r) q(theta) q(phi) / (r^2 sin(theta))``
    (atom 1: ``q(r) / (4 pi r^2)``; atom 2: ``q(r) q(theta) / (2 pi r^2 sin theta)``).

    Densities are w.r.t. the relative coordinates (atom 0 anchored), which differ from
    centred coordinates by a constant Jacobian (irrelevant to self-normalized weights
    and to SMC, which only use ratios).  The proposal counts generated coordinates like
    a centred model (3 per atom, atom 0 included, 3(n-1) in all); because its last atom
    is random, it is drawn (with its log q) by the `extend` call that completes the
    3(n-1) coordinates, and `finish` only centres.  Hence no SMC boundary may sit at
    n - 1 atoms (`HarmonicChainTarget.boundaries` stops at n - 2).
    """

    def __init__(
        self,
        target: HarmonicChainTarget,
        bond_scale: float = 1.1,
        angle_scale: float = 1.1,
        kappa: float = 4.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.target = target
        self.n_atoms = target.n_atoms
        sb, sa = bond_scale * target.bond_sigma, angle_scale * target.angle_sigma
        self._bond = stats.truncnorm((0.0 - target.r0) / sb, np.inf, loc=target.r0, scale=sb)
        self._angle = stats.truncnorm(
            -target.theta0 / sa, (np.pi - target.theta0) / sa, loc=target.theta0, scale=sa
        )
        self.kappa = kappa
        self.rng = rng if rng is not None else np.random.default_rng()

    def bind(self, rng: np.random.Generator) -> ChainProposal:
        """Use ``rng`` for subsequent draws (returns self)."""
        self.rng = rng
        return self

    def _torsion_sample(self, m: int) -> np.ndarray:
        centre = np.where(self.rng.uniform(size=m) < 0.5, 0.5 * np.pi, -0.5 * np.pi)
        phi = self.rng.vonmises(centre, self.kappa)
        return np.mod(phi + np.pi, 2 * np.pi) - np.pi

    def _torsion_logpdf(self, phi: np.ndarray) -> np.ndarray:
        a = stats.vonmises.logpdf(phi, self.kappa, loc=0.5 * np.pi)
        b = stats.vonmises.logpdf(phi, self.kappa, loc=-0.5 * np.pi)
        return np.logaddexp(a, b) - np.log(2.0)

    def start(self, n_particles: int) -> _ChainState:
        return _ChainState(x=np.zeros((n_particles, self.n_atoms, 3)))

    def _place(self, state: _ChainState, j: int) -> np.ndarray:
        x, m = state.x, state.x.shape[0]
        if j == 0:
            return np.zeros(m)
        r = self._bond.rvs(size=m, random_state=self.rng)
        lq = self._bond.logpdf(r) - 2.0 * np.log(r)
        if j == 1:
            d = self.rng.standard_normal((m, 3))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            x[:, 1] = x[:, 0] + r[:, None] * d
            return lq - np.log(4.0 * np.pi)
        t = self._angle.rvs(size=m, random_state=self.rng)
        lq += self._angle.logpdf(t) - np.log(np.sin(t))
        if j == 2:
            e = x[:, 0] - x[:, 1]
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            perp = _unit_perpendicular(e, self.rng)
            x[:, 2] = x[:, 1] + r[:, None] * (np.cos(t)[:, None] * e + np.sin(t)[:, None] * perp)
            return lq - np.log(2.0 * np.pi)
        phi = self._torsion_sample(m)
        x[:, j] = nerf_place(x[:, j - 3], x[:, j - 2], x[:, j - 1], r, t, phi)
        return lq + self._torsion_logpdf(phi)

    def extend(self, state: _ChainState, n_coords: int) -> np.ndarray:
        """Generate ``n_coords / 3`` more atoms; returns log q increments [M] float64."""
        if n_coords % 3:
            raise ValueError("ChainProposal generates whole atoms (n_coords % 3 == 0)")
        stop = state.n_done + n_coords // 3
        if stop > self.n_atoms - 1:
            raise ValueError(f"cannot generate beyond {3 * (self.n_atoms - 1)} coordinates")
        lq = np.zeros(state.x.shape[0])
        last = self.n_atoms if stop == self.n_atoms - 1 else stop
        for j in range(state.n_done, last):
            lq += self._place(state, j)
        state.n_done = stop
        return lq

    def coords(self, state: _ChainState) -> np.ndarray:
        """Generated coordinates [M, 3 * n_done] (nm, relative frame)."""
        return state.x[:, : state.n_done].reshape(state.x.shape[0], -1).copy()

    def reorder(self, state: _ChainState, index: np.ndarray) -> None:
        state.x = state.x[np.asarray(index)]

    def finish(self, state: _ChainState) -> np.ndarray:
        """Full conformations [M, n_atoms, 3] (nm), centred."""
        if state.n_done != self.n_atoms - 1:
            raise RuntimeError("finish() before all 3(n-1) coordinates were generated")
        return state.x - state.x.mean(axis=1, keepdims=True)


def small_chain_model(std, binning, n_atoms: int, n_bins: int, seed: int = 0):
    """A one-layer ARBG over an ``n_atoms`` toy chain (untrained, seeded, eval mode, bin floor
    set): the model of the fine-tuning and mixture tests."""
    import torch

    from arbg.nn.model import ARBG, ModelConfig, token_features_for_system

    feats = token_features_for_system(
        np.zeros(n_atoms, int), np.zeros(n_atoms, int), np.arange(n_atoms),
        coord_index=std.coord_index,
    )  # fmt: skip
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_bins=n_bins, n_layer=1, n_embd=32, n_head=2, head_dim=16, max_atoms=8,
        n_atom_types=2, n_residue_types=2, max_residues=8, value_fourier=4,
    )  # fmt: skip
    model = ARBG(cfg, default_feats=feats)
    model.set_bin_floor(binning.token_floor(std))
    return model.eval()
