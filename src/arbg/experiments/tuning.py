"""`arbg tune-temperature`: pick the sampling temperature tau on the validation block.

For each tau in a list, draw proposals at that tau (with the exact log q of the tempered
proposal), reweight them by SNIS, resample ``n_eval`` conformations and measure E-W2 + T-W2
against the validation split (stride-subsampled to ``n_eval`` frames). The tau with the lowest sum
wins. The paper tunes tau per system this way (1.03 for aldp, 0.88 for Chignolin;
``docs/references.md``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arbg import checks
from arbg.eval.ensembles import Ensemble, backbone_torsions, resampled_score, strided_reference
from arbg.reweight import snis
from arbg.sampling.sampler import generate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneConfig:
    """The tau sweep of `arbg tune-temperature`.

    Attributes
    ----------
    taus : sampling temperatures to try (logits / tau).
    n : proposals per tau.
    n_eval : resampled conformations (and validation frames) per W2.
    seed : tau number i draws with seed + i.
    device : where the model runs.
    """

    taus: tuple[float, ...] = (0.9, 0.95, 1.0, 1.03, 1.06, 1.1)
    n: int = 2000
    n_eval: int = 1000
    seed: int = 0
    device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda")})

    def check(self) -> None:
        """Raise :class:`arbg.checks.ArgumentError` naming the flag of a bad value."""
        if not self.taus:
            raise checks.ArgumentError("--taus: got no values; expected one or more numbers > 0")
        for t in self.taus:
            checks.positive_float("--taus", t)
        checks.positive_int("--n", self.n)
        checks.positive_int("--n-eval", self.n_eval)
        checks.nonnegative_int("--seed", self.seed)


def tune_temperature(
    checkpoint: Any,
    validation_positions: np.ndarray,
    config: TuneConfig | None = None,
    *,
    progress: bool = False,
    validation_log_weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Sweep tau; return ``{"rows": [...], "best_tau": float, "n", "n_eval", "seed"}``.

    Parameters
    ----------
    checkpoint : a loaded :class:`arbg.train.checkpoints.Checkpoint`.
    validation_positions : [F, n_atoms, 3] nm, canonical order, time-ordered (the val split).
    config : the sweep (:class:`TuneConfig`; None: its defaults).
    progress : tqdm progress bars while sampling.
    validation_log_weights : [F] frame log-weights of weighted (biased/heated) validation data;
        the subsampled frames carry them into E-W2 and T-W2. None = equilibrium frames.
    """
    cfg = config if config is not None else TuneConfig()
    cfg.check()
    n, n_eval, seed = cfg.n, cfg.n_eval, cfg.seed
    system = checkpoint.system
    step = max(1, len(validation_positions) // n_eval)
    ref_x = validation_positions[::step][:n_eval]  # energies of the kept frames only
    ref_lw = None if validation_log_weights is None else validation_log_weights[::step][:n_eval]
    ref = strided_reference(
        system.reduced_energy(ref_x),
        backbone_torsions(ref_x, system.phi_indices, system.psi_indices),
        n_eval,
        ref_lw,
    )
    rows = []
    for i, tau in enumerate(cfg.taus):
        batch = generate(
            checkpoint.model,
            checkpoint.binning,
            checkpoint.standardization,
            n,
            tau=tau,
            seed=seed + i,
            feats=checkpoint.feats,
            chirality_atoms=system.chirality_atoms,
            device=cfg.device,
            progress=progress,
        )
        u = system.reduced_energy(batch.coords)
        u_eff = np.where(batch.chirality_wrong, np.inf, u)
        res = snis(u_eff, batch.log_q)
        proposals = Ensemble(
            u, backbone_torsions(batch.coords, system.phi_indices, system.psi_indices)
        )
        scored = resampled_score(
            proposals, res.log_w, ref, min(n_eval, n), np.random.default_rng(seed + i)
        )
        e, t = scored["e_w2"], scored["t_w2"]
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


def format_tune_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The rows of :func:`tune_temperature` as a text table (tau, E-W2, T-W2, sum, ESS)."""
    lines = [f"{'tau':>6s} {'E-W2':>8s} {'T-W2':>8s} {'sum':>8s} {'ESS':>8s}"]
    for r in rows:
        lines.append(
            f"{r['tau']:6.3f} {r['e_w2']:8.3f} {r['t_w2']:8.3f} {r['score']:8.3f} {r['ess']:8.1f}"
        )
    return lines
