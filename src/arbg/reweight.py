"""Self-normalized importance sampling (SNIS) in log space.

An autoregressive Boltzmann generator gives every sample ``x`` its exact proposal
log-density ``log q(x)`` (in the space where the energy is evaluated: nm, centred
coordinates) and the target gives its reduced energy ``u(x)`` (kT).  The unnormalized
importance weight is ``w = exp(-u(x)) / q(x)``; everything here works with
``log w = -u - log q`` in float64 and never exponentiates un-shifted log-weights.

Conventions
-----------
* A sample with a non-finite energy or a non-finite ``log q`` gets ``log w = -inf``
  (weight zero) and is counted, never raised on.
* Weight clipping (the published, bioemu-style evaluation) removes the largest
  ``fraction`` of the finite log-weights (default 0.2 %): ``mode="drop"`` sets them to
  ``-inf``, ``mode="cap"`` sets them to the ``1 - fraction`` quantile, ``mode=None``
  leaves them alone (use ``None`` in exactness tests: clipping is a biased
  variance-reduction device).
* Standard errors of weighted means use the delta method for ratio estimators,
  ``SE^2 = sum_i wbar_i^2 (f_i - mean)^2`` with normalized weights ``wbar`` (roughly
  ``Var_w(f) / ESS``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

logger = logging.getLogger(__name__)

__all__ = [
    "COLLAPSE_DISTINCT",
    "COLLAPSE_PARETO_K",
    "COLLAPSE_RELATIVE_ESS",
    "PSISResult",
    "SNISResult",
    "WeightCheck",
    "check_weights",
    "clip_log_weights",
    "kish_ess",
    "log_importance_weights",
    "log_mean_exp",
    "multinomial_resample",
    "normalize_log_weights",
    "psis",
    "relative_ess",
    "resample",
    "snis",
    "systematic_resample",
    "weighted_mean",
]


def _as_log_w(log_w: np.ndarray) -> np.ndarray:
    lw = np.asarray(log_w, dtype=np.float64)
    if lw.ndim != 1:
        raise ValueError(f"log-weights must be 1-D, got shape {lw.shape}")
    # NaN and +inf are not valid log-weights: treat as zero weight.
    return np.where(np.isnan(lw) | (lw == np.inf), -np.inf, lw)


def log_mean_exp(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """``log(mean(exp(x)))`` computed stably; ``-inf`` entries count as zeros.

    Used for SMC normalizing-constant estimates (``log Z_hat = log mean w``).

    Parameters
    ----------
    x : np.ndarray
        Log-values.
    axis : int, optional
        Axis to average over (default: all).

    Returns
    -------
    float or np.ndarray
        ``-inf`` where every entry is ``-inf``.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size if axis is None else x.shape[axis]
    if n == 0:
        raise ValueError("log_mean_exp of an empty array")
    out = logsumexp(x, axis=axis) - np.log(n)
    return float(out) if np.ndim(out) == 0 else out


def log_importance_weights(u: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Unnormalized log importance weights ``log w = -u - log q``.

    Parameters
    ----------
    u : np.ndarray, shape (N,)
        Reduced target energies (kT); ``+inf`` / NaN allowed.
    log_q : np.ndarray, shape (N,)
        Proposal log-densities in the same space as the energy (nm-based units).

    Returns
    -------
    np.ndarray, shape (N,), float64
        ``-inf`` where ``u`` or ``log_q`` is non-finite (the number of such samples is
        logged at DEBUG level; `snis` reports it as ``n_nonfinite``).
    """
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    log_q = np.asarray(log_q, dtype=np.float64).reshape(-1)
    if u.shape != log_q.shape:
        raise ValueError(f"u and log_q shapes differ: {u.shape} vs {log_q.shape}")
    ok = np.isfinite(u) & np.isfinite(log_q)
    log_w = np.full(u.shape, -np.inf)
    log_w[ok] = -u[ok] - log_q[ok]
    n_bad = int((~ok).sum())
    if n_bad:
        logger.debug("%d of %d samples have non-finite u or log q: weight zero", n_bad, u.size)
    return log_w


def clip_log_weights(
    log_w: np.ndarray, fraction: float = 0.002, mode: str | None = "drop"
) -> tuple[np.ndarray, int]:
    """Clip the largest ``fraction`` of the finite log-weights.

    The threshold is the ``1 - fraction`` quantile (linear interpolation) of the finite
    log-weights; entries strictly above it are clipped.

    Parameters
    ----------
    log_w : np.ndarray, shape (N,)
        Log-weights (normalized or not).
    fraction : float
        Fraction of the finite weights to clip, in [0, 1).
    mode : {"drop", "cap", None}
        ``"drop"``: set them to ``-inf`` (the published behaviour); ``"cap"``: set them to
        the threshold; ``None``: no clipping.

    Returns
    -------
    log_w : np.ndarray, shape (N,)
        A new array.
    n_clipped : int
    """
    lw = _as_log_w(log_w).copy()
    if mode is None or fraction <= 0:
        return lw, 0
    if mode not in ("drop", "cap"):
        raise ValueError(f"unknown clip mode {mode!r}; use 'drop', 'cap' or None")
    if not 0 <= fraction < 1:
        raise ValueError(f"clip fraction must be in [0, 1), got {fraction}")
    finite = np.isfinite(lw)
    if finite.sum() < 2:
        return lw, 0
    threshold = float(np.quantile(lw[finite], 1.0 - fraction))
    over = finite & (lw > threshold)
    lw[over] = -np.inf if mode == "drop" else threshold
    return lw, int(over.sum())


def normalize_log_weights(log_w: np.ndarray) -> np.ndarray:
    """Normalize so that ``sum(exp(log_w)) == 1``.

    Raises
    ------
    ValueError
        If every weight is zero.
    """
    lw = _as_log_w(log_w)
    total = logsumexp(lw) if lw.size else -np.inf
    if not np.isfinite(total):
        raise ValueError("all importance weights are zero (every log-weight is -inf)")
    return lw - total


def mixture_log_weights(
    bias_kt: np.ndarray, counts: np.ndarray, tol: float = 1e-10, max_iter: int = 100_000
) -> tuple[np.ndarray, np.ndarray]:
    """Target log-weights of frames pooled from runs that differ only by static biases (MBAR).

    Run ``k`` samples ``p_k(x) = mu(x) exp(-b_k(x) + f_k)`` (``b_k = V_k/kT``, zero for an
    unbiased run; ``f_k = -log E_mu[exp(-b_k)]`` its free energy). Its ``N_k`` frames, pooled
    with the others', are draws from the mixture ``m = sum_k (N_k / N) p_k``, so every frame
    gets ``w(x) = mu(x) / m(x)``, proportional to ``1 / sum_k N_k exp(f_k - b_k(x))``, with the
    ``f_k`` solved self-consistently (MBAR, Shirts & Chodera 2008, J. Chem. Phys. 129, 124105;
    the unbinned WHAM). Every frame is scored under every run's bias, so the weights stay
    bounded by ``1 / N_0`` for an unbiased run's ``N_0`` frames, and a basin that only the
    biased runs reach keeps its weight from their frames.

    Parameters
    ----------
    bias_kt : [K, F] float, ``b_k(x_n)``: run ``k``'s bias, kT, at every pooled frame ``n``.
    counts : [K] int, frames contributed by each run (summing to ``F``).
    tol, max_iter : convergence of the free energies (largest change, kT) and iteration cap.

    Returns
    -------
    (log_w [F] normalised to ``logsumexp 0``, f [K] free energies in kT with ``f_0 = 0``).

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite biases or counts that are not positive.
    """
    b = np.asarray(bias_kt, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    if b.ndim != 2 or n.shape != (b.shape[0],):
        raise ValueError(f"bias_kt must be [K, F] and counts [K]; got {b.shape} and {n.shape}")
    if int(n.sum()) != b.shape[1] or (n <= 0).any():
        raise ValueError(f"counts {n.tolist()} must be positive and sum to {b.shape[1]} frames")
    if not np.isfinite(b).all():
        raise ValueError("bias_kt has non-finite entries")
    log_n = np.log(n)[:, None]
    f = np.zeros(len(n))
    for _ in range(max_iter):
        log_w = -logsumexp(log_n + f[:, None] - b, axis=0)  # [F]
        log_w -= logsumexp(log_w)
        f_new = -logsumexp(log_w[None] - b, axis=1)  # [K]
        f_new -= f_new[0]
        if np.max(np.abs(f_new - f)) < tol:
            f = f_new
            break
        f = f_new
    else:
        logger.warning(
            "mixture_log_weights: free energies not converged after %d iterations", max_iter
        )
    log_w = -logsumexp(log_n + f[:, None] - b, axis=0)
    return log_w - logsumexp(log_w), f


def weights_from_log(log_w: np.ndarray) -> np.ndarray:
    """Normalized weights ``exp(normalize_log_weights(log_w))``, shape (N,), summing to one.

    NaN and ``+inf`` log-weights count as zero weight (``-inf``).
    """
    return np.exp(normalize_log_weights(log_w))


def kish_ess(log_w: np.ndarray) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2`` (absolute, in samples).

    Returns 0.0 when every weight is zero.
    """
    lw = _as_log_w(log_w)
    if lw.size == 0 or not np.isfinite(lw).any():
        return 0.0
    return float(np.exp(2.0 * logsumexp(lw) - logsumexp(2.0 * lw)))


def relative_ess(log_w: np.ndarray) -> float:
    """Kish ESS divided by the number of samples (including zero-weight ones), in [0, 1]."""
    lw = _as_log_w(log_w)
    return kish_ess(lw) / lw.size if lw.size else 0.0


def _cdf(log_w: np.ndarray) -> np.ndarray:
    w = np.exp(normalize_log_weights(log_w))
    cdf = np.cumsum(w)
    # exact 1.0 at the last non-zero weight and beyond, so zero weights are never chosen
    return cdf / cdf[-1]


def systematic_resample(log_w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Systematic resampling (one uniform offset, ``n`` evenly spaced points).

    Unbiased: ``E[count_i] = n * wbar_i``; particle ``i`` is copied ``floor(n wbar_i)`` or
    ``ceil(n wbar_i)`` times.  Zero-weight particles are never selected.

    Parameters
    ----------
    log_w : np.ndarray, shape (N,)
    n : int
        Number of indices to draw.
    rng : np.random.Generator

    Returns
    -------
    np.ndarray, shape (n,), int64
        Ancestor indices, sorted ascending.
    """
    cdf = _cdf(log_w)
    points = (rng.uniform() + np.arange(n)) / n
    idx = np.searchsorted(cdf, points, side="right")
    return np.minimum(idx, cdf.size - 1).astype(np.int64)


def multinomial_resample(log_w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Multinomial resampling: ``n`` i.i.d. draws from the normalized weights.

    Returns
    -------
    np.ndarray, shape (n,), int64
        Ancestor indices (in draw order).
    """
    cdf = _cdf(log_w)
    idx = np.searchsorted(cdf, rng.uniform(size=n), side="right")
    return np.minimum(idx, cdf.size - 1).astype(np.int64)


def resample(
    log_w: np.ndarray, n: int, rng: np.random.Generator, method: str = "systematic"
) -> np.ndarray:
    """Dispatch to `systematic_resample` or `multinomial_resample`."""
    if method == "systematic":
        return systematic_resample(log_w, n, rng)
    if method == "multinomial":
        return multinomial_resample(log_w, n, rng)
    raise ValueError(f"unknown resampling method {method!r}")


def weighted_mean(values: np.ndarray, log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Self-normalized weighted mean and its delta-method standard error.

    ``mean = sum_i wbar_i f_i`` and ``SE^2 = sum_i wbar_i^2 (f_i - mean)^2`` (the
    first-order variance of the ratio estimator; with equal weights it reduces to the
    biased-variance ``std / sqrt(N)``, and in general it is roughly ``Var_w(f) / ESS``).

    Parameters
    ----------
    values : np.ndarray, shape (N,) or (N, ...)
        Observable per sample; values of zero-weight samples are ignored (may be NaN).
    log_w : np.ndarray, shape (N,)

    Returns
    -------
    mean, standard_error : np.ndarray, shape ``values.shape[1:]`` (floats for 1-D input)
    """
    f = np.asarray(values, dtype=np.float64)
    wbar = np.exp(normalize_log_weights(log_w))
    if f.shape[0] != wbar.size:
        raise ValueError(f"{f.shape[0]} values for {wbar.size} weights")
    keep = wbar > 0
    f, wbar = f[keep], wbar[keep]
    wb = wbar.reshape((-1,) + (1,) * (f.ndim - 1))
    mean = np.sum(wb * f, axis=0)
    se = np.sqrt(np.sum(wb**2 * (f - mean) ** 2, axis=0))
    if np.ndim(mean) == 0:
        return float(mean), float(se)
    return mean, se


@dataclass
class SNISResult:
    """Outcome of `snis`.

    Attributes
    ----------
    log_w_raw : np.ndarray, shape (N,)
        ``-u - log q`` with non-finite samples at ``-inf``, before clipping.
    log_w : np.ndarray, shape (N,)
        Clipped and normalized log-weights (``logsumexp == 0``).
    ess : float
        Kish ESS of ``log_w`` (absolute).
    relative_ess : float
        ``ess / n``.
    n : int
        Number of samples.
    n_nonfinite : int
        Samples with non-finite ``u`` or ``log q`` (zero weight).
    n_clipped : int
        Weights removed or capped by clipping.
    clip_fraction, clip_mode
        The clipping settings used.
    ess_raw : float
        Kish ESS before clipping.
    """

    log_w_raw: np.ndarray
    log_w: np.ndarray
    ess: float
    relative_ess: float
    n: int
    n_nonfinite: int
    n_clipped: int
    clip_fraction: float
    clip_mode: str | None
    ess_raw: float = field(default=float("nan"))

    @property
    def weights(self) -> np.ndarray:
        """Normalized weights, shape (N,)."""
        return np.exp(self.log_w)

    def mean(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean and delta-method SE of ``values`` (see `weighted_mean`)."""
        return weighted_mean(values, self.log_w)

    def resample(self, n: int, rng: np.random.Generator, method: str = "multinomial") -> np.ndarray:
        """Indices of an equally weighted ensemble of size ``n``."""
        return resample(self.log_w, n, rng, method)

    def summary(self) -> dict:
        """JSON-serialisable counts and ESS."""
        return {
            "n": self.n,
            "n_nonfinite": self.n_nonfinite,
            "n_clipped": self.n_clipped,
            "clip_fraction": self.clip_fraction,
            "clip_mode": self.clip_mode,
            "ess": self.ess,
            "relative_ess": self.relative_ess,
            "ess_raw": self.ess_raw,
        }


def snis(
    u: np.ndarray,
    log_q: np.ndarray,
    clip_fraction: float = 0.002,
    clip_mode: str | None = "drop",
) -> SNISResult:
    """Self-normalized importance sampling weights for proposals with exact ``log q``.

    Parameters
    ----------
    u : np.ndarray, shape (N,)
        Reduced energies (kT) of the samples.
    log_q : np.ndarray, shape (N,)
        Exact proposal log-densities in the energy's space.
    clip_fraction : float
        Fraction of the largest weights to clip (default 0.002, the published value).
    clip_mode : {"drop", "cap", None}
        See `clip_log_weights`; use ``None`` for exact (unclipped) estimates.

    Returns
    -------
    SNISResult
    """
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    log_q = np.asarray(log_q, dtype=np.float64).reshape(-1)
    log_w_raw = log_importance_weights(u, log_q)
    n_nonfinite = int((~(np.isfinite(u) & np.isfinite(log_q))).sum())
    clipped, n_clipped = clip_log_weights(log_w_raw, clip_fraction, clip_mode)
    log_w = normalize_log_weights(clipped)
    ess = kish_ess(log_w)
    result = SNISResult(
        log_w_raw=log_w_raw,
        log_w=log_w,
        ess=ess,
        relative_ess=ess / u.size,
        n=int(u.size),
        n_nonfinite=n_nonfinite,
        n_clipped=n_clipped,
        clip_fraction=float(clip_fraction),
        clip_mode=clip_mode,
        ess_raw=kish_ess(log_w_raw),
    )
    logger.info(
        "SNIS: n=%d ess=%.1f (%.3f) nonfinite=%d clipped=%d",
        result.n,
        result.ess,
        result.relative_ess,
        n_nonfinite,
        n_clipped,
    )
    return result


# --------------------------------------------------------------------------------------------------
# Pareto-smoothed importance sampling (PSIS)


def _gpd_fit(x: np.ndarray, prior_bs: float = 3.0, prior_k: float = 10.0) -> tuple[float, float]:
    """Generalized Pareto shape ``k`` and scale ``sigma`` of sorted exceedances ``x`` [M] > 0.

    Zhang & Stephens (2009) empirical Bayes estimate with the weakly informative prior on ``k``
    of Vehtari et al. (PSIS): ``k`` shrunk towards 0.5 by ``prior_k`` pseudo-observations.
    """
    n = x.size
    m = 30 + int(np.sqrt(n))
    b = 1.0 - np.sqrt(m / (np.arange(1, m + 1, dtype=np.float64) - 0.5))
    b /= prior_bs * x[int(n / 4 + 0.5) - 1]
    b += 1.0 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    log_lik = n * (np.log(-b / k) - k - 1.0)
    w = 1.0 / np.exp(log_lik - log_lik[:, None]).sum(axis=1)
    keep = w >= 10 * np.finfo(float).eps
    w, b = w[keep] / w[keep].sum(), b[keep]
    b_post = float(np.sum(b * w))
    k_post = float(np.log1p(-b_post * x).mean())
    sigma = -k_post / b_post
    k_post = (n * k_post + prior_k * 0.5) / (n + prior_k)
    return k_post, sigma


def _gpd_quantile(p: np.ndarray, k: float, sigma: float) -> np.ndarray:
    """Quantiles of the generalized Pareto distribution (location 0) at probabilities ``p``."""
    if abs(k) < np.finfo(float).eps:
        return -sigma * np.log1p(-p)
    return sigma * np.expm1(-k * np.log1p(-p)) / k


@dataclass
class PSISResult:
    """Pareto-smoothed log-weights and the tail diagnostic.

    Attributes
    ----------
    log_w : np.ndarray, shape (N,)
        Normalized smoothed log-weights (``-inf`` kept for zero weights).
    pareto_k : float
        Estimated shape of the weight tail: below 0.5 fine, 0.5-0.7 usable, above 0.7 the
        estimates are unreliable (Vehtari et al. 2024); ``inf`` when the tail is too short.
    tail_length : int
        Number of smoothed weights.
    """

    log_w: np.ndarray
    pareto_k: float
    tail_length: int


def psis(log_w: np.ndarray, r_eff: float = 1.0) -> PSISResult:
    """Pareto-smoothed importance sampling (Vehtari, Simpson, Gelman, Yao & Gabry, JMLR 2024).

    The largest ``M = ceil(min(0.2 N, 3 sqrt(N / r_eff)))`` weights are replaced by the expected
    order statistics of a generalized Pareto distribution fitted to them (above the next
    largest weight), truncated at the largest raw weight: less variance than raw SNIS, much less
    bias than clipping, and the fitted shape ``pareto_k`` says whether the estimate is reliable.

    Parameters
    ----------
    log_w : np.ndarray, shape (N,)
        Log importance weights (normalized or not; ``-inf`` = zero weight).
    r_eff : float
        Relative efficiency of the draws (1 for independent proposals).

    Returns
    -------
    PSISResult
    """
    lw = _as_log_w(log_w).copy()
    finite = np.flatnonzero(np.isfinite(lw))
    x = lw[finite] - lw[finite].max()
    n = x.size
    tail_len = int(np.ceil(min(0.2 * n, 3.0 * np.sqrt(n / r_eff))))
    k = float("inf")
    if n > 5 and tail_len > 4:
        order = np.argsort(x)
        cut = max(float(x[order[-tail_len - 1]]), float(np.log(np.finfo(float).tiny)))
        tail = order[x[order] > cut]
        if tail.size > 4:
            exceed = np.exp(x[tail]) - np.exp(cut)
            k, sigma = _gpd_fit(exceed)
            if np.isfinite(k) and sigma > 0:
                probs = (np.arange(tail.size) + 0.5) / tail.size
                smooth = np.log(_gpd_quantile(probs, k, sigma) + np.exp(cut))
                x[tail] = np.minimum(smooth, 0.0)
        tail_len = int(tail.size)
    lw[finite] = x
    if k > 0.7:  # check_weights warns (once, naming the ESS)
        logger.info(
            "PSIS: Pareto k = %.2f > 0.7, the importance-sampling estimate is unreliable", k
        )
    return PSISResult(log_w=normalize_log_weights(lw), pareto_k=k, tail_length=tail_len)


# --------------------------------------------------------------------------------------------------
# weight collapse: the one check every reweighting command runs

#: a reweighted ensemble is reported as collapsed below this clipped relative ESS ...
COLLAPSE_RELATIVE_ESS = 0.01
#: ... above this Pareto k (PSIS: estimates unreliable) ...
COLLAPSE_PARETO_K = 0.7
#: ... or with fewer distinct conformations than this in the resampled ensemble
COLLAPSE_DISTINCT = 10


@dataclass
class WeightCheck:
    """How many proposals carry the weight, and whether the weights collapsed.

    Attributes
    ----------
    n : int, samples
    ess_clipped, ess_unclipped : float, Kish ESS of the clipped and of the raw weights
    pareto_k : float, PSIS tail shape of the raw weights (nan: too few finite weights)
    n_distinct : int or None, distinct conformations in the resampled ensemble
    warnings : list[str], one line per reason the estimates are unreliable (empty: fine)
    """

    n: int
    ess_clipped: float
    ess_unclipped: float
    pareto_k: float
    n_distinct: int | None
    warnings: list[str]

    @property
    def collapsed(self) -> bool:
        return bool(self.warnings)

    def to_dict(self) -> dict:
        """JSON-serialisable (the ``weights`` entry of a run's ``summary.json``)."""
        return {
            "n": self.n,
            "ess_clipped": self.ess_clipped,
            "ess_unclipped": self.ess_unclipped,
            "relative_ess_clipped": self.ess_clipped / self.n if self.n else 0.0,
            "relative_ess_unclipped": self.ess_unclipped / self.n if self.n else 0.0,
            "pareto_k": None if not np.isfinite(self.pareto_k) else self.pareto_k,
            "n_distinct_resampled": self.n_distinct,
            "collapsed": self.collapsed,
            "warnings": list(self.warnings),
        }


def check_weights(
    log_w_raw: np.ndarray,
    log_w_clipped: np.ndarray | None = None,
    n_distinct: int | None = None,
    what: str = "importance weights",
) -> WeightCheck:
    """The collapse check of every command that reweights (sample, smc, evaluate, zero-shot,
    benchmark, demo).

    Parameters
    ----------
    log_w_raw : (N,) unclipped log-weights (any normalisation; -inf = weight zero)
    log_w_clipped : (N,) clipped log-weights, optional (default: the raw ones)
    n_distinct : distinct conformations in the resampled ensemble, optional
    what : how the warnings name the weights (e.g. "SNIS weights", "SMC weights")

    Returns
    -------
    WeightCheck; its warnings (one line each, naming the ESS) are also logged: clipped
    relative ESS below :data:`COLLAPSE_RELATIVE_ESS`, Pareto k above :data:`COLLAPSE_PARETO_K`,
    fewer than :data:`COLLAPSE_DISTINCT` distinct resampled conformations.
    """
    raw = np.asarray(log_w_raw, dtype=np.float64).reshape(-1)
    clipped = raw if log_w_clipped is None else np.asarray(log_w_clipped, np.float64).reshape(-1)
    n = int(raw.size)
    finite = np.isfinite(raw)
    ess_c = kish_ess(clipped) if np.isfinite(clipped).any() else 0.0
    ess_u = kish_ess(raw) if finite.any() else 0.0
    k = float("nan")
    if finite.sum() >= 20:
        with np.errstate(all="ignore"):
            k = float(psis(raw).pareto_k)
    if log_w_clipped is None:  # e.g. SMC: its weights are never clipped
        ess_text = f"ESS {ess_u:.1f} of {n} ({ess_u / max(n, 1):.2%}; unclipped weights)"
    else:
        ess_text = (
            f"ESS {ess_c:.1f} of {n} clipped ({ess_c / max(n, 1):.2%}), {ess_u:.1f} unclipped"
        )
    warnings = []
    if n and ess_c < COLLAPSE_RELATIVE_ESS * n:
        warnings.append(
            f"{what} collapsed: {ess_text}; below {COLLAPSE_RELATIVE_ESS:.0%} of the samples, "
            "reweighted estimates rest on a few conformations"
        )
    if np.isfinite(k) and k > COLLAPSE_PARETO_K:
        warnings.append(f"{what} unreliable: Pareto k = {k:.2f} > {COLLAPSE_PARETO_K} ({ess_text})")
    if n_distinct is not None and n_distinct < COLLAPSE_DISTINCT:
        warnings.append(
            f"{what}: only {n_distinct} distinct conformation(s) in the resampled ensemble "
            f"({ess_text})"
        )
    for w in warnings:
        logger.warning("%s", w)
    return WeightCheck(n, ess_c, ess_u, k, n_distinct, warnings)
