"""Reference molecular dynamics with OpenMM, written as resumable on-disk datasets.

Conventions (``../shared/reference.md``, the published corpora): Langevin "middle" integrator,
1 fs step, friction 0.3/ps, no constraints, energy minimisation and 50 ps of warm-up, one frame
per ps. Frames are stored losslessly as float32 nm in canonical atom order (never .xtc: its
0.001 nm rounding is coarser than a bin and shifts energies by tenths of kT).

Layout of an ``arbg md`` output directory::

    metadata.json           system spec, force field hashes, temperature, step, seed, versions,
                            train/val/test splits (contiguous time blocks)
    topology.pdb            the peptide in canonical atom order
    chunks/chunk_000000.npy float32 [frames, atoms, 3] nm, one file per chunk
    state.chk, progress.json  OpenMM checkpoint and frame count after the last complete chunk
    trajectory.dcd          all frames for viewers (VMD, PyMOL, mdtraj), written at the end

An interrupted run restarts from the last complete chunk: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arbg.io import atomic_save_npy, atomic_write_bytes, atomic_write_json
from arbg.systems import PeptideSystem

log = logging.getLogger(__name__)

FORMAT = "arbg-md"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MDConfig:
    """Settings of a reference MD run (times in ps, friction in 1/ps)."""

    ns: float = 1.0
    step_fs: float = 1.0
    friction_per_ps: float = 0.3
    frame_interval_ps: float = 1.0
    warmup_ps: float = 50.0
    seed: int = 0
    chunk_frames: int = 1000
    temperature_k: float | None = None  # sampling temperature of the data; None = system's

    @property
    def steps_per_frame(self) -> int:
        return int(round(self.frame_interval_ps * 1000.0 / self.step_fs))

    @property
    def n_frames(self) -> int:
        return int(round(self.ns * 1000.0 / self.frame_interval_ps))


def default_split_fractions() -> dict[str, float]:
    return {"train": 0.8, "val": 0.1, "test": 0.1}


def contiguous_splits(n_frames: int, fractions: dict[str, float] | None = None
                      ) -> dict[str, list[int]]:
    """Split frames 0..n into contiguous time blocks (never shuffled). Returns name -> [a, b)."""
    fractions = fractions or default_split_fractions()
    total = sum(fractions.values())
    out, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        stop = n_frames if i == len(names) - 1 else start + int(round(
            n_frames * fractions[name] / total))
        out[name] = [start, stop]
        start = stop
    return out


def _versions() -> dict[str, str]:
    import openmm

    import arbg

    return {"arbg": arbg.__version__, "openmm": openmm.__version__}


def run_md(system: PeptideSystem, out_dir: str | Path, config: MDConfig = MDConfig(),
           progress: bool = True) -> Path:
    """Run (or resume, or extend) reference MD of `system` into `out_dir`.

    Returns the output directory. Re-running with a larger ``config.ns`` extends the run;
    re-running with different settings (system, seed, step, friction, temperature) raises.
    """
    import openmm

    from arbg.energy import make_context

    out = Path(out_dir)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    temperature = config.temperature_k or system.temperature_k
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "system": system.spec.to_dict(),
        "forcefield_sha256": system.forcefield_hashes(),
        "n_atoms": system.n_atoms,
        "target_temperature_k": system.temperature_k,
        "sampling_temperature_k": temperature,
        "step_fs": config.step_fs, "friction_per_ps": config.friction_per_ps,
        "frame_interval_ps": config.frame_interval_ps, "warmup_ps": config.warmup_ps,
        "seed": config.seed, "integrator": "LangevinMiddleIntegrator", "constraints": None,
        "units": {"positions": "nm", "time": "ps"},
        "versions": _versions(),
    }
    meta_path = out / "metadata.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for key in ("system", "step_fs", "friction_per_ps", "frame_interval_ps", "seed",
                    "sampling_temperature_k"):
            if old.get(key) != meta[key]:
                raise ValueError(f"{out} holds a run with different {key!r} "
                                 f"({old.get(key)!r} vs {meta[key]!r}); use another --out")
    progress_path = out / "progress.json"
    done = json.loads(progress_path.read_text())["n_frames"] if progress_path.exists() else 0
    n_total = config.n_frames
    meta["n_frames"] = max(done, n_total)
    meta["splits"] = contiguous_splits(meta["n_frames"])
    atomic_write_json(meta_path, meta)
    system.save_pdb(out / "topology.pdb")
    if done >= n_total:
        log.info("%s already holds %d frames (asked %d)", out, done, n_total)
        _write_dcd(system, out)
        return out

    integrator = openmm.LangevinMiddleIntegrator(temperature, config.friction_per_ps,
                                                 config.step_fs * 1e-3)
    integrator.setRandomNumberSeed(config.seed + 1)  # 0 would mean "pick a random seed"
    context = make_context(system.create_openmm_system(), integrator)
    chk = out / "state.chk"
    if done > 0 and chk.exists():
        context.loadCheckpoint(chk.read_bytes())
        log.info("resuming %s at frame %d of %d", out, done, n_total)
    else:
        done = 0
        context.setPositions(system.positions)
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 1000)
        context.setVelocitiesToTemperature(temperature, config.seed + 1)
        integrator.step(int(round(config.warmup_ps * 1000.0 / config.step_fs)))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_total * config.frame_interval_ps / 1000.0, initial=done *
                   config.frame_interval_ps / 1000.0, unit="ns", desc=f"md {system.name}",
                   bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} ns [{elapsed}<{remaining}"
                              "{postfix}]")
    t0, frames_this_run = time.time(), 0
    while done < n_total:
        n_chunk = min(config.chunk_frames - done % config.chunk_frames, n_total - done)
        frames = np.empty((n_chunk, system.n_atoms, 3), dtype=np.float32)
        for i in range(n_chunk):
            integrator.step(config.steps_per_frame)
            state = context.getState(getPositions=True)
            frames[i] = state.getPositions(asNumpy=True)._value
            if bar is not None:
                bar.update(config.frame_interval_ps / 1000.0)
        chunk_id = done // config.chunk_frames
        path = out / "chunks" / f"chunk_{chunk_id:06d}.npy"
        if done % config.chunk_frames:
            frames = np.concatenate([np.load(path), frames])  # complete a partial chunk
        atomic_save_npy(path, frames)
        done += n_chunk
        frames_this_run += n_chunk
        atomic_write_bytes(chk, context.createCheckpoint())
        atomic_write_json(progress_path, {"n_frames": done})
        if bar is not None:
            ns_day = frames_this_run * config.frame_interval_ps / 1000.0 / max(
                time.time() - t0, 1e-9) * 86400.0
            bar.set_postfix_str(f"{ns_day:.1f} ns/day")
    if bar is not None:
        bar.close()
    _write_dcd(system, out)
    return out


def load_md_frames(out_dir: str | Path) -> np.ndarray:
    """All frames of an ``arbg md`` directory, [F, n, 3] float32 nm, canonical order."""
    out = Path(out_dir)
    progress = json.loads((out / "progress.json").read_text())["n_frames"]
    chunks = sorted((out / "chunks").glob("chunk_*.npy"))
    if not chunks:
        raise FileNotFoundError(f"{out}: no chunks/chunk_*.npy frames")
    frames = np.concatenate([np.load(c) for c in chunks])
    return frames[:progress]


def _write_dcd(system: PeptideSystem, out: Path) -> None:
    import mdtraj

    frames = load_md_frames(out)
    traj = mdtraj.Trajectory(frames, system.topology)
    tmp = out / ".trajectory.dcd.tmp"
    traj.save_dcd(str(tmp))
    tmp.replace(out / "trajectory.dcd")
