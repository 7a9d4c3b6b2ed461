"""The SMC adapter: an :class:`ARBG` model as an :class:`arbg.sampling.smc.AutoregressiveProposal`.

Generation in lock-step with a preallocated KV cache, per-particle log q increments (the
tempered categoricals, in-bin offsets, standardization Jacobians; see :mod:`arbg.sampling.sampler`
for the
density convention), and reordering of particles after resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from arbg.nn.binning import Binning
from arbg.nn.heads import BinHead, draw_categorical, values_to_z
from arbg.nn.model import ARBG, KVCache, TokenFeatures
from arbg.nn.standardize import Standardization

__all__ = ["ProposalState", "TransformerProposal"]


def _model_device(model: ARBG) -> torch.device:
    return next(model.parameters()).device


def _features(model: ARBG, feats: TokenFeatures | None) -> TokenFeatures:
    f = feats if feats is not None else model.default_features()
    if f is None:
        raise ValueError("the model has no default features; pass feats")
    return f


def _rows(feats: TokenFeatures, start: int, stop: int) -> TokenFeatures:
    """Rows ``start:stop`` of per-sample [n, T] features ([T] features are shared)."""
    if feats.axis.dim() == 1:
        return feats
    return TokenFeatures(**{k: v[start:stop] for k, v in feats.tensors().items()})


def _autocast(dev: torch.device, dtype: torch.dtype) -> Any:
    """bf16 autocast on ``dev`` when ``dtype`` is bf16 (a no-op context otherwise)."""
    return torch.autocast(dev.type, torch.bfloat16, enabled=dtype == torch.bfloat16)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16}
        names["bfloat16"] = torch.bfloat16
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    return dtype


@dataclass
class ProposalState:
    """Per-population state of :class:`TransformerProposal`.

    Attributes
    ----------
    cache : KVCache with ``M`` rows
    bins : LongTensor [M, D] on the model device (columns ``>= n_done`` unset)
    z : float64 Tensor [M, D] (CPU), de-quantized standardized coordinates, drawn once
    log_q : np.ndarray [M] float64, total log q of the generated prefix (incl. Jacobians)
    n_done : int, coordinates generated
    """

    cache: KVCache
    bins: torch.Tensor
    z: torch.Tensor
    log_q: np.ndarray
    n_done: int = 0
    n_units: int = 0


class TransformerProposal:
    """:class:`arbg.sampling.smc.AutoregressiveProposal` backed by an :class:`ARBG` model.

    ``extend`` returns, per particle, the float64 log q increment of the new coordinates in nm:
    ``sum log p_tau(b_j | b_<j) - k log(width) - k log(std_nm)`` for ``k`` new coordinates, so the
    increments of a whole sequence sum to the exact ``log q(x)`` of :func:`generate` (the
    standardization Jacobian is spread over the coordinates rather than added by ``finish``;
    ``finish`` returns positions only, as the SMC protocol requires; the total is
    ``state.log_q``). In-bin offsets are drawn when a coordinate's bin is drawn and kept
    (reordered with the particle), so prefix energies and final positions see the same values;
    a continuous head (GIVT) draws the values themselves (no offsets; its ``log p`` is a density
    in bin units, so the same increment formula holds). Generation is in canonical atom order;
    the last atom is never generated: ``finish`` places it from the centring constraint.

    Parameters
    ----------
    model, binning, standardization
    tau : float
    generator : torch.Generator on the model's device (bins)
    offset_generator : CPU torch.Generator (offsets); default a fresh one seeded from ``generator``
    feats : TokenFeatures, optional, [T] features
    """

    def __init__(
        self,
        model: ARBG,
        binning: Binning,
        standardization: Standardization,
        tau: float = 1.0,
        generator: torch.Generator | None = None,
        offset_generator: torch.Generator | None = None,
        feats: TokenFeatures | None = None,
    ) -> None:
        self.model = model
        self.binning = binning
        self.standardization = standardization
        self.tau = float(tau)
        self.device = _model_device(model)
        self.feats = _features(model, feats).to(self.device)
        self.n_coords = standardization.n_coords
        if len(self.feats) != self.n_coords:
            raise ValueError(f"features cover {len(self.feats)} tokens, need {self.n_coords}")
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(0)
        self.generator = generator
        if offset_generator is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=self.device))
            offset_generator = torch.Generator().manual_seed(seed)
        self.offset_generator = offset_generator
        self._per_coord = -math.log(binning.width) - math.log(standardization.std_nm)
        # gauge frame: the Jacobian -log(8 pi^2) - 2 log a - log c is added by the extend call
        # that completes the two tokens it depends on
        self._gauge_last = (
            max(standardization.gauge_token_index) if standardization.frame == "gauge" else None
        )

    def start(self, n_particles: int) -> ProposalState:
        m = int(n_particles)
        return ProposalState(
            cache=self.model.new_kv_cache(m, max_T=self.n_coords),
            bins=torch.zeros(m, self.n_coords, dtype=torch.long, device=self.device),
            z=torch.zeros(m, self.n_coords, dtype=torch.float64),
            log_q=np.zeros(m),
        )

    @property
    def n_units(self) -> int:
        """Length of a full sequence in the SMC's units (3 per atom; see :meth:`extend`)."""
        return (
            3 * (self.standardization.n_atoms - 1)
            if self._gauge_last is None
            else (3 * self.standardization.n_atoms)
        )

    @torch.no_grad()
    def extend(self, state: ProposalState, n_coords: int) -> np.ndarray:
        """Generate the next ``n_coords / 3`` atoms of every particle; log q increment [M].

        ``n_coords`` counts 3 per atom (the SMC's unit); the model tokens generated are the
        modelled coordinates of those atoms (all three in the centroid frame, fewer for the gauge
        atoms in the gauge frame).
        """
        u0, u1 = state.n_units, state.n_units + int(n_coords)
        if u1 > self.n_units or u1 % 3 and self._gauge_last is not None:
            raise ValueError(f"cannot generate {n_coords} more units after {u0} of {self.n_units}")
        state.n_units = u1
        if self._gauge_last is None:
            j0, j1 = state.n_done, state.n_done + int(n_coords)
        else:
            j0, j1 = state.n_done, self.standardization.coords_before_atom(u1 // 3)
        m = state.bins.shape[0]
        lp = torch.zeros(m, dtype=torch.float64, device=self.device)
        head = self.model.head
        u = None  # bins head: the uniforms of these tokens in one call (sample_bins' stream)
        if isinstance(head, BinHead) and j1 > j0:
            u = torch.rand(
                j1 - j0, m, generator=self.generator, dtype=torch.float64, device=self.device
            )
        for j in range(j0, j1):
            if j == 0:
                tok = torch.full((m, 1), self.model.start_id, dtype=torch.long, device=self.device)
            else:
                tok = state.bins[:, j - 1 : j]
            out, _ = self.model(tok, self.feats, kv_cache=state.cache)  # [M, 1, L]
            if u is not None:
                b, lpj = draw_categorical(out[:, 0], self.tau, u[j - j0])
                xj, lp = b[:, None], lp + lpj.to(torch.float64)
            else:
                xj = head.sample(out, self.tau, self.generator)  # [M, 1] bins or values
                lp += head.log_prob(out, xj, self.tau)[:, 0].to(torch.float64)
            state.bins[:, j] = head.tokens(xj)[:, 0]
            if head.continuous:  # the value is the coordinate: no in-bin offset
                state.z[:, j] = values_to_z(xj[:, 0].cpu(), self.binning)
        if j1 > j0 and not head.continuous:
            state.z[:, j0:j1] = self.binning.decode(
                state.bins[:, j0:j1].cpu(), self.offset_generator
            )
        state.n_done = j1
        inc = lp.cpu().numpy() + (j1 - j0) * self._per_coord
        if self._gauge_last is not None and j0 <= self._gauge_last < j1:
            jac = self.standardization.log_det(state.z.numpy())  # full Jacobian, [M]
            inc = inc + (jac - self.standardization.log_det_forward)
        state.log_q = state.log_q + inc
        return inc

    def coords(self, state: ProposalState) -> np.ndarray:
        """Generated atoms [M, n_units] in nm (flattened xyz of the first ``n_units / 3`` atoms).

        These are exactly those atoms of the final :meth:`finish` positions; a prefix's absolute
        position is arbitrary, but prefix energies are translation invariant.
        """
        if self._gauge_last is None:
            return (state.z[:, : state.n_done] * self.standardization.std_nm).numpy()
        k = state.n_units // 3
        z = state.z.clone()
        z[:, state.n_done :] = 0.0
        x = self.standardization.inverse(z.numpy())  # [M, n, 3] gauge frame
        return x[:, :k].reshape(x.shape[0], 3 * k)

    def reorder(self, state: ProposalState, index: np.ndarray) -> ProposalState:
        """Reorder particles (cache rows, bins, offsets, log q) by ancestor ``index`` [M]."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        state.cache.reorder(idx)
        state.bins = state.bins.index_select(0, idx.to(self.device))
        state.z = state.z.index_select(0, idx)
        state.log_q = state.log_q[np.asarray(index)]
        return state

    def finish(self, state: ProposalState) -> np.ndarray:
        """Full conformations [M, N, 3] float64 nm (last atom from the centring constraint)."""
        if state.n_done != self.n_coords:
            raise ValueError(f"finish after {state.n_done} of {self.n_coords} coordinates")
        return self.standardization.inverse(state.z).numpy()

    def bins(self, state: ProposalState) -> np.ndarray:
        """Generated bins [M, n_done] int64 (CPU)."""
        return state.bins[:, : state.n_done].cpu().numpy()
