"""Output heads of :class:`arbg.nn.model.ARBG`: hidden states -> parameters of ``p(x_j | x_<j)``.

Bin units
---------
Every head describes a coordinate in *bin units* ``u = (z - low) / width`` of the
:class:`arbg.nn.coordinates.Binning` (``z`` standardized), so bin ``b`` is the interval
``[b, b+1)``:

* ``"bins"`` (:class:`BinHead`, the paper's ARBG): a categorical over the ``L`` bins.
* ``"mol"`` (:class:`MoLHead`, the paper's MoL-PixelCNN++ baseline) and ``"gmm"``
  (:class:`GMMHead`, GMM-PixelCNN++): a mixture of ``K`` logistics / Gaussians discretized to the
  same bins, the bin mass being the CDF difference at its edges (PixelCNN++, Salimans et al. 2017;
  ``docs/references.md`` Eq. 2); the first and last bins take the tails.
* ``"givt"`` (:class:`GIVTHead`, the GIVT baseline, Tschannen et al. 2024): a continuous ``K``-
  component Gaussian mixture, no bins.

The discrete heads return bin probabilities; de-quantized uniformly inside the bin (unit width in
bin units) the bin probability *is* the density of ``u``. The continuous head returns the density
of ``u`` directly. So for every head ``sum_j log_prob`` is ``log q_u`` and

    log q_z(z) = sum_j log_prob_j - D log(width),

the offset that :func:`arbg.sampling.sampler.log_q` adds; the sampler and SNIS need no
per-head case. A continuous head samples and scores real ``u`` (float64) instead of bins; the
transformer's input token for the next position stays the bin of the value (:meth:`Head.tokens`),
a deterministic function of the past, so the product of the conditionals is still an exact
autoregressive density.

Mixture parametrization
-----------------------
The projection outputs ``3K`` numbers per coordinate, in units where the bin range is ``[-1, 1]``:
means (soft-limited to ``+-MEAN_LIMIT``), log-scales (clamped to ``[LOG_SCALE_MIN,
LOG_SCALE_MAX]``) and mixture logits. The parameter tensor carries one more, non-learned channel:
the lowest allowed bin of the coordinate (:meth:`Head.apply_floor`, used by the gauge frame's
positive coordinates; 0 = none for the discretized heads, ``-inf`` for GIVT). All mixture
arithmetic is float64, in log space (log-sum-exp, log-CDF differences via ``log1mexp``, the
logistic's ``log sigmoid`` and ``torch.special.log_ndtr`` with the symmetric flip, so no tail
underflows).

Temperature ``tau``: the categorical head divides its logits by ``tau``; the mixture heads divide
the mixture logits by ``tau`` and multiply the component scales by ``tau``. ``log_prob(params,
x, tau)`` is always the log-probability under the tempered distribution that ``sample(params,
tau)`` draws from, so log q of tempered samples stays exact.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from arbg.nn.coordinates import Binning

logger = logging.getLogger(__name__)

__all__ = [
    "HEADS",
    "LOG_SCALE_MAX",
    "LOG_SCALE_MIN",
    "MEAN_LIMIT",
    "BinHead",
    "GIVTHead",
    "GMMHead",
    "Head",
    "MixtureHead",
    "MoLHead",
    "draw_categorical",
    "log1mexp",
    "values_to_z",
    "z_to_values",
]

#: log-scale limits of the mixture components, in units where the bin range is [-1, 1]
LOG_SCALE_MIN = math.log(1e-5)
LOG_SCALE_MAX = math.log(10.0)
#: means are soft-limited to +-MEAN_LIMIT (bin range = [-1, 1])
MEAN_LIMIT = 4.0
_LOG_2PI, _LN2 = math.log(2.0 * math.pi), math.log(2.0)


# --------------------------------------------------------------------------------------------------
# bin units


def _float64(a: Any) -> Any:
    return a.to(torch.float64) if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)


def values_to_z(values: Any, binning: Binning) -> Any:
    """Standardized coordinates ``z = low + u * width`` (float64) from bin-unit values ``u``."""
    return binning.low + _float64(values) * binning.width


def z_to_values(z: Any, binning: Binning) -> Any:
    """Bin-unit values ``u = (z - low) / width`` (float64) of standardized coordinates."""
    return (_float64(z) - binning.low) / binning.width


# --------------------------------------------------------------------------------------------------
# numerics


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate everywhere (Maechler 2012).

    ``x`` is clamped just below 0, so the result is finite; both branches get safe inputs, so the
    gradient has no NaN either.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near = x > -_LN2
    a = torch.log(-torch.expm1(torch.where(near, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near, torch.full_like(x, -1.0), x)))
    return torch.where(near, a, b)


def _log_cdf_diff(log_cdf: Any, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``log(F(hi) - F(lo))`` for ``lo < hi`` and a symmetric ``F`` (``F(-x) = 1 - F(x)``).

    Right of the centre the survival form ``F(-lo) - F(-hi)`` is used, so neither tail cancels.
    """
    flip = (lo + hi) > 0
    p = torch.where(flip, -hi, lo)
    q = torch.where(flip, -lo, hi)
    lq = log_cdf(q)
    return lq + log1mexp(log_cdf(p) - lq)


def _log_bin_mass(
    log_cdf: Any, lo: torch.Tensor, hi: torch.Tensor, first: torch.Tensor, last: torch.Tensor
) -> torch.Tensor:
    """Log mass of ``[lo, hi)`` (standardized), ``(-inf, hi)`` where ``first``, ``[lo, inf)``
    where ``last``, everything where both (broadcasting boolean masks)."""
    out = torch.where(first, log_cdf(hi), _log_cdf_diff(log_cdf, lo, hi))
    out = torch.where(last, log_cdf(-lo), out)
    return torch.where(first & last, torch.zeros_like(out), out)


def _uniform_open(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """float64 uniforms in the open interval (0, 1)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return u.clamp_(min=2.0**-60)


def _categorical(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row from ``softmax(logits)`` [..., K] -> LongTensor [...]."""
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def draw_categorical(
    logits: torch.Tensor, tau: float, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw from ``softmax(logits / tau)`` and the log-probability of the draw.

    The one place where bins are drawn (eager, static-cache and CUDA-graph decoding, SMC): the
    log-probability is the float32 log-softmax of the very logits the bin was drawn from, so a
    low-precision (bf16) forward still gives the exact log-density of the draw that was made.
    No host synchronisation (no ``.item()``, no branch on tensor values).

    Parameters
    ----------
    logits : Tensor [..., L], any float dtype (``-inf`` = excluded bin)
    tau : float, temperature
    u : float64 Tensor [...], uniforms in [0, 1)

    Returns
    -------
    bins : LongTensor [...], never a bin of probability zero
    log_p : float32 Tensor [...], ``log softmax(logits / tau)[bins]`` (nats)
    """
    lg = logits.float()
    if tau != 1.0:
        lg = lg / tau
    m = lg.amax(dim=-1, keepdim=True)  # [..., 1]
    e = torch.exp(lg - m)  # [..., L] float32, zero for excluded bins
    cdf = torch.cumsum(e, dim=-1, dtype=torch.float64)  # [..., L]
    v = (u.to(torch.float64) * cdf[..., -1]).unsqueeze(-1)  # [..., 1]
    # first bin whose cdf exceeds v: zero-probability bins (flat cdf) are never chosen
    bins = torch.searchsorted(cdf, v, right=True).clamp_(max=lg.shape[-1] - 1)  # [..., 1]
    lse = m + torch.log(e.sum(dim=-1, keepdim=True))  # [..., 1]
    log_p = (lg.gather(-1, bins) - lse).squeeze(-1)
    return bins.squeeze(-1), log_p


# --------------------------------------------------------------------------------------------------
# interface


class Head(nn.Module):
    """Interface of an output head: hidden states -> parameters of ``p(x_j | x_<j)``.

    Attributes
    ----------
    n_outputs : int
        Size of the last dimension of the parameters.
    n_bins : int
        Number of bins ``L``.
    continuous : bool
        False: samples/targets are bins (int64, ``-1`` = ignore in :meth:`loss`). True: they are
        real values in bin units (float64, non-finite = ignore); :meth:`tokens` bins them for the
        transformer's input.
    """

    n_outputs: int
    n_bins: int
    continuous: bool = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Parameters [B, T, n_outputs] from hidden states [B, T, C]."""
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, x: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
        """Log-probability (bins) or log-density in bin units (continuous) [B, T], float32 or
        float64, of ``x`` [B, T] under the distribution tempered by ``tau``."""
        raise NotImplementedError

    def sample(
        self, params: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``x`` [B, T] at temperature ``tau``: bins (int64) or bin-unit values (float64)."""
        raise NotImplementedError

    def loss(self, params: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood (a log-density in bin units for a continuous head) over
        the valid targets (scalar): bins ``-1`` and non-finite values are ignored."""
        mask = torch.isfinite(targets) if self.continuous else targets != -1
        lp = self.log_prob(params, torch.where(mask, targets, torch.zeros_like(targets)))
        return -torch.where(mask, lp, torch.zeros_like(lp)).sum() / mask.sum().clamp_min(1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Bins (int64, same shape) of samples/targets ``x``: the next position's input token."""
        if x.is_floating_point():
            raise TypeError(f"the {type(self).__name__} scores bins (integers), got {x.dtype}")
        return x.long()

    def apply_floor(self, params: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        """Restrict coordinate ``t`` to bins ``>= floor[t]`` (floor: [T] or [B, T], int64).

        Returns new parameters whose :meth:`log_prob` and :meth:`sample` describe the restricted
        distribution (how is head specific).
        """
        raise NotImplementedError

    def init_weights(self) -> None:
        """Initialise the head's parameters (called after the model's generic init)."""


# --------------------------------------------------------------------------------------------------
# categorical over bins


class BinHead(Head):
    """Categorical over ``L`` uniform bins: a linear layer to ``L`` logits."""

    def __init__(self, n_embd: int, n_bins: int) -> None:
        super().__init__()
        self.n_outputs = self.n_bins = n_bins
        self.proj = nn.Linear(n_embd, n_bins, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)  # [B, T, L] logits

    def log_prob(self, params: torch.Tensor, x: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
        logp = F.log_softmax(params.float() / tau, dim=-1)  # [B, T, L]
        return logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)  # [B, T]

    def sample(
        self, params: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Inverse-CDF draws (:func:`draw_categorical`), one float64 uniform per coordinate."""
        u = torch.rand(
            params.shape[:-1], generator=generator, dtype=torch.float64, device=params.device
        )
        return draw_categorical(params, tau, u)[0]

    def loss(self, params: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            params.float().reshape(-1, params.shape[-1]),  # [B*T, L]
            targets.reshape(-1),  # [B*T]
            ignore_index=-1,
        )

    def apply_floor(self, params: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        """Logits of the bins below the floor set to ``-inf`` (renormalised categorical)."""
        L = params.shape[-1]
        masked = torch.arange(L, device=params.device) < floor.to(params.device).unsqueeze(-1)
        return params.masked_fill(masked, float("-inf"))  # masked: [T, L] or [B, T, L]

    def init_weights(self) -> None:
        nn.init.zeros_(self.proj.weight)  # uniform initial distribution over the bins


# --------------------------------------------------------------------------------------------------
# mixtures


class MixtureHead(Head):
    """Common parametrization of the mixture heads of ``K = n_mixtures`` components (module
    docstring) on ``n_bins`` bins from ``n_embd`` channels."""

    #: value of the floor channel meaning "no floor"
    no_floor: float = 0.0

    def __init__(self, n_embd: int, n_bins: int, n_mixtures: int = 10) -> None:
        super().__init__()
        if n_mixtures < 1:
            raise ValueError(f"n_mixtures must be >= 1, got {n_mixtures}")
        self.n_bins = int(n_bins)
        self.n_mixtures = K = int(n_mixtures)
        self.n_outputs = 3 * K + 1
        self.proj = nn.Linear(n_embd, 3 * K, bias=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        raw = self.proj(h).float()  # [B, T, 3K] (float32 also under bf16 autocast)
        floor = torch.full_like(raw[..., :1], self.no_floor)  # [B, T, 1]
        return torch.cat([raw, floor], dim=-1)  # [B, T, 3K+1]

    def init_weights(self) -> None:
        K = self.n_mixtures
        nn.init.zeros_(self.proj.weight)  # every coordinate starts from the same broad mixture
        with torch.no_grad():
            b = self.proj.bias
            b[:K] = torch.linspace(-0.5, 0.5, K) if K > 1 else 0.0
            b[K : 2 * K] = math.log(0.2)
            b[2 * K :] = 0.0

    def apply_floor(self, params: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        """The floor channel raised to ``floor`` (see the subclasses for its meaning)."""
        f = floor.to(device=params.device, dtype=params.dtype).unsqueeze(-1)  # [.., T, 1]
        return torch.cat([params[..., :-1], torch.maximum(params[..., -1:], f)], dim=-1)

    def mixture(
        self, params: torch.Tensor, tau: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tempered mixture in bin units, float64.

        Returns
        -------
        log_w : [..., K] log mixture weights (``log_softmax(logits / tau)``)
        mu : [..., K] component means (bin units)
        scale : [..., K] component scales times ``tau`` (bin units)
        floor : [...] lowest allowed bin (the floor channel)
        """
        K = self.n_mixtures
        p = params.to(torch.float64)
        half = 0.5 * self.n_bins  # bin units per unit of the [-1, 1] range
        mean = MEAN_LIMIT * torch.tanh(p[..., :K] / MEAN_LIMIT)
        log_scale = p[..., K : 2 * K].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
        mu = (mean + 1.0) * half
        scale = torch.exp(log_scale + math.log(half) + math.log(tau))
        log_w = F.log_softmax(p[..., 2 * K : 3 * K] / tau, dim=-1)
        return log_w, mu, scale, p[..., 3 * K]


class _DiscretizedMixtureHead(MixtureHead):
    """A mixture of a symmetric location-scale family discretized to the bins.

    Bin ``b`` has mass ``sum_k w_k [F((b + 1 - mu_k) / s_k) - F((b - mu_k) / s_k)]``; the first
    allowed bin (bin 0, or the floor) extends to ``-inf``, the last (``L - 1``) to ``+inf``.
    Sampling draws a component, a real value from it and takes its bin, clipped into
    ``[floor, L-1]``: exactly that distribution.
    """

    @staticmethod
    def _log_cdf(x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, x: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
        log_w, mu, s, floor = self.mixture(params, tau)  # [B, T, K] x3, [B, T]
        b = x.long()
        bf = b.to(torch.float64)
        lo = (bf.unsqueeze(-1) - mu) / s  # [B, T, K]
        hi = (bf.unsqueeze(-1) + 1.0 - mu) / s
        first = (bf <= floor).unsqueeze(-1)  # [B, T, 1]
        last = (b >= self.n_bins - 1).unsqueeze(-1)
        lp = torch.logsumexp(log_w + _log_bin_mass(self._log_cdf, lo, hi, first, last), dim=-1)
        return lp.masked_fill(bf < floor, float("-inf"))  # [B, T] float64

    def sample(
        self, params: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        log_w, mu, s, floor = self.mixture(params, tau)
        k = _categorical(log_w, generator).unsqueeze(-1)  # [B, T, 1]
        mu_k = mu.gather(-1, k).squeeze(-1)
        s_k = s.gather(-1, k).squeeze(-1)
        value = mu_k + s_k * self._noise(mu_k, generator)  # [B, T] bin units
        b = torch.maximum(torch.floor(value), floor).clamp(max=self.n_bins - 1)
        return b.long()


class MoLHead(_DiscretizedMixtureHead):
    """Discretized mixture of ``K`` logistics over the bins (MoL-PixelCNN++)."""

    @staticmethod
    def _log_cdf(x: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(x)

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = _uniform_open(like.shape, generator, like.device)
        return torch.log(u) - torch.log1p(-u)  # standard logistic


class GMMHead(_DiscretizedMixtureHead):
    """Discretized mixture of ``K`` Gaussians over the bins (GMM-PixelCNN++)."""

    @staticmethod
    def _log_cdf(x: torch.Tensor) -> torch.Tensor:
        return torch.special.log_ndtr(x)

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, dtype=torch.float64, device=like.device)


class GIVTHead(MixtureHead):
    """Continuous mixture of ``K`` Gaussians per coordinate, in bin units (GIVT).

    ``log_prob`` is the log-density of the real value ``u`` (bin units). A floor ``f``
    (:meth:`apply_floor`) truncates the mixture to ``u >= f`` (renormalised); without one the
    floor channel is ``-inf``.
    """

    continuous = True
    no_floor = float("-inf")

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError("the givt head scores real values in bin units, got integer bins")
        b = torch.nan_to_num(torch.floor(x.to(torch.float64)), nan=0.0)
        return b.clamp(0, self.n_bins - 1).long()

    def _log_mass_above(
        self, log_w: torch.Tensor, mu: torch.Tensor, s: torch.Tensor, floor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component log mass above the floor [..., K] and the mixture's [...] (0 if none)."""
        has = torch.isfinite(floor).unsqueeze(-1)
        f = torch.where(has, floor.unsqueeze(-1), torch.zeros_like(mu))
        comp = torch.where(has, torch.special.log_ndtr((mu - f) / s), torch.zeros_like(mu))
        return comp, torch.logsumexp(log_w + comp, dim=-1)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError("the givt head scores real values in bin units, got integer bins")
        log_w, mu, s, floor = self.mixture(params, tau)
        u = x.to(torch.float64)
        y = (u.unsqueeze(-1) - mu) / s  # [B, T, K]
        log_n = -0.5 * y * y - torch.log(s) - 0.5 * _LOG_2PI
        lp = torch.logsumexp(log_w + log_n, dim=-1)
        lp = lp - self._log_mass_above(log_w, mu, s, floor)[1]
        return lp.masked_fill(u < floor, float("-inf"))  # [B, T] float64

    def sample(
        self, params: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        log_w, mu, s, floor = self.mixture(params, tau)
        comp, _ = self._log_mass_above(log_w, mu, s, floor)
        k = _categorical(log_w + comp, generator).unsqueeze(-1)  # truncated weights
        mu_k, s_k = mu.gather(-1, k).squeeze(-1), s.gather(-1, k).squeeze(-1)
        la_k = comp.gather(-1, k).squeeze(-1)  # log P_k(u >= floor), 0 without a floor
        # inverse CDF of the component truncated to [floor, inf): mu - s ndtri(v Phi((mu-f)/s))
        # (exact unless a component's mass above the floor underflows float64, < 1e-308)
        v = _uniform_open(mu_k.shape, generator, mu_k.device)
        p = torch.exp(torch.log(v) + la_k).clamp(min=torch.finfo(torch.float64).tiny)
        value = mu_k - s_k * torch.special.ndtri(p)
        return torch.where(torch.isfinite(floor), torch.maximum(value, floor), value)

    def apply_floor(self, params: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        """Truncate to ``u >= floor`` (the lower edge of bin ``floor``) where ``floor > 0``;
        bin 0 extends to ``-inf`` (its token), so a floor of 0 restricts nothing."""
        f = floor.to(torch.float64)
        return super().apply_floor(params, torch.where(f > 0, f, torch.full_like(f, -math.inf)))


HEADS: dict[str, type[Head]] = {"bins": BinHead, "mol": MoLHead, "gmm": GMMHead, "givt": GIVTHead}
