"""Ramachandran basin populations and free-energy differences with confidence intervals.

Observables a chemist asks for (issue 5): the populations of the Ramachandran basins of one
residue, for a weighted ensemble (importance weights) or an MD trajectory, and the free-energy
differences between basins, ``dF_ij = -ln(p_i / p_j)`` in kT.
:func:`compute_populations` gives both, per residue, for the reference MD and a reweighted
ensemble (the tables of the evaluation and its report).

Default basins (alanine-dipeptide conventions; angles wrapped to [-180, 180) degrees; the three
basins partition the Ramachandran plane, so populations sum to one):

- ``beta_C7eq_PII``: phi < 0 and (psi >= 50 or psi < -120). Extended region: C5/beta
  (phi ~ -150, psi ~ 160), polyproline II (phi ~ -75, psi ~ 145) and C7eq (phi ~ -83, psi ~ 73).
- ``alphaR``: phi < 0 and -120 <= psi < 50. Right-handed helix (phi ~ -70, psi ~ -40).
- ``alphaL_C7ax``: phi >= 0. Left-handed helix (phi ~ 60, psi ~ 45) and C7ax (phi ~ 70, psi ~ -70).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arbg.chem.geometry import dihedrals

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Basin:
    """A rectangular-union region of the Ramachandran plane, in degrees.

    Membership: ``phi_min <= phi < phi_max`` and psi in any half-open interval of ``psi_ranges``,
    after wrapping both angles to [-180, 180).
    """

    name: str
    phi_min: float
    phi_max: float
    psi_ranges: tuple[tuple[float, float], ...] = field(default=((-180.0, 180.0),))

    def contains(self, phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
        """Boolean mask ``[N]`` for ``phi, psi`` in radians ``[N]``."""
        ph, ps = _wrap_deg(phi), _wrap_deg(psi)
        in_psi = np.zeros(ph.shape, dtype=bool)
        for lo, hi in self.psi_ranges:
            in_psi |= (ps >= lo) & (ps < hi)
        return (ph >= self.phi_min) & (ph < self.phi_max) & in_psi


DEFAULT_BASINS: tuple[Basin, ...] = (
    Basin("beta_C7eq_PII", -180.0, 0.0, ((50.0, 180.0), (-180.0, -120.0))),
    Basin("alphaR", -180.0, 0.0, ((-120.0, 50.0),)),
    Basin("alphaL_C7ax", 0.0, 180.0),
)


def _wrap_deg(angle_rad: np.ndarray) -> np.ndarray:
    deg = np.degrees(np.asarray(angle_rad, dtype=np.float64))
    return (deg + 180.0) % 360.0 - 180.0


def basin_populations(
    phi: np.ndarray,
    psi: np.ndarray,
    weights: np.ndarray | None = None,
    basins: Sequence[Basin] = DEFAULT_BASINS,
    n_blocks: int | None = None,
) -> dict[str, Any]:
    """Populations of Ramachandran basins with standard errors.

    Standard errors:

    - weighted (``weights`` given, self-normalized importance sampling), ``n_blocks`` None:
      delta method, ``SE^2 = sum_i w_i^2 (1_B(x_i) - p)^2`` with normalized weights (for
      uniform weights this is ``p(1-p)/N``; it is close to ``p(1-p)/ESS`` with the Kish ESS).
    - weighted, ``n_blocks`` given (a weighted, correlated MD trajectory, e.g. biased or heated
      data): delete-one-block jackknife of the ratio ``p = sum w 1_B / sum w`` over ``n_blocks``
      contiguous blocks, ``SE^2 = (n-1)/n sum_b (p_(-b) - mean p_(-b))^2``.
    - unweighted, ``n_blocks`` None: independent samples, ``SE = sqrt(p(1-p)/N)``.
    - unweighted, ``n_blocks`` given (correlated MD trajectories): block standard error over
      ``n_blocks`` contiguous blocks, ``SE = std(p_block, ddof=1) / sqrt(n_blocks)``.

    Parameters
    ----------
    phi, psi : ndarray, shape (N,)
        Backbone dihedrals of one residue, radians.
    weights : ndarray, shape (N,), optional
        Non-negative importance weights (normalized internally).
    basins : sequence of Basin
        Basin definitions (default :data:`DEFAULT_BASINS`).
    n_blocks : int, optional
        Use block standard errors (a block jackknife with weights).

    Returns
    -------
    dict
        ``{"basins": {name: {"p", "se"}}, "n": N, "n_eff": float, "se_method": str,
        "unassigned": float}``; ``n_eff`` is the Kish ESS (N when unweighted).
    """
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    psi = np.asarray(psi, dtype=np.float64).reshape(-1)
    n = phi.size
    if weights is None:
        w = np.full(n, 1.0 / n)
        method = "block" if n_blocks else "iid"
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        w = w / w.sum()
        method = "block_jackknife" if n_blocks else "delta_snis"
    n_eff = float(1.0 / np.sum(w**2))
    out: dict[str, dict[str, float]] = {}
    assigned = np.zeros(n, dtype=bool)
    for basin in basins:
        ind = basin.contains(phi, psi)
        assigned |= ind
        p = min(float(np.sum(w[ind])), 1.0)  # a sum of n equal weights 1/n can round above 1
        if method == "delta_snis":
            se = math.sqrt(float(np.sum(w**2 * (ind - p) ** 2)))
        elif method == "block_jackknife":
            se = _jackknife_ratio_se(w, ind, int(n_blocks))
        elif method == "block":
            blocks = np.array_split(ind.astype(np.float64), int(n_blocks))
            pb = np.array([b.mean() for b in blocks if b.size])
            se = float(np.std(pb, ddof=1) / math.sqrt(pb.size)) if pb.size > 1 else float("nan")
        else:
            se = math.sqrt(p * (1.0 - p) / n)
        out[basin.name] = {"p": p, "se": se}
    return {
        "basins": out,
        "n": int(n),
        "n_eff": n_eff,
        "se_method": method,
        "unassigned": float(np.sum(w[~assigned])),
    }


def _jackknife_ratio_se(w: np.ndarray, ind: np.ndarray, n_blocks: int) -> float:
    """Delete-one-block jackknife SE of ``sum w 1 / sum w`` over contiguous blocks."""
    edges = np.linspace(0, w.size, min(n_blocks, w.size) + 1).astype(int)
    s1 = np.add.reduceat(w * ind, edges[:-1])
    s0 = np.add.reduceat(w, edges[:-1])
    rest0 = s0.sum() - s0
    ok = rest0 > 0
    if ok.sum() < 2:
        return float("nan")
    p_minus = (s1.sum() - s1[ok]) / rest0[ok]
    n = p_minus.size
    return float(math.sqrt((n - 1) / n * np.sum((p_minus - p_minus.mean()) ** 2)))


def free_energy_differences(
    populations: dict[str, Any], reference: str | None = None
) -> dict[str, dict[str, float]]:
    """Free-energy differences between basins, ``dF_i = -ln(p_i / p_ref)`` in kT.

    The standard error comes from the delta method,
    ``SE^2 = (se_i/p_i)^2 + (se_ref/p_ref)^2 - 2 cov/(p_i p_ref)``, with the multinomial
    covariance ``cov = -p_i p_ref / n_eff`` for iid and weighted estimates (not available for
    block errors, where the covariance term is omitted). 95 % confidence intervals are
    ``dF +- 1.96 SE``.

    Parameters
    ----------
    populations : dict
        Output of :func:`basin_populations`.
    reference : str, optional
        Reference basin (default: the most populated one).

    Returns
    -------
    dict
        ``{name: {"dF", "se", "ci_low", "ci_high", "reference"}}`` in kT; ``dF`` is ``inf`` for an
        empty basin (SE and CI NaN).
    """
    basins = populations["basins"]
    if reference is None:
        reference = max(basins, key=lambda k: basins[k]["p"])
    p_ref, se_ref = basins[reference]["p"], basins[reference]["se"]
    cov_term = populations.get("se_method") in ("iid", "delta_snis")
    n_eff = float(populations.get("n_eff", float("nan")))
    out: dict[str, dict[str, Any]] = {}
    for name, b in basins.items():
        p, se = b["p"], b["se"]
        if p <= 0 or p_ref <= 0:
            dF, sd = float("inf"), float("nan")
        else:
            dF = -math.log(p / p_ref)
            if name == reference:
                sd = 0.0
            else:
                var = (se / p) ** 2 + (se_ref / p_ref) ** 2
                if cov_term and n_eff > 0:
                    var += 2.0 / n_eff
                sd = math.sqrt(var)
        out[name] = {
            "dF": dF,
            "se": sd,
            "ci_low": dF - Z95 * sd,
            "ci_high": dF + Z95 * sd,
            "reference": reference,
        }
    return out


def compute_populations(
    ref_positions: np.ndarray,
    positions: np.ndarray,
    weights: np.ndarray,
    phi_indices: np.ndarray,
    psi_indices: np.ndarray,
    n_blocks: int = 10,
    residue_labels: Sequence[str] | None = None,
    ref_weights: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Basin populations and dF per residue for the reference MD (block SE; with ``ref_weights``
    [T], the weighted populations with block-jackknife SE) and the reweighted ensemble
    (delta-method SE). Residue k uses ``phi_indices[k]`` and ``psi_indices[k]``."""
    out: dict[str, dict[str, Any]] = {}
    phi_r, psi_r = dihedrals(ref_positions, phi_indices), dihedrals(ref_positions, psi_indices)
    phi_s, psi_s = dihedrals(positions, phi_indices), dihedrals(positions, psi_indices)
    for k in range(min(phi_r.shape[1], psi_r.shape[1])):
        res = residue_labels[k] if residue_labels else f"residue {k + 1}"
        ref = basin_populations(phi_r[:, k], psi_r[:, k], weights=ref_weights, n_blocks=n_blocks)
        rew = basin_populations(phi_s[:, k], psi_s[:, k], weights=weights)
        # both dF columns relative to the basin most populated in the reference
        top = max(ref["basins"], key=lambda b: ref["basins"][b]["p"])
        for name, pops in (("reference MD", ref), ("reweighted", rew)):
            out[f"{res} / {name}"] = {
                "populations": pops,
                "dF": free_energy_differences(pops, reference=top),
            }
    return out
