"""Sampling run directories: `arbg sample` writes and extends them.

A run directory has fixed names: ``topology.pdb``; ``proposals.dcd`` (every proposal);
``samples.npz`` with ``coords`` (float32 nm), ``bins``, ``log_q``, ``u``, ``log_w`` (float64,
``-inf`` = zero weight), ``log_w_raw``, ``chirality_wrong``, ``mirrored``, ``seed``;
``ensemble.dcd`` (a resampled equilibrium ensemble); ``summary.json``. All arrays and files are in
the system's canonical atom order (the order of ``topology.pdb``). Running again with a new seed
appends samples and recomputes the weights over all of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arbg import checks
from arbg.io import Commit, lock_dir, recover
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


def _write_dcd(path: Path, xyz: np.ndarray, topology: Any) -> None:
    """Write a DCD (mdtraj; nm in, Angstrom float32 on disk) to ``path`` as it is."""
    import mdtraj

    mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32), topology).save_dcd(str(path))


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
    batch_size: int | str = 1024,
    progress: bool = False,
    wait: bool = False,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Sample into (or extend) a run directory and reweight all its samples.

    The directory is locked for the whole read-sample-write (:func:`arbg.io.lock_dir`; a second
    writer fails naming the holder, or waits with ``wait=True``), and its files are replaced
    together by one :class:`arbg.io.Commit`. Arguments are checked before anything is sampled.

    Files (fixed names, canonical atom order = the order of ``topology.pdb``, which is the
    system's own topology): ``topology.pdb``; ``proposals.dcd`` (every proposal); ``samples.npz``
    with ``coords`` (float32 nm), ``bins`` (int16 if L <= 32767, else int32), ``log_q``, ``u``,
    ``log_w`` (normalized, after clipping; -inf = weight zero), ``log_w_raw`` (float64),
    ``chirality_wrong``, ``mirrored`` (bool), ``seed`` (int64 per sample); ``ensemble.dcd``
    (systematic resampling of the normalized weights, ``ensemble_size`` frames, default all
    samples; not written when every weight is zero); ``summary.json``. All files are staged and
    made current by one atomic commit (a crash leaves the old run or the new one, never a mix).

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
    batch_size, progress : see :func:`sample_bins` (``"auto"``: the largest batch that fits the
        free device memory)
    dtype : ``"float32"`` or ``"bf16"`` matrix work of the sampler (log q exact either way)

    Returns
    -------
    dict, the content of ``summary.json``
    """
    c = checks
    n = c.positive_int("--n", n)
    tau = c.positive_float("--tau", tau)
    seed = c.nonnegative_int("--seed", seed)
    c.in_range("--clip", clip_fraction, 0.0, 0.5, high_open=True)
    c.one_of("--clip-mode", clip_mode, (None, "drop", "cap"))
    c.one_of("--chirality", chirality, ("zero", "mirror", "none"))
    c.optional(c.positive_int, "--ensemble-size", ensemble_size)
    if batch_size != "auto":
        c.positive_int("--batch-size", batch_size)
    c.one_of("--dtype", dtype, ("float32", "bf16"))
    rank, _ = rank_and_world_size()
    with lock_dir(out_dir, wait=wait) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            recover(out_dir)
        return _run_sampling(
            checkpoint_or_parts,
            Path(out_dir),
            n,
            tau,
            seed,
            device,
            energy,
            clip_fraction,
            clip_mode,
            chirality,
            ensemble_size,
            batch_size,
            progress,
            dtype,
        )


def _run_sampling(
    checkpoint_or_parts: Any,
    out: Path,
    n: int,
    tau: float,
    seed: int,
    device: torch.device | str | None,
    energy: Any,
    clip_fraction: float,
    clip_mode: str | None,
    chirality: str,
    ensemble_size: int | None,
    batch_size: int | str,
    progress: bool,
    dtype: str = "float32",
) -> dict[str, Any]:
    """:func:`run_sampling` once the arguments are checked and ``out`` is locked."""
    t0 = time.perf_counter()
    parts = _resolve_parts(checkpoint_or_parts)
    system = energy if energy is not None else parts.system
    if system is None:
        raise ValueError("run_sampling needs the system (energy=...) for energies and topology")
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
        dtype=dtype,
    )
    t_e = time.perf_counter()
    logger.info("reduced energies of %d samples (OpenMM)", len(batch))
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
    try:
        with np.load(npz, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile/numpy raise many types for a corrupt archive
        raise checks.ArgumentError(f"{str(npz)!r} is not a readable samples archive: {e}") from e
    summary = checks.read_json(js, "run summary")
    n = len(arrays.get("log_q", ()))
    if summary.get("n_samples") != n:
        raise checks.ArgumentError(
            f"{out}: summary.json counts {summary.get('n_samples')} samples, samples.npz holds "
            f"{n}; the run directory is inconsistent"
        )
    return {"arrays": arrays, "summary": summary}


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
    commit = Commit(out)  # every file of the run, made current in one step
    top = system.topology
    commit.write_with("topology.pdb", system.save_pdb)
    commit.write_with("proposals.dcd", lambda p: _write_dcd(p, merged["coords"], top))
    if ens_idx.size:
        coords = merged["coords"][ens_idx]
        commit.write_with("ensemble.dcd", lambda p: _write_dcd(p, coords, top))
    elif (out / "ensemble.dcd").exists():  # no weight anywhere: no ensemble (DCD can't be empty)
        commit.delete("ensemble.dcd")
    commit.save_npz("samples.npz", **merged)

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
    commit.write_json("summary.json", summary)
    commit.commit()
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
    wait: bool = False,
) -> dict[str, Any]:
    """Autoregressive twisted SMC on a peptide, written as a run directory.

    The run directory is locked while it is written (``wait``: see :func:`run_sampling`) and
    its files are made current together by one :class:`arbg.io.Commit`.

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
    c = checks
    c.positive_int("--particles", n_particles)
    c.positive_int("--repeats", repeats)
    c.positive_float("--tau", tau)
    c.nonnegative_int("--seed", seed)
    c.one_of("--resample", resample, (None, "systematic", "multinomial"))
    c.optional(c.in_range, "--ess-threshold", ess_threshold, 0.0, 1.0)
    c.optional(c.positive_float, "--early-reject-kt", early_reject_kt)
    c.optional(c.positive_int, "--ensemble-size", ensemble_size)
    out = Path(out_dir)
    with lock_dir(out, wait=wait):
        recover(out)
        return _run_smc(
            parts,
            system,
            name,
            out,
            n_particles,
            tau,
            seed,
            repeats,
            resample,
            ess_threshold,
            early_reject_kt,
            chirality,
            device,
            ensemble_size,
            t0,
        )


def _run_smc(
    parts: SamplerParts,
    system: Any,
    name: str,
    out: Path,
    n_particles: int,
    tau: float,
    seed: int,
    repeats: int,
    resample: str | None,
    ess_threshold: float | None,
    early_reject_kt: float | None,
    chirality: bool,
    device: torch.device | str | None,
    ensemble_size: int | None,
    t0: float,
) -> dict[str, Any]:
    """:func:`run_smc` once the arguments are checked and ``out`` is locked."""
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
    commit = Commit(out)
    top = system.topology
    commit.write_with("topology.pdb", system.save_pdb)
    commit.write_with("proposals.dcd", lambda p: _write_dcd(p, arrays["coords"], top))
    commit.write_with("ensemble.dcd", lambda p: _write_dcd(p, arrays["coords"][ens_idx], top))
    commit.save_npz("samples.npz", **arrays)

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
    commit.write_json("summary.json", summary)
    commit.commit()
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
