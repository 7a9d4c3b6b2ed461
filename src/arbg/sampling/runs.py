"""Sampling run directories: `arbg sample` writes and extends them.

A run directory has fixed names: ``topology.pdb``; ``proposals.dcd`` (every proposal);
``samples.npz`` with ``coords`` (float32 nm), ``bins``, ``log_q``, ``u``, ``log_w`` (float64,
``-inf`` = zero weight), ``log_w_raw``, ``chirality_wrong``, ``mirrored``, ``seed``;
``ensemble.dcd`` (a resampled equilibrium ensemble); ``summary.json``. All arrays and files are in
the system's canonical atom order (the order of ``topology.pdb``). Running again with a new seed
appends samples and recomputes the weights over all of them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arbg.io import atomic_save_npz, atomic_write_json
from arbg.nn.binning import Binning
from arbg.nn.model import ARBG, TokenFeatures
from arbg.nn.standardize import Standardization
from arbg.reweight import kish_ess, normalize_log_weights, snis, systematic_resample
from arbg.sampling.sampler import ProposalState, TransformerProposal, generate, make_generators
from arbg.sampling.smc import SMCRepeats, twisted_smc
from arbg.sampling.targets import wrong_chirality
from arbg.train.checkpoints import load_checkpoint
from arbg.train.trainer import rank_and_world_size

logger = logging.getLogger(__name__)
# --------------------------------------------------------------------------------------------------
# run directories

RUN_FILES = ("topology.pdb", "proposals.dcd", "samples.npz", "ensemble.dcd", "summary.json")


@dataclass
class SamplerParts:
    """What sampling needs from a checkpoint (duck-types ``arbg.train.checkpoints.Checkpoint``)."""

    model: ARBG
    binning: Binning
    standardization: Standardization
    system: Any = None
    feats: TokenFeatures | None = None
    path: str | None = None


def _resolve_parts(obj: Any) -> SamplerParts:
    if isinstance(obj, SamplerParts):
        return obj
    if isinstance(obj, (str, Path)):
        ck = load_checkpoint(obj)
        parts = _resolve_parts(ck)
        parts.path = str(obj)
        return parts
    get = obj.get if isinstance(obj, dict) else (lambda k, d=None: getattr(obj, k, d))
    path = get("path")
    return SamplerParts(
        get("model"),
        get("binning"),
        get("standardization"),
        get("system"),
        get("feats"),
        str(path) if path is not None else None,
    )


def _save_dcd(path: Path, xyz: np.ndarray, topology: Any) -> None:
    """Write a DCD atomically (mdtraj; nm in, Angstrom float32 on disk)."""
    import mdtraj

    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.dcd")
    try:
        mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32), topology).save_dcd(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run_sampling(
    checkpoint_or_parts: Any,
    out_dir: str | Path,
    n: int,
    tau: float = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    energy: Any = None,
    clip_fraction: float = 0.002,
    clip_mode: str | None = "drop",
    chirality: str = "zero",
    ensemble_size: int | None = None,
    batch_size: int = 1024,
    progress: bool = False,
) -> dict[str, Any]:
    """Sample into (or extend) a run directory and reweight all its samples.

    Files (fixed names, canonical atom order = the order of ``topology.pdb``, which is the
    system's own topology): ``topology.pdb``; ``proposals.dcd`` (every proposal); ``samples.npz``
    with ``coords`` (float32 nm), ``bins`` (int16 if L <= 32767, else int32), ``log_q``, ``u``,
    ``log_w`` (normalized, after clipping; -inf = weight zero), ``log_w_raw`` (float64),
    ``chirality_wrong``, ``mirrored`` (bool), ``seed`` (int64 per sample); ``ensemble.dcd``
    (systematic resampling of the normalized weights, ``ensemble_size`` frames, default all
    samples; not written when every weight is zero); ``summary.json``. All files are rewritten
    atomically, each on its own (a crash between two renames leaves a mix of old and new files;
    ``samples.npz`` and ``summary.json`` are written last).

    Running again on an existing directory with a new ``seed`` appends samples and recomputes the
    weights over all of them; a seed already used is refused, as are a different ``tau``,
    chirality policy, atom count or checkpoint (mixing proposals would need mixture densities).
    Under ``torchrun`` every rank draws its share with seed ``seed + rank``; rank 0 gathers and
    writes (all ranks must see ``out_dir``) and every rank returns the summary.

    Parameters
    ----------
    checkpoint_or_parts : path (``arbg.train.checkpoints.load_checkpoint``), Checkpoint-like object
    or
        dict with ``model``, ``binning``, ``standardization``, ``system``, ``feats``
    out_dir : run directory
    n : total number of new samples (over all ranks)
    tau : sampling temperature
    seed : base seed
    device : str or torch.device, optional
    energy : target with ``reduced_energy`` (kT), ``chirality_atoms``, ``save_pdb``,
        ``topology``; default the checkpoint's system
    clip_fraction, clip_mode : see :func:`arbg.reweight.snis`
    chirality : {"zero", "mirror", "none"}
    ensemble_size : frames of ``ensemble.dcd`` (default: all samples)
    batch_size, progress : see :func:`sample_bins`

    Returns
    -------
    dict, the content of ``summary.json``
    """
    t0 = time.perf_counter()
    parts = _resolve_parts(checkpoint_or_parts)
    system = energy if energy is not None else parts.system
    if system is None:
        raise ValueError("run_sampling needs the system (energy=...) for energies and topology")
    out = Path(out_dir)
    rank, world = rank_and_world_size()
    seeds = [int(seed) + r for r in range(world)]
    old = read_run(out)
    if old is not None:
        used = set(old["summary"]["seeds"]) | {int(v) for v in np.unique(old["arrays"]["seed"])}
        dup = sorted(set(seeds) & used)
        if dup:
            raise ValueError(f"{out}: seed(s) {dup} already used (used: {sorted(used)})")
        s_old = old["summary"]
        for key, new in (
            ("tau", float(tau)),
            ("chirality", chirality),
            ("checkpoint", parts.path),
            ("n_atoms", int(system.n_atoms)),
            ("system", getattr(system, "name", s_old.get("system"))),
        ):
            if s_old.get(key) != new:
                raise ValueError(
                    f"{out}: cannot extend a run with {key}={s_old.get(key)!r} using {key}={new!r}"
                )

    n_local = n // world + (1 if rank < n % world else 0)
    if world > 1 and device is not None and str(device) == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"  # one GPU per rank
    chir = getattr(system, "chirality_atoms", None)
    batch = generate(
        parts.model,
        parts.binning,
        parts.standardization,
        n_local,
        tau,
        seeds[rank],
        feats=parts.feats,
        chirality_atoms=chir,
        chirality=chirality,
        batch_size=batch_size,
        device=device,
        progress=progress and rank == 0,
    )
    t_e = time.perf_counter()
    u = (
        np.asarray(system.reduced_energy(batch.coords), dtype=np.float64)
        if len(batch)
        else np.zeros(0)
    )
    energy_s = time.perf_counter() - t_e
    local = dict(
        coords=batch.coords_f32,
        bins=batch.bins,
        log_q=batch.log_q,
        u=u,
        chirality_wrong=batch.chirality_wrong,
        mirrored=batch.mirrored,
        seed=np.full(len(batch), seeds[rank], dtype=np.int64),
        counts=batch.counts(),
        energy_s=energy_s,
    )
    if world > 1:
        import torch.distributed as tdist

        gathered: list[Any] = [None] * world
        tdist.all_gather_object(gathered, local)
    else:
        gathered = [local]

    summary: dict[str, Any] = {}
    if rank == 0:
        summary = _write_run(
            out,
            old,
            gathered,
            parts,
            system,
            tau,
            chirality,
            seeds,
            clip_fraction,
            clip_mode,
            ensemble_size,
            t0,
        )
    if world > 1:
        import torch.distributed as tdist

        box = [summary]
        tdist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary


def read_run(out: Path) -> dict[str, Any] | None:
    """``{"arrays", "summary"}`` of a run directory, or None when it has no samples yet."""
    npz, js = out / "samples.npz", out / "summary.json"
    if not npz.exists():
        return None
    if not js.exists():
        raise ValueError(f"{out}: samples.npz without summary.json; refusing to extend")
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    return {"arrays": arrays, "summary": json.loads(js.read_text())}


def _write_run(
    out: Path,
    old: dict[str, Any] | None,
    gathered: list[dict[str, Any]],
    parts: SamplerParts,
    system: Any,
    tau: float,
    chirality: str,
    seeds: list[int],
    clip_fraction: float,
    clip_mode: str | None,
    ensemble_size: int | None,
    t0: float,
) -> dict[str, Any]:
    """Merge, reweight (SNIS over all samples) and write every file of a run directory."""

    keys = ("coords", "bins", "log_q", "u", "chirality_wrong", "mirrored", "seed")
    new = {k: np.concatenate([g[k] for g in gathered]) for k in keys}
    n_new = int(new["log_q"].shape[0])
    if old is not None:
        merged = {k: np.concatenate([old["arrays"][k], new[k]]) for k in keys}
    else:
        merged = new
    n_bins = parts.binning.n_bins
    merged["bins"] = merged["bins"].astype(np.int16 if n_bins <= 32767 else np.int32)
    merged["coords"] = merged["coords"].astype(np.float32)
    u, log_q, wrong = merged["u"], merged["log_q"], merged["chirality_wrong"]
    n_total = int(u.shape[0])
    nonfinite_u = ~np.isfinite(u)
    u_eff = np.where(wrong, np.inf, u)  # chirality: weight zero
    log_w = np.full(n_total, -np.inf)
    log_w_raw = np.where(np.isfinite(u_eff) & np.isfinite(log_q), -u_eff - log_q, -np.inf)
    snis_summary: dict[str, Any] = {"ess": 0.0, "relative_ess": 0.0, "n_clipped": 0}
    ens_idx = np.zeros(0, dtype=np.int64)
    if np.isfinite(log_w_raw).any():
        res = snis(u_eff, log_q, clip_fraction=clip_fraction, clip_mode=clip_mode)
        log_w = res.log_w
        snis_summary = res.summary()
        rng = np.random.default_rng([int(s) for s in sorted(set(merged["seed"].tolist()))])
        ens_idx = systematic_resample(log_w, int(ensemble_size or n_total), rng)
    else:
        logger.warning("%s: every sample has weight zero; ensemble.dcd is empty", out)
    merged["log_w"], merged["log_w_raw"] = log_w, log_w_raw

    out.mkdir(parents=True, exist_ok=True)
    system.save_pdb(out / "topology.pdb")
    top = system.topology
    _save_dcd(out / "proposals.dcd", merged["coords"], top)
    if ens_idx.size:
        _save_dcd(out / "ensemble.dcd", merged["coords"][ens_idx], top)
    elif (out / "ensemble.dcd").exists():  # no weight anywhere: no ensemble (DCD can't be empty)
        (out / "ensemble.dcd").unlink()
    atomic_save_npz(out / "samples.npz", **merged)

    prev = old["summary"] if old is not None else {}
    runs = list(prev.get("runs", []))
    counts = [g["counts"] for g in gathered]
    run = {
        "seeds": seeds,
        "n": n_new,
        "wall_s": time.perf_counter() - t0,
        "sampling_s": max(c["wall_s"] for c in counts),
        "energy_s": max(g["energy_s"] for g in gathered),
        "n_tokens": sum(c["n_tokens"] for c in counts),
        "n_teacher_forced": sum(c["n_teacher_forced"] for c in counts),
    }
    runs.append(run)
    n_tokens = sum(r["n_tokens"] for r in runs)
    summary = {
        "checkpoint": parts.path,
        "tau": float(tau),
        "chirality": chirality,
        "system": system.name,
        "system_spec": system.spec.to_dict(),
        "n_atoms": int(system.n_atoms),
        "n_bins": int(n_bins),
        "n_coords": int(parts.standardization.n_coords),
        "atom_order": "canonical (topology.pdb)",
        "units": "nm, kT",
        "seeds": sorted(set(prev.get("seeds", [])) | set(seeds)),
        "n_samples": n_total,
        "n_new": n_new,
        "n_chirality_wrong": int(wrong.sum()),
        "n_mirrored": int(merged["mirrored"].sum()),
        "n_nonfinite_energy": int(nonfinite_u.sum()),
        "n_zero_weight": int((~np.isfinite(log_w)).sum()),
        "energy_evaluations": n_total,
        "tokens_generated": n_tokens,
        "teacher_forced_sequences": sum(r["n_teacher_forced"] for r in runs),
        "ess": float(snis_summary["ess"]),
        "relative_ess": float(snis_summary["relative_ess"]),
        "clip_fraction": float(clip_fraction),
        "clip_mode": clip_mode,
        "n_clipped": int(snis_summary["n_clipped"]),
        "snis": snis_summary,
        "ensemble_size": int(ens_idx.size),
        "ensemble_unique": int(np.unique(ens_idx).size),
        "wall_s_total": sum(r["wall_s"] for r in runs),
        "runs": runs,
    }
    atomic_write_json(out / "summary.json", summary)
    logger.info(
        "%s: %d samples (%d new), ESS %.1f, %d chirality-wrong, %d non-finite u",
        out,
        n_total,
        n_new,
        summary["ess"],
        summary["n_chirality_wrong"],
        summary["n_nonfinite_energy"],
    )
    return summary


# --------------------------------------------------------------------------------------------------
# twisted SMC run directories


def run_smc(
    checkpoint_or_parts: Any,
    out_dir: str | Path,
    n_particles: int,
    tau: float = 1.0,
    seed: int = 0,
    repeats: int = 1,
    resample: str | None = "systematic",
    ess_threshold: float | None = None,
    early_reject_kt: float | None = 100.0,
    chirality: bool = True,
    device: torch.device | str | None = None,
    ensemble_size: int | None = None,
) -> dict[str, Any]:
    """Autoregressive twisted SMC on a peptide, written as a run directory.

    ``repeats`` independent populations of ``n_particles`` particles each are drawn with a
    :class:`arbg.sampling.sampler.TransformerProposal` and the checkpoint's system as target
    (:func:`arbg.sampling.smc.twisted_smc`, resampling at the interior residue boundaries) and
    combined
    through their normalizing-constant estimates (:class:`arbg.sampling.smc.SMCRepeats`): particle
    i of
    population r gets ``log w_ri - log M``, so the combined self-normalized estimate is
    ``sum_r Z_r f_r / sum_r Z_r``.

    The run directory has the names of :func:`run_sampling`, so ``arbg evaluate`` reads it:
    ``topology.pdb``; ``proposals.dcd`` (the final particles of every population, after the
    last resampling); ``samples.npz`` with ``coords`` (float32 nm, canonical order), ``bins``,
    ``log_q`` (log q of each final particle's lineage, nm^-D), ``u`` (kT; +inf for particles
    killed before the end), ``log_w`` (combined and normalized, float64, -inf = weight zero),
    ``log_w_raw`` (combined, unnormalized), ``chirality_wrong``, ``mirrored`` (all False),
    ``seed`` and ``repeat`` (per particle); ``ensemble.dcd`` (systematic resampling of
    ``log_w``, ``ensemble_size`` frames, default all particles); ``summary.json`` with the SMC
    counts (energy evaluations including partial ones, early-rejected particles, chirality
    kills, resampling events, tokens generated and saved, ESS history and log Z per repeat).
    No weight clipping is applied. An existing run directory is refused (SMC populations are
    not extended by appending).

    Parameters
    ----------
    checkpoint_or_parts : checkpoint path, Checkpoint-like object or :class:`SamplerParts`
        Must carry the peptide ``system`` (the target).
    out_dir : run directory (must not hold samples yet)
    n_particles : particles per population M
    tau : sampling temperature of the conditionals
    seed : seeds the proposal generators (:func:`arbg.sampling.sampler.make_generators`) and
    resampling
    repeats : number of independent populations R (standard errors need R >= 2)
    resample, ess_threshold, early_reject_kt, chirality : see :func:`arbg.sampling.smc.twisted_smc`
    device : str or torch.device, optional
    ensemble_size : frames of ``ensemble.dcd`` (default ``R * M``)

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
    name = getattr(system, "name", type(system).__name__)
    if not list(system.boundaries):
        raise ValueError(
            f"system {name!r} has no interior residue boundary (caps belong to the first and "
            "last residue), so twisted SMC has no intermediate target; use self-normalized "
            "importance sampling instead (`arbg sample`, arbg.sampling.runs.run_sampling), "
            "or SMC on a "
            "peptide with >= 2 standard residues plus caps or >= 3 without (e.g. 'ace-aaa-nme')"
        )
    if int(repeats) < 1 or int(n_particles) < 1:
        raise ValueError("n_particles and repeats must be >= 1")
    out = Path(out_dir)
    if (out / "samples.npz").exists():
        raise ValueError(
            f"{out} already holds samples; SMC runs are not extended, use a new directory"
        )
    model = parts.model if device is None else parts.model.to(device)
    dev = next(model.parameters()).device
    g_bins, g_off = make_generators(int(seed), dev)
    proposal = _RecordingProposal(
        model, parts.binning, parts.standardization, tau, g_bins, g_off, parts.feats
    )
    rng = np.random.default_rng([int(seed), 1])
    results, bins = [], []
    for r in range(int(repeats)):
        res = twisted_smc(
            proposal,
            system,
            int(n_particles),
            rng,
            resample=resample,
            ess_threshold=ess_threshold,
            early_reject_kt=early_reject_kt,
            chirality=chirality,
        )
        results.append(res)
        bins.append(proposal.last_bins)
        logger.info(
            "SMC population %d/%d: log Z %.3f, ESS %.1f", r + 1, repeats, res.log_z, res.ess
        )
    rep = SMCRepeats(results)
    m = int(n_particles)
    positions = rep.positions
    log_w_raw = rep.log_w
    log_w = normalize_log_weights(log_w_raw)
    chir = np.asarray(getattr(system, "chirality_atoms", np.zeros((0, 4))), np.int64)
    wrong = (
        wrong_chirality(positions, chir)
        if chirality and chir.size
        else np.zeros(len(positions), dtype=bool)
    )
    n_bins = parts.binning.n_bins
    arrays = {
        "coords": positions.astype(np.float32),
        "bins": np.concatenate(bins).astype(np.int16 if n_bins <= 32767 else np.int32),
        "log_q": np.concatenate([r.log_q for r in results]),
        "u": np.concatenate([r.u for r in results]),
        "log_w": log_w,
        "log_w_raw": log_w_raw,
        "chirality_wrong": wrong,
        "mirrored": np.zeros(len(positions), dtype=bool),
        "seed": np.full(len(positions), int(seed), dtype=np.int64),
        "repeat": np.repeat(np.arange(len(results), dtype=np.int64), m),
    }
    n_total = len(positions)
    ens_idx = systematic_resample(
        log_w, int(ensemble_size or n_total), np.random.default_rng([int(seed), 2])
    )

    out.mkdir(parents=True, exist_ok=True)
    system.save_pdb(out / "topology.pdb")
    _save_dcd(out / "proposals.dcd", arrays["coords"], system.topology)
    _save_dcd(out / "ensemble.dcd", arrays["coords"][ens_idx], system.topology)
    atomic_save_npz(out / "samples.npz", **arrays)

    per = [r.summary() for r in results]

    def total(key: str) -> int:
        return int(sum(p[key] for p in per))

    ess = kish_ess(log_w)
    tokens_total = total("tokens_total")
    spec = getattr(system, "spec", None)
    summary = {
        "method": "twisted_smc",
        "checkpoint": parts.path,
        "tau": float(tau),
        "chirality": "zero" if chirality else "none",
        "system": name,
        "system_spec": spec.to_dict() if spec is not None else None,
        "n_atoms": int(system.n_atoms),
        "n_bins": int(n_bins),
        "n_coords": int(parts.standardization.n_coords),
        "atom_order": "canonical (topology.pdb)",
        "units": "nm, kT",
        "seeds": [int(seed)],
        "n_samples": n_total,
        "n_new": n_total,
        "n_particles": m,
        "repeats": len(results),
        "resample": resample,
        "ess_threshold": ess_threshold,
        "early_reject_kt": early_reject_kt,
        "boundaries": [int(b) for b in system.boundaries],
        "n_chirality_wrong": int(wrong.sum()),
        "n_mirrored": 0,
        "n_nonfinite_energy": int((~np.isfinite(arrays["u"])).sum()),
        "n_zero_weight": int((~np.isfinite(log_w)).sum()),
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
        "ess": float(ess),
        "relative_ess": float(ess / n_total),
        "n_unique_ancestors": [p["n_unique_ancestors"] for p in per],
        "ess_history": [p["ess_history"] for p in per],
        "log_z": [float(v) for v in rep.log_z],
        "log_z_combined": rep.log_z_combined,
        "clip_fraction": 0.0,
        "clip_mode": None,
        "n_clipped": 0,
        "ensemble_size": int(ens_idx.size),
        "ensemble_unique": int(np.unique(ens_idx).size),
        "wall_s_total": time.perf_counter() - t0,
        "repeat_summaries": per,
    }
    atomic_write_json(out / "summary.json", summary)
    logger.info(
        "%s: SMC %d x %d particles, ESS %.1f, %d resamplings, %d energy evaluations "
        "(%d partial), tokens saved %.3f",
        out,
        len(results),
        m,
        ess,
        summary["n_resampling_events"],
        summary["energy_evaluations"],
        summary["partial_energy_evaluations"],
        summary["tokens_saved_fraction"],
    )
    return summary


class _RecordingProposal(TransformerProposal):
    """A :class:`TransformerProposal` that keeps the bins of the last finished population."""

    last_bins: np.ndarray

    def finish(self, state: ProposalState) -> np.ndarray:
        self.last_bins = self.bins(state)  # [M, D] int64, final particle order
        return super().finish(state)
