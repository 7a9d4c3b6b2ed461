"""`arbg tune-temperature`: pick the sampling temperature tau on the validation block.

For each tau in a list, draw proposals at that tau (with the exact log q of the tempered
proposal), reweight them by SNIS, resample ``n_eval`` conformations and measure E-W2 + T-W2
against the validation split (stride-subsampled to ``n_eval`` frames). The tau with the lowest sum
wins. The paper tunes tau per system this way (1.03 for aldp, 0.88 for Chignolin;
``../shared/reference.md``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from arbg.eval.metrics import backbone_torsions, energy_w2, torsion_w2, weights_from_log
from arbg.reweight import multinomial_resample, snis
from arbg.sampling.sampler import generate

log = logging.getLogger(__name__)


def tune_temperature(
    checkpoint,
    validation_positions: np.ndarray,
    taus: list[float],
    *,
    n: int = 2000,
    n_eval: int = 1000,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    validation_log_weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Sweep tau; return ``{"rows": [...], "best_tau": float}``.

    Parameters
    ----------
    checkpoint : a loaded :class:`arbg.train.checkpoints.Checkpoint`.
    validation_positions : [F, n_atoms, 3] nm, canonical order, time-ordered (the val split).
    taus : sampling temperatures to try (logits / tau).
    n : proposals per tau. n_eval : resampled conformations per metric.
    validation_log_weights : [F] frame log-weights of weighted (biased/heated) validation data;
        the subsampled frames carry them into E-W2 and T-W2. None = equilibrium frames.
    """

    system = checkpoint.system
    if not taus or any(t <= 0 for t in taus):
        raise ValueError(f"taus must be positive numbers, got {taus}")
    stride = max(1, len(validation_positions) // n_eval)
    ref = validation_positions[::stride][:n_eval]
    ref_u = system.reduced_energy(ref)
    ref_t = backbone_torsions(ref, system.phi_indices, system.psi_indices)
    ref_w = None
    if validation_log_weights is not None and np.ptp(validation_log_weights) > 0:
        ref_w = weights_from_log(np.asarray(validation_log_weights)[::stride][:n_eval])
    rows = []
    for i, tau in enumerate(taus):
        batch = generate(
            checkpoint.model,
            checkpoint.binning,
            checkpoint.standardization,
            n,
            tau=tau,
            seed=seed + i,
            feats=checkpoint.feats,
            chirality_atoms=system.chirality_atoms,
            device=device,
            progress=progress,
        )
        u = system.reduced_energy(batch.coords)
        u_eff = np.where(batch.chirality_wrong, np.inf, u)
        res = snis(u_eff, batch.log_q)
        idx = multinomial_resample(res.log_w, min(n_eval, n), np.random.default_rng(seed + i))
        x = batch.coords[idx]
        e = energy_w2(u[idx], ref_u, None, ref_w)
        t = torsion_w2(
            backbone_torsions(x, system.phi_indices, system.psi_indices), ref_t, None, ref_w
        )
        row = {
            "tau": float(tau),
            "e_w2": float(e),
            "t_w2": float(t),
            "score": float(e + t),
            "ess": float(res.ess),
            "relative_ess": float(res.relative_ess),
            "n_chirality_wrong": int(batch.chirality_wrong.sum()),
        }
        log.info("tau %.3f: E-W2 %.3f T-W2 %.3f ESS %.1f", tau, e, t, res.ess)
        rows.append(row)
    best = min(rows, key=lambda r: r["score"])
    return {"rows": rows, "best_tau": best["tau"], "n": n, "n_eval": n_eval, "seed": seed}
