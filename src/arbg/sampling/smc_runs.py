"""Twisted-SMC run directories: `arbg smc` writes them (the names of :mod:`arbg.sampling.runs`,
so `arbg evaluate` reads them)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from arbg.files import lock_dir, recover
from arbg.reweight import kish_ess, normalize_log_weights, systematic_resample
from arbg.sampling.config import SMCConfig, off_to_none
from arbg.sampling.proposal import ProposalState, TransformerProposal
from arbg.sampling.runs import (
    SamplerParts,
    _bin_dtype,
    _resolve_parts,
    commit_run,
    run_header,
)
from arbg.sampling.sampler import make_generators
from arbg.sampling.smc import SMCRepeats, SMCResult, twisted_smc
from arbg.sampling.targets import wrong_chirality

logger = logging.getLogger(__name__)

__all__ = ["run_smc"]


def run_smc(
    checkpoint_or_parts: Any,
    out_dir: str | Path,
    config: SMCConfig | None = None,
    *,
    wait: bool = False,
) -> dict[str, Any]:
    """Autoregressive twisted SMC on a peptide, written as a run directory.

    The run directory is locked while it is written (``wait``: see
    :func:`arbg.sampling.runs.run_sampling`) and its files are made current together by one
    :class:`arbg.io.Commit`.

    ``config.repeats`` independent populations of ``config.n_particles`` particles each are
    drawn with a :class:`arbg.sampling.proposal.TransformerProposal` and the checkpoint's system
    as target (:func:`arbg.sampling.smc.twisted_smc`, resampling at the interior residue
    boundaries) and combined through their normalizing-constant estimates
    (:class:`arbg.sampling.smc.SMCRepeats`): particle i of population r gets
    ``log w_ri - log M``, so the combined self-normalized estimate is
    ``sum_r Z_r f_r / sum_r Z_r``.

    The run directory has the names of :func:`arbg.sampling.runs.run_sampling`: ``topology.pdb``;
    ``proposals.dcd`` (the final particles of every population, after the last resampling);
    ``samples.npz`` with ``coords`` (float32 nm, canonical order), ``bins``, ``log_q`` (log q of
    each final particle's lineage, nm^-D), ``u`` (kT; +inf for particles killed before the
    end), ``log_w`` (combined and normalized, float64, -inf = weight zero), ``log_w_raw``
    (combined, unnormalized), ``chirality_wrong``, ``mirrored`` (all False), ``seed`` and
    ``repeat`` (per particle); ``ensemble.dcd`` (systematic resampling of ``log_w``,
    ``config.ensemble_size`` frames, default all particles); ``summary.json`` with the SMC
    counts (energy evaluations including partial ones, early-rejected particles, chirality
    kills, resampling events, tokens generated and saved, ESS history and log Z per repeat).
    No weight clipping is applied. An existing run directory is refused (SMC populations are
    not extended by appending).

    Parameters
    ----------
    checkpoint_or_parts : checkpoint path, Checkpoint-like object or
        :class:`arbg.sampling.runs.SamplerParts`; must carry the peptide ``system`` (the target).
    out_dir : run directory (must not hold samples yet)
    config : the SMC settings (:class:`arbg.sampling.config.SMCConfig`, None: its defaults;
        standard errors need ``repeats >= 2``)
    wait : wait for another writer of ``out_dir`` instead of failing

    Returns
    -------
    dict, the content of ``summary.json``

    Raises
    ------
    ValueError
        If the system has no interior residue boundary (e.g. ``aldp``: use SNIS, ``arbg
        sample``), or ``out_dir`` already holds samples.
    """
    t0 = time.perf_counter()
    parts = _resolve_parts(checkpoint_or_parts)
    system = parts.system
    if system is None:
        raise ValueError("run_smc needs the checkpoint's system (the target)")
    if not list(system.boundaries):
        raise ValueError(
            f"system {getattr(system, 'name', '?')!r} has no interior residue boundary (caps "
            "belong to the first and last residue), so twisted SMC has no intermediate target; "
            "use self-normalized importance sampling instead (`arbg sample`, "
            "arbg.sampling.runs.run_sampling), or SMC on a peptide with >= 2 standard residues "
            "plus caps or >= 3 without (e.g. 'ace-aaa-nme')"
        )
    config = config if config is not None else SMCConfig()
    config.check()
    out = Path(out_dir)
    with lock_dir(out, wait=wait):
        recover(out)
        if (out / "samples.npz").exists():
            raise ValueError(
                f"{out} already holds samples; SMC runs are not extended, use a new directory"
            )
        results, bins = _populations(parts, system, config)
        return _write_smc_run(out, parts, system, config, results, bins, t0)


def _populations(
    parts: SamplerParts, system: Any, cfg: SMCConfig
) -> tuple[list[SMCResult], list[np.ndarray]]:
    """``cfg.repeats`` twisted-SMC populations and the bins of their final particles."""
    model = parts.model if cfg.device is None else parts.model.to(cfg.device)
    dev = next(model.parameters()).device
    g_bins, g_off = make_generators(int(cfg.seed), dev)
    proposal = _RecordingProposal(
        model, parts.binning, parts.standardization, cfg.tau, g_bins, g_off, parts.feats
    )
    rng = np.random.default_rng([int(cfg.seed), 1])
    results, bins = [], []
    for r in range(int(cfg.repeats)):
        res = twisted_smc(
            proposal,
            system,
            int(cfg.n_particles),
            rng,
            resample=off_to_none(cfg.resample),
            ess_threshold=cfg.ess_threshold,
            early_reject_kt=cfg.early_reject_kt,
            chirality=cfg.chirality,
        )
        results.append(res)
        bins.append(proposal.last_bins)
        logger.info(
            "SMC population %d/%d: log Z %.3f, ESS %.1f", r + 1, cfg.repeats, res.log_z, res.ess
        )
    return results, bins


def _write_smc_run(
    out: Path,
    parts: SamplerParts,
    system: Any,
    cfg: SMCConfig,
    results: list[SMCResult],
    bins: list[np.ndarray],
    t0: float,
) -> dict[str, Any]:
    """Combine the populations (:class:`arbg.sampling.smc.SMCRepeats`) and write the run."""
    rep = SMCRepeats(results)
    positions, log_w_raw = rep.positions, rep.log_w
    log_w = normalize_log_weights(log_w_raw)
    n_total = len(positions)
    chir = np.asarray(getattr(system, "chirality_atoms", np.zeros((0, 4))), np.int64)
    wrong = np.zeros(n_total, dtype=bool)
    if cfg.chirality and chir.size:
        wrong = wrong_chirality(positions, chir)
    arrays = {
        "coords": positions.astype(np.float32),
        "bins": np.concatenate(bins).astype(_bin_dtype(parts.binning.n_bins)),
        "log_q": np.concatenate([r.log_q for r in results]),
        "u": np.concatenate([r.u for r in results]),
        "log_w": log_w,
        "log_w_raw": log_w_raw,
        "chirality_wrong": wrong,
        "mirrored": np.zeros(n_total, dtype=bool),
        "seed": np.full(n_total, int(cfg.seed), dtype=np.int64),
        "repeat": np.repeat(np.arange(len(results), dtype=np.int64), int(cfg.n_particles)),
    }
    ens_idx = systematic_resample(
        log_w, int(cfg.ensemble_size or n_total), np.random.default_rng([int(cfg.seed), 2])
    )
    summary = {
        "method": "twisted_smc",
        **run_header(parts, system, cfg.tau, "zero" if cfg.chirality else "none"),
        "seeds": [int(cfg.seed)],
        "n_samples": n_total,
        "n_new": n_total,
        "n_particles": int(cfg.n_particles),
        "repeats": len(results),
        "resample": off_to_none(cfg.resample),
        "ess_threshold": cfg.ess_threshold,
        "early_reject_kt": cfg.early_reject_kt,
        "boundaries": [int(b) for b in system.boundaries],
        "n_chirality_wrong": int(wrong.sum()),
        "n_mirrored": 0,
        "n_nonfinite_energy": int((~np.isfinite(arrays["u"])).sum()),
        "n_zero_weight": int((~np.isfinite(log_w)).sum()),
        **_smc_counts(results),
        "ess": float(kish_ess(log_w)),
        "relative_ess": float(kish_ess(log_w) / n_total),
        "log_z": [float(v) for v in rep.log_z],
        "log_z_combined": rep.log_z_combined,
        "clip_fraction": 0.0,
        "clip_mode": None,
        "n_clipped": 0,
        "ensemble_size": int(ens_idx.size),
        "ensemble_unique": int(np.unique(ens_idx).size),
        "wall_s_total": time.perf_counter() - t0,
        "repeat_summaries": [r.summary() for r in results],
    }
    commit_run(out, system, arrays, ens_idx, summary)
    logger.info(
        "%s: SMC %d x %d particles, ESS %.1f, %d resamplings, %d energy evaluations "
        "(%d partial), tokens saved %.3f",
        *(out, len(results), cfg.n_particles, summary["ess"], summary["n_resampling_events"]),
        *(summary["energy_evaluations"], summary["partial_energy_evaluations"]),
        summary["tokens_saved_fraction"],
    )
    return summary


def _smc_counts(results: list[SMCResult]) -> dict[str, Any]:
    """The SMC counts of ``summary.json``, summed over the populations."""
    per = [r.summary() for r in results]

    def total(key: str) -> int:
        return int(sum(p[key] for p in per))

    tokens_total = total("tokens_total")
    return {
        "energy_evaluations": total("n_energy_evals"),
        "partial_energy_evaluations": total("n_partial_energy_evals"),
        "full_energy_evaluations": total("n_energy_evals") - total("n_partial_energy_evals"),
        "n_killed_early": total("n_killed_early"),
        "n_killed_chirality": total("n_killed_chirality"),
        "n_killed_nonfinite": total("n_killed_nonfinite"),
        "n_resampling_events": total("n_resampling_events"),
        "tokens_generated": total("tokens_generated"),
        "tokens_total": tokens_total,
        "tokens_saved": total("tokens_saved"),
        "tokens_saved_fraction": total("tokens_saved") / tokens_total if tokens_total else 0.0,
        "n_unique_ancestors": [p["n_unique_ancestors"] for p in per],
        "ess_history": [p["ess_history"] for p in per],
    }


class _RecordingProposal(TransformerProposal):
    """A :class:`TransformerProposal` that keeps the bins of the last finished population."""

    last_bins: np.ndarray

    def finish(self, state: ProposalState) -> np.ndarray:
        self.last_bins = self.bins(state)  # [M, D] int64, final particle order
        return super().finish(state)
