"""Autoregressive twisted sequential Monte Carlo (the paper's Algorithm 1 and Sec. E.5.1,
made consistent).

M particles are generated in lock-step by an autoregressive proposal.  At each boundary
k of the target (for a peptide: after residue k and the N atom of residue k+1, the
prefix is closed and its reduced energy ``u_k`` evaluated) the intermediate target is
``gamma_k(prefix) = exp(-u_k(prefix_k))`` and each particle's weight is multiplied by

    exp(-(u_k - u_{k-1})) / q(tokens generated since boundary k-1 | prefix),

with ``u_0 = 0``; after the last boundary the full energy ``u`` replaces the last partial
one.  This is the twist ``psi_k = gamma_k / q(prefix_k)``; without resampling the
product telescopes to ``exp(-u(x)) / q(x)``, i.e. to the SNIS weight of the same
particle (tested).  **arbg departs on purpose from the paper's Eq. 4**, whose denominator
``p_theta(r_s(x) | r_{s-1}(x))`` (the model's likelihood of the latest residue, with
weights reset to 1 after each resampling) does not telescope to the Boltzmann target.

Resampling (systematic by default) happens at boundaries (always, or when the relative
ESS falls below ``ess_threshold``) and reorders the proposal's state (KV-cache rows).
After resampling every weight is set to the log-mean-exp of the previous weights, so the
final ``log_mean_exp(log_w)`` is the usual unbiased SMC estimate of ``log Z`` (relative
to the proposal's reference measure).

Zero weights: a particle gets weight zero at a boundary when its partial energy is not
finite, when a residue whose (N, CA, C, CB) atoms all exist has D chirality (the target
is exp(-u) restricted to all-L conformations, so this is exact), or under early
rejection when ``u_k > min_alive(u_k) + early_reject_kt`` (a heuristic that is exact only
in the limit of a large threshold: pass ``early_reject_kt=None`` in exactness tests).
"Tokens saved" counts the coordinates that killed particles would still have needed,
relative to ``M * 3 (n - 1)``; with resampling that compute goes to surviving lineages.

Standard errors: SMC particles are correlated through resampling (duplicates), so error
bars come from independent repeat runs (`smc_repeats`), never from a bootstrap over the
resampled particles.  When M particles do not fit in memory, run independent populations
and combine them through their normalizing-constant estimates (`smc_repeats`) or rebuild
caches per chunk after a global resampling (E.5.1); concatenating chunks'
*self-normalized* weights is biased.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from arbg.reweight import kish_ess, log_mean_exp, normalize_log_weights, weighted_mean
from arbg.reweight import resample as _resample
from arbg.sampling.sampler import chirality_signs
from arbg.sampling.targets import Target

logger = logging.getLogger(__name__)

__all__ = [
    "AutoregressiveProposal",
    "ParticlesExtinct",
    "SMCRepeats",
    "SMCResult",
    "smc_repeats",
    "twisted_smc",
]


@runtime_checkable
class AutoregressiveProposal(Protocol):
    """A batched autoregressive proposal with exact log-likelihood increments.

    Coordinates are generated in the target's atom order, counted 3 per atom; a full
    conformation has ``3 (n_atoms - 1)`` units (the last atom follows from the centring
    constraint) unless the proposal has an ``n_units`` attribute (the gauge frame of
    :mod:`arbg.nn.coordinates` models every atom: ``3 n_atoms``).  The sum of all `extend`
    increments of a particle must
    be its exact ``log q(x)`` in the space where the target's energy is a density
    (e.g. nm, centred coordinates, de-standardized: the implementation adds Jacobians).
    """

    def start(self, n_particles: int) -> Any:
        """Fresh state for ``n_particles`` particles (e.g. an empty KV cache)."""
        ...

    def extend(self, state: Any, n_coords: int) -> np.ndarray:
        """Generate the next ``n_coords`` coordinates of every particle (in place in
        ``state``); return ``log q`` of them given the prefix, shape [M] float64."""
        ...

    def coords(self, state: Any) -> np.ndarray:
        """Coordinates generated so far, [M, n_generated] (nm, target atom order,
        flattened xyz).  Prefix energies are translation invariant, so any frame works."""
        ...

    def reorder(self, state: Any, index: np.ndarray) -> Any:
        """Reorder particles (rows of caches, tokens, ...) by ``index`` [M]; in place, or
        return the new state."""
        ...

    def finish(self, state: Any) -> np.ndarray:
        """Full conformations [M, n_atoms, 3] (nm) after all coordinates are generated."""
        ...


@dataclass
class SMCResult:
    """One SMC population.

    Attributes
    ----------
    positions : np.ndarray, shape (M, n_atoms, 3)
        Final particles (nm).
    log_w : np.ndarray, shape (M,)
        Final unnormalized log-weights (carry the normalizing-constant estimate).
    log_q : np.ndarray, shape (M,)
        Proposal log-density of each final particle (sum of its lineage's increments).
    u : np.ndarray, shape (M,)
        Final reduced energies (kT); +inf for particles already dead (not evaluated).
    log_z : float
        ``log_mean_exp(log_w)``: unbiased (in Z) estimate of log of the target's
        normalizing constant relative to the proposal's reference measure.
    ess_history : list[float]
        Kish ESS (absolute) at each boundary before resampling, then of the final weights.
    """

    positions: np.ndarray
    log_w: np.ndarray
    log_q: np.ndarray
    u: np.ndarray
    log_z: float
    ess_history: list[float]
    boundaries: list[int]
    n_particles: int
    n_energy_evals: int = 0
    n_partial_energy_evals: int = 0
    n_killed_early: int = 0
    n_killed_chirality: int = 0
    n_killed_nonfinite: int = 0
    n_resampling_events: int = 0
    n_unique_ancestors: int = 0
    tokens_generated: int = 0
    tokens_total: int = 0
    tokens_saved: int = 0
    resampled_at: list[int] = field(default_factory=list)

    @property
    def log_w_normalized(self) -> np.ndarray:
        return normalize_log_weights(self.log_w)

    @property
    def ess(self) -> float:
        return kish_ess(self.log_w)

    @property
    def tokens_saved_fraction(self) -> float:
        return self.tokens_saved / self.tokens_total if self.tokens_total else 0.0

    def mean(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Self-normalized weighted mean; the delta-method SE ignores resampling
        correlations: prefer `smc_repeats` for error bars."""
        return weighted_mean(values, self.log_w)

    def summary(self) -> dict:
        """JSON-serialisable counts."""
        return {
            "n_particles": self.n_particles,
            "log_z": self.log_z,
            "ess": self.ess,
            "ess_history": [float(e) for e in self.ess_history],
            "boundaries": list(self.boundaries),
            "n_energy_evals": self.n_energy_evals,
            "n_partial_energy_evals": self.n_partial_energy_evals,
            "n_killed_early": self.n_killed_early,
            "n_killed_chirality": self.n_killed_chirality,
            "n_killed_nonfinite": self.n_killed_nonfinite,
            "n_resampling_events": self.n_resampling_events,
            "resampled_at": list(self.resampled_at),
            "n_unique_ancestors": self.n_unique_ancestors,
            "tokens_generated": self.tokens_generated,
            "tokens_total": self.tokens_total,
            "tokens_saved": self.tokens_saved,
            "tokens_saved_fraction": self.tokens_saved_fraction,
        }


def _update(log_w: np.ndarray, u_new: np.ndarray, u_prev: np.ndarray, lq: np.ndarray) -> np.ndarray:
    ok = np.isfinite(log_w) & np.isfinite(u_new) & np.isfinite(lq)
    out = np.full(log_w.shape, -np.inf)
    out[ok] = log_w[ok] - (u_new[ok] - u_prev[ok]) - lq[ok]
    return out


def _energy(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, alive: np.ndarray):
    u = np.full(x.shape[0], np.inf)
    if alive.any():
        u[alive] = np.asarray(fn(x[alive]), dtype=np.float64)
    u[~np.isfinite(u)] = np.inf
    return u


def _kill(res: SMCResult, mask: np.ndarray, lw: np.ndarray, remaining: int) -> int:
    """Set the weight of the live particles in ``mask`` to zero; count the tokens saved."""
    newly = mask & np.isfinite(lw)
    lw[newly] = -np.inf
    res.tokens_saved += int(newly.sum()) * remaining
    return int(newly.sum())


class ParticlesExtinct(RuntimeError):
    """Every particle of a twisted-SMC population has weight zero: an outcome (the proposal is
    too far from the target for this many particles), not a bug."""


def _check_alive(res: SMCResult, lw: np.ndarray, where: str) -> None:
    if not np.isfinite(lw).any():
        raise ParticlesExtinct(
            f"twisted SMC: all {len(lw)} particles have weight zero at {where} "
            f"(killed early: {res.n_killed_early}, chirality: {res.n_killed_chirality}, "
            f"non-finite energy: {res.n_killed_nonfinite}); try more particles (--particles), "
            "a larger --early-reject-kt, or a better model"
        )


def _prefix_weights(
    res: SMCResult,
    target: Target,
    k: int,
    x: np.ndarray,
    log_w: np.ndarray,
    u_prev: np.ndarray,
    lq: np.ndarray,
    chir: np.ndarray,
    early_reject_kt: float | None,
    remaining: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Prefix energies ``u_k`` at boundary ``k`` and the twisted weights after them: non-finite
    ones, prefixes with a D residue and (``early_reject_kt``) high energies are killed."""
    b = x.shape[1]
    alive = np.isfinite(log_w)
    u_k = _energy(lambda xa: target.prefix_energy(k, xa), x, alive)
    res.n_partial_energy_evals += int(alive.sum())
    new_lw = _update(log_w, u_k, u_prev, lq)
    nonfinite = alive & ~np.isfinite(new_lw)
    res.n_killed_nonfinite += int(nonfinite.sum())
    res.tokens_saved += int(nonfinite.sum()) * remaining
    ready = chir[np.all(chir < b, axis=1)]
    if ready.size:
        wrong = np.any(chirality_signs(x, ready) < 0, axis=1)
        res.n_killed_chirality += _kill(res, wrong, new_lw, remaining)
    if early_reject_kt is not None and np.isfinite(new_lw).any():
        threshold = u_k[np.isfinite(new_lw)].min() + early_reject_kt
        res.n_killed_early += _kill(res, u_k > threshold, new_lw, remaining)
    _check_alive(res, new_lw, f"boundary {k} ({b} atoms)")
    return u_k, new_lw


def _check_arguments(bounds: list[int], n_atoms: int, resample: str | None) -> None:
    if any(b1 >= b2 for b1, b2 in zip(bounds[:-1], bounds[1:], strict=True)) or any(
        not 1 <= b <= n_atoms - 1 for b in bounds
    ):
        raise ValueError(f"boundaries must increase within [1, n_atoms - 1]: {bounds}")
    if resample not in ("systematic", "multinomial", None):
        raise ValueError(f"unknown resampling scheme {resample!r}")


def _log_result(res: SMCResult) -> None:
    logger.info(
        "twisted SMC: M=%d log Z=%.3f ESS=%.1f resamplings=%d killed early=%d chirality=%d "
        "tokens saved=%.3f",
        res.n_particles,
        res.log_z,
        res.ess,
        res.n_resampling_events,
        res.n_killed_early,
        res.n_killed_chirality,
        res.tokens_saved_fraction,
    )


# long: a 35-line docstring; the boundary loop and the last step share six running arrays
def twisted_smc(
    proposal: AutoregressiveProposal,
    target: Target,
    n_particles: int,
    rng: np.random.Generator,
    resample: str | None = "systematic",
    ess_threshold: float | None = None,
    early_reject_kt: float | None = 100.0,
    chirality: bool = True,
) -> SMCResult:
    """Autoregressive twisted SMC (paper Algorithm 1 / E.5.1, consistent weights).

    Parameters
    ----------
    proposal : AutoregressiveProposal
    target : Target
        Provides ``boundaries`` (prefix atom counts), ``prefix_energy``,
        ``reduced_energy`` and ``chirality_atoms``.
    n_particles : int
        Population size M.
    rng : np.random.Generator
        Used for resampling only (the proposal owns its own generator).
    resample : {"systematic", "multinomial", None}
        Resampling scheme at boundaries; ``None`` disables resampling (the final weights
        are then exactly the SNIS weights ``-u - log q`` of the particles).
    ess_threshold : float, optional
        Resample only when ``ESS / M < ess_threshold``; ``None``: at every boundary.
    early_reject_kt : float, optional
        Kill particles with ``u_k > min(u_k) + early_reject_kt`` (kT); ``None`` disables.
    chirality : bool
        Kill particles with a D residue as soon as its (N, CA, C, CB) atoms exist.

    Returns
    -------
    SMCResult

    Raises
    ------
    RuntimeError
        If every particle has weight zero at some boundary or at the end.
    """
    bounds = [int(b) for b in target.boundaries]
    n_atoms = int(target.n_atoms)
    # 3 units per atom; the last atom is generated only where the proposal models it
    total = int(getattr(proposal, "n_units", 3 * (n_atoms - 1)))
    _check_arguments(bounds, n_atoms, resample)
    m = int(n_particles)
    chir = np.asarray(target.chirality_atoms, dtype=np.int64).reshape(-1, 4)
    chir = chir[np.all(chir >= 0, axis=1)] if chirality else chir[:0]

    res = SMCResult(
        positions=np.empty((0, n_atoms, 3)),
        log_w=np.zeros(m),
        log_q=np.zeros(m),
        u=np.zeros(m),
        log_z=0.0,
        ess_history=[],
        boundaries=bounds,
        n_particles=m,
        tokens_total=m * total,
    )
    state = proposal.start(m)
    log_w = np.zeros(m)
    log_q = np.zeros(m)
    u_prev = np.zeros(m)
    founders = np.arange(m)
    done = 0

    for k, b in enumerate(bounds):
        n_new = 3 * b - done
        lq = np.asarray(proposal.extend(state, n_new), dtype=np.float64) if n_new else np.zeros(m)
        res.tokens_generated += m * n_new
        done = 3 * b
        log_q += lq
        remaining = total - done
        x = np.asarray(proposal.coords(state), dtype=np.float64)[:, :done].reshape(m, b, 3)
        u_k, new_lw = _prefix_weights(
            res, target, k, x, log_w, u_prev, lq, chir, early_reject_kt, remaining
        )
        ess = kish_ess(new_lw)
        res.ess_history.append(ess)
        log_w, u_prev = new_lw, u_k
        logger.debug("SMC boundary %d (%d atoms): ESS %.1f / %d", k, b, ess, m)
        if resample is not None and (ess_threshold is None or ess < ess_threshold * m):
            idx = _resample(log_w, m, rng, resample)
            level = log_mean_exp(log_w)
            new_state = proposal.reorder(state, idx)
            state = state if new_state is None else new_state
            log_q, u_prev, founders = log_q[idx], u_prev[idx], founders[idx]
            log_w = np.full(m, level)
            res.n_resampling_events += 1
            res.resampled_at.append(k)

    n_new = total - done
    lq = np.asarray(proposal.extend(state, n_new), dtype=np.float64) if n_new else np.zeros(m)
    res.tokens_generated += m * n_new
    log_q += lq
    positions = np.asarray(proposal.finish(state), dtype=np.float64)
    alive = np.isfinite(log_w)
    u = _energy(target.reduced_energy, positions, alive)
    res.n_energy_evals = res.n_partial_energy_evals + int(alive.sum())
    new_lw = _update(log_w, u, u_prev, lq)
    res.n_killed_nonfinite += int((alive & ~np.isfinite(new_lw)).sum())
    if chir.size:
        wrong = np.any(chirality_signs(positions, chir) < 0, axis=1)
        res.n_killed_chirality += _kill(res, wrong, new_lw, 0)
    _check_alive(res, new_lw, "the end")
    res.positions, res.log_w, res.log_q, res.u = positions, new_lw, log_q, u
    res.log_z = float(log_mean_exp(new_lw))
    res.ess_history.append(kish_ess(new_lw))
    res.n_unique_ancestors = int(np.unique(founders[np.isfinite(new_lw)]).size)
    _log_result(res)
    return res


@dataclass
class SMCRepeats:
    """Independent SMC populations combined through their normalizing constants.

    Population r is weighted in proportion to its ``Z_r`` estimate: particle i of r gets
    combined log-weight ``log Z_r + log wbar_ri = log w_ri - log M_r``, so the combined
    self-normalized estimate is ``sum_r Z_r f_r / sum_r Z_r`` with ``f_r`` the estimate of
    population r.  (Concatenating the populations' *self-normalized* weights instead, i.e.
    weighting every population equally, is biased.)
    """

    results: list[SMCResult]

    @property
    def log_z(self) -> np.ndarray:
        """Per-population log Z estimates, shape (R,)."""
        return np.array([r.log_z for r in self.results])

    @property
    def log_z_combined(self) -> float:
        """``log mean_r Z_r`` (unbiased in Z when populations have equal size)."""
        return float(log_mean_exp(self.log_z))

    @property
    def positions(self) -> np.ndarray:
        return np.concatenate([r.positions for r in self.results])

    @property
    def log_w(self) -> np.ndarray:
        """Combined log-weights of the concatenated particles, shape (sum M_r,)."""
        return np.concatenate([r.log_w - np.log(r.n_particles) for r in self.results])

    def estimate(
        self, observable: Callable[[np.ndarray], np.ndarray] | list[np.ndarray]
    ) -> tuple[float, float]:
        """Combined estimate of a scalar observable and its standard error.

        Parameters
        ----------
        observable : callable or list of arrays
            ``positions [M, n, 3] -> values [M]``, or the values of each population.

        Returns
        -------
        mean : float
            Z-weighted combination of the populations' self-normalized estimates.
        standard_error : float
            Delta-method SE of the ratio ``sum_r Z_r f_r / sum_r Z_r`` with the
            independent populations as units:
            ``SE^2 = R / (R - 1) * sum_r (Z_r / sum Z)^2 (f_r - mean)^2``, which reduces
            to ``std(f_r, ddof=1) / sqrt(R)`` when the Z_r are equal.  NaN for R = 1.
        """
        if callable(observable):
            values = [np.asarray(observable(r.positions)) for r in self.results]
        else:
            values = [np.asarray(v) for v in observable]
        pairs = zip(values, self.results, strict=True)
        per = np.array([weighted_mean(v, r.log_w)[0] for v, r in pairs])
        mean = float(weighted_mean(np.concatenate(values), self.log_w)[0])
        n_rep = len(self.results)
        if n_rep < 2:
            return mean, float("nan")
        zbar = np.exp(normalize_log_weights(self.log_z))
        se = float(np.sqrt(n_rep / (n_rep - 1) * np.sum(zbar**2 * (per - mean) ** 2)))
        return mean, se


def smc_repeats(
    proposal: AutoregressiveProposal,
    target: Target,
    n_particles: int,
    n_repeats: int,
    rng: np.random.Generator,
    **kwargs: Any,
) -> SMCRepeats:
    """Run ``n_repeats`` independent `twisted_smc` populations (keyword arguments are
    passed on) and combine them through their normalizing-constant estimates.

    The proposal's own generator advances between runs, so the populations are
    independent; resampling uses ``rng``.  Standard errors come from the spread of the
    independent populations (`SMCRepeats.estimate`).
    """
    results = [twisted_smc(proposal, target, n_particles, rng, **kwargs) for _ in range(n_repeats)]
    return SMCRepeats(results)
