"""Encoding training data: frames -> (rotated) standardized bins or bin-unit values, the marginal
histogram baseline, normalized frame weights."""

from __future__ import annotations

import numpy as np
import torch

from arbg.nn.coordinates import Binning, Standardization, random_rotations, rotate
from arbg.nn.heads import z_to_values
from arbg.reweight import normalize_log_weights

__all__ = [
    "encode_frames",
    "encode_values",
    "marginal_baseline",
    "normalized_weights",
    "relabel_rotors",
]


def relabel_rotors(
    x: torch.Tensor, rotors: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Frames with the hydrogens of every rotor relabelled by an independent random cyclic
    shift (0, 1 or 2 places), an exact symmetry of the energy (see
    :attr:`arbg.chem.systems.PeptideSystem.rotor_hydrogens`).

    Parameters
    ----------
    x : Tensor [B, n, 3], positions (any units)
    rotors : LongTensor [m, 3], atom indices of each rotor's three hydrogens
    generator : torch.Generator of the shifts

    Returns
    -------
    Tensor [B, n, 3]: ``out[b, rotors[g, i]] = x[b, rotors[g, (i + s[b, g]) % 3]]``
    """
    B, n, _ = x.shape
    m = rotors.shape[0]
    if m == 0:
        return x
    shift = torch.randint(3, (B, m, 1), generator=generator)  # [B, m, 1]
    slot = (torch.arange(3) + shift) % 3  # [B, m, 3]: which member each slot takes
    source = torch.arange(n).repeat(B, 1)  # [B, n]: atom each position is read from
    source[:, rotors.reshape(-1)] = torch.gather(rotors.expand(B, m, 3), 2, slot).reshape(B, 3 * m)
    return torch.gather(x, 1, source.unsqueeze(-1).expand(B, n, 3))


def _standardized(
    x_centred: torch.Tensor, standardization: Standardization, generator: torch.Generator | None
) -> torch.Tensor:
    """Standardized [B, D] coordinates of centred frames, randomly rotated first with a
    ``generator``."""
    if generator is not None:
        x_centred = rotate(x_centred, random_rotations(x_centred.shape[0], generator))
    return standardization.forward(x_centred)


def encode_frames(
    x_centred: torch.Tensor,
    standardization: Standardization,
    binning: Binning,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, int]:
    """Rotate (if ``generator``), standardize and bin centred frames.

    Parameters
    ----------
    x_centred : Tensor [B, n, 3] float64, nm, centred on the centre of geometry
    generator : torch.Generator for the random rotations, or None for no rotation

    Returns
    -------
    bins : LongTensor [B, 3(n-1)]
    n_clipped : int
    """
    z = _standardized(x_centred, standardization, generator)  # [B, D] float64
    return binning.encode(z)  # type: ignore[return-value]


def encode_values(
    x_centred: torch.Tensor,
    standardization: Standardization,
    binning: Binning,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, int]:
    """:func:`encode_frames` for a continuous head (GIVT): exact values in bin units, not bins.

    Returns
    -------
    values : float64 Tensor [B, D], ``(z - low) / width`` (not clipped)
    n_outside : int, values outside the bin range (their input tokens are the end bins)
    """
    z = torch.as_tensor(_standardized(x_centred, standardization, generator))  # [B, D] float64
    values = z_to_values(z, binning)
    return values, int(((values < 0) | (values >= binning.n_bins)).sum())


def marginal_baseline(train_bins: torch.Tensor, val_bins: torch.Tensor, n_bins: int) -> float:
    """NLL (nats per coordinate) on ``val_bins`` of per-coordinate histograms of ``train_bins``.

    Parameters
    ----------
    train_bins : LongTensor [N, D]; val_bins : LongTensor [V, D]

    Returns
    -------
    float: ``-mean log((count + 1) / (N + L))`` (add-one smoothing).
    """
    N, D = train_bins.shape
    counts = torch.zeros(D, n_bins, dtype=torch.float64)
    counts.scatter_add_(1, train_bins.T.contiguous(), torch.ones(D, N, dtype=torch.float64))
    logp = torch.log((counts + 1.0) / (N + n_bins))  # [D, L]
    lp = logp.gather(1, val_bins.T.contiguous())  # [D, V]
    return float(-lp.mean())


def normalized_weights(log_w: np.ndarray) -> np.ndarray:
    """Normalized weights [f] float64 from unnormalised log-weights."""

    return np.exp(normalize_log_weights(log_w))
