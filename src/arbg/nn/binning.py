"""Uniform-bin tokenizer for standardized coordinates, with an exact piecewise-constant density.

Each standardized coordinate ``z`` (see :mod:`arbg.nn.standardize`) is mapped to one of ``L``
uniform
bins over ``[low, high)``. The model outputs a categorical over the bins; de-quantizing uniformly
inside the chosen bin turns it into a piecewise-constant density on R^D with

    log q_z(z) = sum_j log p(b_j | b_<j) - D log(width),

and the density of the centred conformation in nm adds the standardization Jacobian
(:attr:`arbg.nn.standardize.Standardization.log_det_forward`). This follows the uniform binning of
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

from arbg.nn.standardize import Standardization

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


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

    def log_density(self, sum_log_probs: Any, n_coords: int) -> Any:
        """Exact log-density in standardized space of a uniformly de-quantized sample.

        Parameters
        ----------
        sum_log_probs : float, array or tensor, shape [B]
            Sum over the ``n_coords`` coordinates of the log bin probabilities (nats).
        n_coords : int
            Number of modelled coordinates ``D = 3(n-1)``.

        Returns
        -------
        ``sum_log_probs - n_coords * log(width)``; add
        :attr:`~arbg.nn.standardize.Standardization.log_det_forward` for the density in nm.
        """
        return sum_log_probs - n_coords * math.log(self.width)

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
