"""Run directories: `arbg sample` writes and extends them (SNIS), `arbg smc` writes them (twisted
SMC, the same names, so `arbg evaluate` reads either).

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

from arbg import checks
from arbg.files import Commit, ascii_path, claim_dir, lock_dir, recover
from arbg.nn.coordinates import Binning, Standardization
from arbg.nn.model import ARBG, TokenFeatures
from arbg.reweight import (
    check_weights,
    kish_ess,
    normalize_log_weights,
    snis,
    systematic_resample,
)
from arbg.sampling.config import SampleConfig, SMCConfig, off_to_none
from arbg.sampling.sampler import (
    ProposalState,
    TransformerProposal,
    generate,
    generate_mixture,
    make_generators,
    wrong_chirality,
)
from arbg.sampling.smc import SMCRepeats, SMCResult, twisted_smc
from arbg.train.checkpoints import is_mixture, load_checkpoint, load_mixture
from arbg.train.distributed import rank_and_world_size

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


@dataclass
class MixtureParts:
    """A mixture of proposals for :func:`run_sampling`
    (:func:`arbg.train.checkpoints.load_mixture`): member checkpoints and normalised weights;
    the first member's system, binning and standardization stand for the run (its topology,
    the stored bins)."""

    members: list[Any]
    weights: list[float]
    path: str | None = None

    @property
    def system(self) -> Any:
        return self.members[0].system

    @property
    def binning(self) -> Binning:
        return self.members[0].binning

    @property
    def standardization(self) -> Standardization:
        return self.members[0].standardization


def _resolve_parts(obj: Any) -> SamplerParts | MixtureParts:
    if isinstance(obj, (SamplerParts, MixtureParts)):
        return obj
    if isinstance(obj, (str, Path)) and is_mixture(obj):
        members, weights = load_mixture(obj)
        return MixtureParts(members, weights, _resolved(obj))
    if isinstance(obj, (str, Path)):
        ck = load_checkpoint(obj)
        parts = _resolve_parts(ck)
        parts.path = _resolved(obj)
        return parts
    get = obj.get if isinstance(obj, dict) else (lambda k, d=None: getattr(obj, k, d))
    path = get("path")
    return SamplerParts(
        get("model"),
        get("binning"),
        get("standardization"),
        get("system"),
        get("feats"),
        _resolved(path) if path is not None else None,
    )


def _resolved(path: str | Path) -> str:
    """The checkpoint path a run records and compares: resolved (symlinks, ``..``, the working
    directory), so one checkpoint reached by two spellings is one checkpoint."""
    return str(Path(path).resolve())


def _write_dcd(path: Path, xyz: np.ndarray, topology: Any) -> None:
    """Write a DCD (mdtraj; nm in, Angstrom float32 on disk) to ``path`` as it is."""
    import mdtraj

    with ascii_path(path) as name:  # mdtraj's DCD writer takes ASCII paths only
        mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32), topology).save_dcd(name)


def _bin_dtype(n_bins: int) -> type:
    """The smallest integer dtype that stores bins of ``n_bins`` (int16 up to 32767)."""
    return np.int16 if n_bins <= 32767 else np.int32


def run_header(parts: SamplerParts, system: Any, tau: float, chirality: str) -> dict[str, Any]:
    """The ``summary.json`` keys every run directory has (SNIS and SMC): what made it."""
    spec = getattr(system, "spec", None)
    return {
        "checkpoint": parts.path,
        "tau": float(tau),
        "chirality": chirality,
        "system": getattr(system, "name", type(system).__name__),
        "system_spec": spec.to_dict() if spec is not None else None,
        "n_atoms": int(system.n_atoms),
        "n_bins": int(parts.binning.n_bins),
        "n_coords": int(parts.standardization.n_coords),
        "atom_order": "canonical (topology.pdb)",
        "units": "nm, kT",
    }


def run_maker(command: str, system: Any) -> dict[str, Any]:
    """The maker record (:func:`arbg.files.claim_dir`) of a run directory of ``system``."""
    return {
        "command": command,
        "system": getattr(system, "name", type(system).__name__),
        "n_atoms": int(system.n_atoms),
    }


def commit_run(
    out: Path, system: Any, arrays: dict[str, np.ndarray], ens_idx: np.ndarray, summary: dict
) -> None:
    """Stage every file of a run directory and make them current in one step
    (:class:`arbg.files.Commit`: a crash leaves the old run or the new one, never a mix).

    ``ensemble.dcd`` holds ``coords[ens_idx]``; with no index (every weight zero) there is no
    ensemble and an old one is deleted (a DCD cannot be empty)."""
    out.mkdir(parents=True, exist_ok=True)
    commit = Commit(out)
    top = system.topology
    commit.write_with("topology.pdb", system.save_pdb)
    commit.write_with("proposals.dcd", lambda p: _write_dcd(p, arrays["coords"], top))
    if ens_idx.size:
        coords = arrays["coords"][ens_idx]
        commit.write_with("ensemble.dcd", lambda p: _write_dcd(p, coords, top))
    elif (out / "ensemble.dcd").exists():
        commit.delete("ensemble.dcd")
    commit.save_npz("samples.npz", **arrays)
    commit.write_json("summary.json", summary)
    commit.commit()


def run_sampling(
    checkpoint_or_parts: Any,
    out_dir: str | Path,
    config: SampleConfig | None = None,
    *,
    energy: Any = None,
    progress: bool = False,
    wait: bool = False,
) -> dict[str, Any]:
    """Sample into (or extend) a run directory and reweight all its samples.

    The directory is locked for the whole read-sample-write (:func:`arbg.files.lock_dir`; a second
    writer fails naming the holder, or waits with ``wait=True``), and its files are replaced
    together by one :class:`arbg.files.Commit`. The config is checked before anything is sampled.

    Files (fixed names, canonical atom order = the order of ``topology.pdb``, which is the
    system's own topology): ``topology.pdb``; ``proposals.dcd`` (every proposal); ``samples.npz``
    with ``coords`` (float32 nm), ``bins`` (int16 if L <= 32767, else int32), ``log_q``, ``u``,
    ``log_w`` (normalized, after clipping; -inf = weight zero), ``log_w_raw`` (float64),
    ``chirality_wrong``, ``mirrored`` (bool), ``seed`` (int64 per sample); ``ensemble.dcd``
    (systematic resampling of the normalized weights, ``config.ensemble_size`` frames, default
    all samples; not written when every weight is zero); ``summary.json``.

    Running again on an existing directory with a new seed appends samples and recomputes the
    weights over all of them; a seed already used is refused, as are a different tau,
    chirality policy, atom count or checkpoint (mixing proposals would need mixture densities).
    Under ``torchrun`` every rank draws its share with seed ``seed + rank``; rank 0 gathers and
    writes (all ranks must see ``out_dir``) and every rank returns the summary.

    Parameters
    ----------
    checkpoint_or_parts : path (:func:`arbg.train.checkpoints.load_checkpoint`), Checkpoint-like
        object or dict with ``model``, ``binning``, ``standardization``, ``system``, ``feats``
    out_dir : run directory
    config : the sampling settings (:class:`arbg.sampling.config.SampleConfig`; None: its
        defaults)
    energy : target with ``reduced_energy`` (kT), ``chirality_atoms``, ``save_pdb``,
        ``topology``; default the checkpoint's system
    progress : tqdm progress bar (rank 0)
    wait : wait for another writer of ``out_dir`` instead of failing

    Returns
    -------
    dict, the content of ``summary.json``
    """
    config = config if config is not None else SampleConfig()
    config.check()
    rank, _ = rank_and_world_size()
    with lock_dir(out_dir, wait=wait) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            recover(out_dir)
        return _run_sampling(checkpoint_or_parts, Path(out_dir), config, energy, progress)


def _check_extends(out: Path, old: dict[str, Any], seeds: list[int], head: dict) -> None:
    """Refuse to extend run ``old`` with used seeds or other settings (``head``)."""
    used = set(old["summary"]["seeds"]) | {int(v) for v in np.unique(old["arrays"]["seed"])}
    dup = sorted(set(seeds) & used)
    if dup:
        free = max(used) + 1
        raise ValueError(
            f"{out}: seed(s) {dup} already used (used: {sorted(used)}); add samples with another "
            f"seed (--seed {free}) or write to a new --out"
        )
    s_old = old["summary"]
    for key in ("tau", "chirality", "checkpoint", "n_atoms", "system"):
        was = s_old.get(key)
        if key == "checkpoint" and was is not None and head[key] is not None:
            was = _resolved(was)  # runs written before paths were resolved recorded them as typed
        if was != head[key]:
            raise ValueError(
                f"{out}: cannot extend a run with {key}={s_old.get(key)!r} using "
                f"{key}={head[key]!r}"
            )


def _run_sampling(
    checkpoint_or_parts: Any, out: Path, cfg: SampleConfig, energy: Any, progress: bool
) -> dict[str, Any]:
    """:func:`run_sampling` once the config is checked and ``out`` is locked."""
    t0 = time.perf_counter()
    parts = _resolve_parts(checkpoint_or_parts)
    system = energy if energy is not None else parts.system
    if system is None:
        raise ValueError("run_sampling needs the system (energy=...) for energies and topology")
    rank, world = rank_and_world_size()
    seeds = [int(cfg.seed) + r for r in range(world)]
    if rank == 0:
        claim_dir(out, run_maker("sample", system))
        with ascii_path(out / "proposals.dcd"):  # the DCDs can be written: before sampling
            pass
    old = read_run(out)
    if old is not None:
        _check_extends(out, old, seeds, run_header(parts, system, cfg.tau, cfg.chirality))
    device: Any = cfg.device
    if world > 1 and str(device) == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"  # one GPU per rank
    n_local = cfg.n // world + (1 if rank < cfg.n % world else 0)
    common = dict(
        chirality_atoms=getattr(system, "chirality_atoms", None),
        chirality=cfg.chirality,
        batch_size=cfg.batch_size,
        device=device,
        progress=progress and rank == 0,
        dtype=cfg.dtype,
    )
    if isinstance(parts, MixtureParts):
        batch = generate_mixture(
            parts.members, parts.weights, n_local, cfg.tau, seeds[rank], **common
        )
    else:
        batch = generate(
            parts.model,
            parts.binning,
            parts.standardization,
            n_local,
            cfg.tau,
            seeds[rank],
            feats=parts.feats,
            **common,
        )
    t_e = time.perf_counter()
    logger.info("reduced energies of %d samples (OpenMM)", len(batch))
    u = system.reduced_energy(batch.coords) if len(batch) else np.zeros(0)
    local = dict(
        coords=batch.coords_f32,
        bins=batch.bins,
        log_q=batch.log_q,
        u=np.asarray(u, dtype=np.float64),
        chirality_wrong=batch.chirality_wrong,
        mirrored=batch.mirrored,
        seed=np.full(len(batch), seeds[rank], dtype=np.int64),
        counts=batch.counts(),
        energy_s=time.perf_counter() - t_e,
    )
    gathered = _all_gather(local, world)
    summary: dict[str, Any] = {}
    if rank == 0:
        summary = _write_run(out, old, gathered, parts, system, cfg, seeds, t0)
    if world > 1:
        import torch.distributed as tdist

        box = [summary]
        tdist.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary


def _all_gather(local: Any, world: int) -> list[Any]:
    """``local`` of every rank (torch.distributed), or ``[local]`` outside torchrun."""
    if world == 1:
        return [local]
    import torch.distributed as tdist

    gathered: list[Any] = [None] * world
    tdist.all_gather_object(gathered, local)
    return gathered


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


def _reweight(
    merged: dict[str, np.ndarray], cfg: SampleConfig, out: Path
) -> tuple[dict[str, Any], np.ndarray]:
    """SNIS over all samples of a run (sets ``log_w``, ``log_w_raw`` of ``merged``): the SNIS
    summary and the ensemble's indices (systematic resampling, seeded by the run's seeds)."""
    u, log_q, wrong = merged["u"], merged["log_q"], merged["chirality_wrong"]
    u_eff = np.where(wrong, np.inf, u)  # chirality: weight zero
    log_w = np.full(len(u), -np.inf)
    log_w_raw = np.where(np.isfinite(u_eff) & np.isfinite(log_q), -u_eff - log_q, -np.inf)
    snis_summary: dict[str, Any] = {"ess": 0.0, "relative_ess": 0.0, "n_clipped": 0}
    ens_idx = np.zeros(0, dtype=np.int64)
    if np.isfinite(log_w_raw).any():
        mode = off_to_none(cfg.clip_mode)
        res = snis(u_eff, log_q, clip_fraction=cfg.clip_fraction, clip_mode=mode)
        log_w = res.log_w
        snis_summary = res.summary()
        rng = np.random.default_rng([int(s) for s in sorted(set(merged["seed"].tolist()))])
        ens_idx = systematic_resample(log_w, int(cfg.ensemble_size or len(u)), rng)
    else:
        logger.warning("%s: every sample has weight zero; ensemble.dcd is empty", out)
    merged["log_w"], merged["log_w_raw"] = log_w, log_w_raw
    return snis_summary, ens_idx


def _write_run(
    out: Path,
    old: dict[str, Any] | None,
    gathered: list[dict[str, Any]],
    parts: SamplerParts,
    system: Any,
    cfg: SampleConfig,
    seeds: list[int],
    t0: float,
) -> dict[str, Any]:
    """Merge, reweight (SNIS over all samples) and write every file of a run directory."""
    keys = ("coords", "bins", "log_q", "u", "chirality_wrong", "mirrored", "seed")
    merged = {k: np.concatenate([g[k] for g in gathered]) for k in keys}
    n_new = len(merged["log_q"])
    if old is not None:
        merged = {k: np.concatenate([old["arrays"][k], merged[k]]) for k in keys}
    merged["bins"] = merged["bins"].astype(_bin_dtype(parts.binning.n_bins))
    merged["coords"] = merged["coords"].astype(np.float32)
    snis_summary, ens_idx = _reweight(merged, cfg, out)
    prev = old["summary"] if old is not None else {}
    counts = [g["counts"] for g in gathered]
    runs = [
        *prev.get("runs", []),
        {
            "seeds": seeds,
            "n": n_new,
            "wall_s": time.perf_counter() - t0,
            "sampling_s": max(c["wall_s"] for c in counts),
            "energy_s": max(g["energy_s"] for g in gathered),
            "n_tokens": sum(c["n_tokens"] for c in counts),
            "n_teacher_forced": sum(c["n_teacher_forced"] for c in counts),
        },
    ]
    n_total, log_w = len(merged["u"]), merged["log_w"]
    n_distinct = int(np.unique(ens_idx).size)
    weights = check_weights(merged["log_w_raw"], log_w, n_distinct, what="SNIS weights")
    summary = {
        **run_header(parts, system, cfg.tau, cfg.chirality),
        "seeds": sorted(set(prev.get("seeds", [])) | set(seeds)),
        "n_samples": n_total,
        "n_new": n_new,
        "n_chirality_wrong": int(merged["chirality_wrong"].sum()),
        "n_mirrored": int(merged["mirrored"].sum()),
        "n_nonfinite_energy": int((~np.isfinite(merged["u"])).sum()),
        "n_zero_weight": int((~np.isfinite(log_w)).sum()),
        "energy_evaluations": n_total,
        "tokens_generated": sum(r["n_tokens"] for r in runs),
        "teacher_forced_sequences": sum(r["n_teacher_forced"] for r in runs),
        "ess": float(snis_summary["ess"]),  # clipped (the published evaluation)
        "relative_ess": float(snis_summary["relative_ess"]),
        "ess_unclipped": weights.ess_unclipped,
        "weights": weights.to_dict(),
        "warnings": weights.warnings,
        "clip_fraction": float(cfg.clip_fraction),
        "clip_mode": off_to_none(cfg.clip_mode),
        "n_clipped": int(snis_summary["n_clipped"]),
        "snis": snis_summary,
        "ensemble_size": int(ens_idx.size),
        "ensemble_unique": n_distinct,
        "wall_s_total": sum(r["wall_s"] for r in runs),
        "runs": runs,
    }
    if isinstance(parts, MixtureParts):
        summary["mixture"] = {
            "members": [str(m.path) for m in parts.members],
            "weights": list(parts.weights),
        }
    commit_run(out, system, merged, ens_idx, summary)
    logger.info(
        "%s: %d samples (%d new), ESS %.1f, %d chirality-wrong, %d non-finite u",
        *(out, n_total, n_new, summary["ess"]),
        *(summary["n_chirality_wrong"], summary["n_nonfinite_energy"]),
    )
    return summary


# --------------------------------------------------------------------------------------------------
# twisted SMC


def run_smc(
    checkpoint_or_parts: Any,
    out_dir: str | Path,
    config: SMCConfig | None = None,
    *,
    wait: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Autoregressive twisted SMC on a peptide, written as a run directory.

    The run directory is locked while it is written (``wait``: see
    :func:`arbg.sampling.runs.run_sampling`) and its files are made current together by one
    :class:`arbg.files.Commit`.

    ``config.repeats`` independent populations of ``config.n_particles`` particles each are
    drawn with a :class:`arbg.sampling.sampler.TransformerProposal` and the checkpoint's system
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
    if isinstance(parts, MixtureParts):
        raise checks.ArgumentError(
            f"{parts.path} is a mixture of proposals: the twisted SMC takes one checkpoint (a "
            "mixture's prefix densities are not implemented); give one of its members"
        )
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
        claim_dir(out, run_maker("smc", system))
        with ascii_path(out / "proposals.dcd"):  # the DCDs can be written: before sampling
            pass
        if (out / "samples.npz").exists():
            raise ValueError(
                f"{out} already holds samples; SMC runs are not extended, use a new directory"
            )
        results, bins = _populations(parts, system, config, progress)
        return _write_smc_run(out, parts, system, config, results, bins, t0)


def _populations(
    parts: SamplerParts, system: Any, cfg: SMCConfig, progress: bool = False
) -> tuple[list[SMCResult], list[np.ndarray]]:
    """``cfg.repeats`` twisted-SMC populations and the bins of their final particles (a tqdm
    bar over the populations' atoms with ``progress``)."""
    from tqdm.auto import tqdm

    model = parts.model if cfg.device is None else parts.model.to(cfg.device)
    dev = next(model.parameters()).device
    g_bins, g_off = make_generators(int(cfg.seed), dev)
    proposal = _RecordingProposal(
        model, parts.binning, parts.standardization, cfg.tau, g_bins, g_off, parts.feats
    )
    rng = np.random.default_rng([int(cfg.seed), 1])
    results, bins = [], []
    units = proposal.n_units
    with tqdm(
        total=int(cfg.repeats) * units,
        disable=not progress,
        desc="twisted SMC",
        unit="population",
        unit_scale=1.0 / units,
        bar_format="{l_bar}{bar}| {n:.2f}/{total:.0f} [{elapsed}<{remaining}]",
        mininterval=2,
    ) as bar:
        proposal.bar = bar
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
    n_distinct = int(np.unique(ens_idx).size)
    weights = check_weights(log_w_raw, None, n_distinct, what="SMC weights")
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
        "ess": float(kish_ess(log_w)),  # unclipped: SMC weights are not clipped
        "relative_ess": float(kish_ess(log_w) / n_total),
        "ess_unclipped": float(kish_ess(log_w)),
        "weights": weights.to_dict(),
        "warnings": weights.warnings,
        "log_z": [float(v) for v in rep.log_z],
        "log_z_combined": rep.log_z_combined,
        "clip_fraction": 0.0,
        "clip_mode": None,
        "n_clipped": 0,
        "ensemble_size": int(ens_idx.size),
        "ensemble_unique": n_distinct,
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
    bar: Any = None  # a tqdm bar counting generated units (3 per atom), or None

    def extend(self, state: ProposalState, n_coords: int) -> np.ndarray:
        inc = super().extend(state, n_coords)
        if self.bar is not None:
            self.bar.update(int(n_coords))
        return inc

    def finish(self, state: ProposalState) -> np.ndarray:
        self.last_bins = self.bins(state)  # [M, D] int64, final particle order
        return super().finish(state)
