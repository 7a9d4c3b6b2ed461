"""From bins to conformations with exact log q, and the chirality policies.

De-quantization is uniform inside each bin (the only choice with a density):
``log q(x) = log pi(b) - D log(width) + log J(z)`` (:mod:`arbg.sampling.sampler`).

Chirality
---------
A rotation-augmented Cartesian model can emit D-residues; the force field is mirror symmetric, so
the target is ``exp(-u)`` restricted to all-L conformations. Policies (:func:`apply_chirality`):

* ``"zero"`` (default): a sample with any D C-alpha gets weight zero (flag ``chirality_wrong``;
  exact, self-normalization absorbs the rejection).
* ``"mirror"``: a sample whose *every* chiral residue is D is replaced by ``y = -x``. The stored
  proposal is then ``Y = M(X)``, whose density at an all-L ``y`` is ``q(y) + q(-y)``; this holds
  for every fully-L or fully-D draw (not only the mirrored ones), so a second teacher-forced pass
  on the re-encoded ``-x`` is run for all of them. Partially wrong samples still get weight zero.
  Keeping the original ``log q`` for a mirrored sample (the published shortcut) is biased and is
  not offered.
* ``"none"``: no check (for targets without chirality).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from arbg.nn.binning import Binning
from arbg.nn.heads import values_to_z
from arbg.nn.model import ARBG, TokenFeatures
from arbg.nn.standardize import Standardization
from arbg.sampling.proposal import _as_dtype, _autocast, _features, _model_device, _rows
from arbg.sampling.targets import chirality_signs

logger = logging.getLogger(__name__)

__all__ = [
    "CHIRALITY_POLICIES",
    "ChiralityResult",
    "apply_chirality",
    "bins_to_positions",
    "log_q_offset",
    "teacher_forced_log_pi",
    "values_to_positions",
]

CHIRALITY_POLICIES = ("zero", "mirror", "none")


@torch.no_grad()
def teacher_forced_log_pi(
    model: ARBG,
    bins: torch.Tensor | np.ndarray,
    tau: float = 1.0,
    feats: TokenFeatures | None = None,
    batch_size: int = 1024,
    dtype: torch.dtype | str = torch.float32,
) -> torch.Tensor:
    """``model.log_prob`` of stored bins [n, T] in chunks; float64 [n] on the CPU (nats).

    ``dtype=torch.bfloat16`` runs the pass under bf16 autocast (float32 log-softmax)."""
    dev = _model_device(model)
    f = _features(model, feats).to(dev)
    bins = torch.as_tensor(np.asarray(bins) if not isinstance(bins, torch.Tensor) else bins)
    out = []
    for s in range(0, bins.shape[0], batch_size):
        with _autocast(dev, _as_dtype(dtype)):
            lp = model.log_prob(
                bins[s : s + batch_size].to(dev).long(), _rows(f, s, s + batch_size), tau
            )
        out.append(lp.cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def bins_to_positions(
    bins: torch.Tensor | np.ndarray,
    binning: Binning,
    standardization: Standardization,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, float | np.ndarray]:
    """De-quantize bins to centred conformations.

    Parameters
    ----------
    bins : int [n, 3(N-1)]
    binning, standardization
    generator : torch.Generator (CPU)
        Source of the uniform in-bin offsets, drawn as one ``torch.rand([n, D], float64)``.

    Returns
    -------
    positions : np.ndarray [n, N, 3], float64 nm, canonical order, centre of geometry at 0
    log_q_offset : float, np.ndarray [n] or None
        ``-D log(width) + log Jacobian`` so that ``log q(x) = log_pi + log_q_offset`` (nm^-D
        density, see the module docstring; an array in the gauge frame, whose Jacobian depends
        on the conformation).
    """
    b = torch.as_tensor(bins).cpu().long()
    z = binning.decode(b, generator=generator)  # [n, D] float64, uniform in each bin
    x = standardization.inverse(z).numpy()  # [n, N, 3]
    return x, log_q_offset(binning, standardization, z)


def log_q_offset(
    binning: Binning, standardization: Standardization, z: Any = None
) -> float | np.ndarray:
    """``-D log(width) + log Jacobian``: ``log q(x) = log_pi + this``.

    Parameters
    ----------
    binning, standardization
    z : [n, D] standardized coordinates of the samples; required in the gauge frame, whose
        Jacobian ``-2 log a - log c`` depends on the conformation
        (:meth:`arbg.nn.standardize.Standardization.log_det`).

    Returns
    -------
    float (centroid frame) or np.ndarray [n] float64 (gauge frame)
    """
    d = standardization.n_coords
    return -d * math.log(binning.width) + standardization.log_det(z)


def values_to_positions(
    values: torch.Tensor | np.ndarray, binning: Binning, standardization: Standardization
) -> tuple[np.ndarray, float | np.ndarray]:
    """Conformations from the real bin-unit values of a continuous head (no de-quantization).

    Parameters
    ----------
    values : float [n, D], bin units ``u = (z - low) / width`` (:func:`arbg.nn.heads.values_to_z`)
    binning, standardization

    Returns
    -------
    positions : np.ndarray [n, N, 3], float64 nm, canonical order
    log_q_offset : float or np.ndarray [n]
        :func:`log_q_offset` of the exact ``z``: the head's log-density is in bin units, so
        ``log q(x) = log_pi - D log(width) + log Jacobian`` as for the discrete heads.
    """
    z = values_to_z(torch.as_tensor(values).cpu(), binning)  # [n, D] float64
    x = standardization.inverse(z).numpy()  # [n, N, 3]
    return x, log_q_offset(binning, standardization, z)


@dataclass
class ChiralityResult:
    """Outcome of :func:`apply_chirality` (arrays aligned with the input samples).

    Attributes
    ----------
    positions : [n, N, 3] float64 nm (mirrored rows replaced by ``-x``)
    bins : [n, D] int64 (mirrored rows re-encoded)
    log_q : [n] float64 (``log(q(y) + q(-y))`` under ``"mirror"`` where applicable)
    wrong : [n] bool, the stored sample has a D residue (weight zero)
    mirrored : [n] bool
    n_teacher_forced : int, sequences scored by the second pass
    """

    positions: np.ndarray
    bins: np.ndarray
    log_q: np.ndarray
    wrong: np.ndarray
    mirrored: np.ndarray
    n_teacher_forced: int = 0


def apply_chirality(
    positions: np.ndarray,
    bins: np.ndarray,
    log_q: np.ndarray,
    chirality_atoms: np.ndarray | None,
    policy: str = "zero",
    *,
    model: ARBG | None = None,
    binning: Binning | None = None,
    standardization: Standardization | None = None,
    tau: float = 1.0,
    feats: TokenFeatures | None = None,
    batch_size: int = 1024,
) -> ChiralityResult:
    """Apply a chirality policy (module docstring) to de-quantized samples.

    Parameters
    ----------
    positions : [n, N, 3] float64 nm, canonical order
    bins : [n, D] int
    log_q : [n] float64, exact log q of ``positions``
    chirality_atoms : [r, 4] (N, CA, C, CB) or None/empty (nothing to check)
    policy : {"zero", "mirror", "none"}
    model, binning, standardization, tau, feats, batch_size
        Needed by ``"mirror"`` for the teacher-forced pass on the mirrored bins.

    Returns
    -------
    ChiralityResult (new arrays; inputs are not modified)
    """
    if policy not in CHIRALITY_POLICIES:
        raise ValueError(f"unknown chirality policy {policy!r}; choose from {CHIRALITY_POLICIES}")
    x = np.array(positions, dtype=np.float64)
    b = np.array(bins, dtype=np.int64)
    lq = np.array(log_q, dtype=np.float64)
    n = x.shape[0]
    none = np.zeros(n, dtype=bool)
    chir = np.zeros((0, 4), np.int64) if chirality_atoms is None else np.asarray(chirality_atoms)
    chir = chir.reshape(-1, 4)
    chir = chir[np.all(chir >= 0, axis=1)]
    if policy == "none" or chir.shape[0] == 0:
        return ChiralityResult(x, b, lq, none, none.copy())
    signs = chirality_signs(x, chir)  # [n, r]
    wrong = np.any(signs < 0, axis=1)
    if policy == "zero":
        return ChiralityResult(x, b, lq, wrong, none.copy())
    if model is None or binning is None or standardization is None:
        raise ValueError("chirality='mirror' needs model, binning and standardization")
    all_d = np.all(signs == -1, axis=1)
    all_l = np.all(signs == 1, axis=1)
    pair = all_d | all_l  # y and -y both reachable: density q(y) + q(-y)
    idx = np.flatnonzero(pair)
    mirrored = all_d.copy()
    if idx.size:
        # q(-x) needs its own teacher-forced pass on the bins of -x: the model is not mirror
        # equivariant (standardization means, bin grid and weights are not), so q(-x) != q(x)
        logger.info("chirality (mirror): scoring q(-x) of %d samples (teacher-forced)", idx.size)
        xm = -x[idx]
        zm = standardization.forward(xm)
        bm, n_clip = binning.encode(zm)  # bins of -x
        outside = np.any((zm < binning.low) | (zm >= binning.high), axis=1)
        lq_m = teacher_forced_log_pi(model, bm, tau, feats, batch_size).numpy() + log_q_offset(
            binning, standardization, zm
        )
        lq_m[outside] = -np.inf  # -x outside the bin range: q(-x) = 0
        lq[idx] = np.logaddexp(lq[idx], lq_m)
        md = all_d[idx]
        x[idx[md]] = xm[md]
        b[idx[md]] = bm[md]
        if n_clip:
            logger.warning("chirality mirror: %d coordinates of -x outside the bin range", n_clip)
    wrong = wrong & ~all_d
    logger.info(
        "chirality (mirror): %d mirrored, %d partially wrong (weight zero) of %d",
        int(mirrored.sum()),
        int(wrong.sum()),
        n,
    )
    return ChiralityResult(x, b, lq, wrong, mirrored, int(idx.size))
