"""Reference molecular dynamics with OpenMM, written as resumable on-disk datasets.

Conventions (``docs/references.md``, the published corpora): Langevin "middle" integrator,
1 fs step, friction 0.3/ps, no constraints, energy minimisation and 50 ps of warm-up, one frame
per ps. Frames are stored losslessly as float32 nm in canonical atom order (never .xtc: its
0.001 nm rounding is coarser than a bin and shifts energies by tenths of kT).

Weighted data (:mod:`arbg.chem.bias`): with ``MDConfig.bias`` the production run samples under a
static dihedral bias V built by metadynamics beforehand; with ``MDConfig.temperature_k`` other
than the system's it samples at that temperature T_s for the target at T_t. Either way each frame
gets the exact, unnormalised log-weight ``log w = V/(k T_s) - (1 - T_t/T_s) u_target`` with
``u_target = E/(k T_t)`` (:func:`arbg.chem.bias.frame_log_weights`), computed on the stored float32
frame.

An interrupted run restarts from the last complete chunk (or build segment): nothing lost,
nothing duplicated. The layout of the output directory (written by :func:`run_md`, read by
:func:`load_md_frames` and :func:`load_md_log_weights`)::

    metadata.json           system spec, force field hashes, target and sampling temperatures,
                            step, seed, versions, splits (contiguous time blocks), and for
                            weighted runs "log_weights" (definition) and "bias" (settings, build)
    topology.pdb            the peptide in canonical atom order
    chunks/chunk_000000.npy float32 [frames, atoms, 3] nm, one file per chunk
    chunks/energy_000000.npy  weighted runs: float64 [frames] u_target = E/(k_B T_target), kT
    chunks/bias_000000.npy    weighted runs: float64 [frames] V/(k_B T_sampling), kT (0 unbiased)
    log_weights.npy         weighted runs: float64 [frames] unnormalised log-weights (a copy
                            made from the chunks at the end; the chunks are authoritative)
    bias/build.npz          biased runs: the resumable metadynamics build state
    bias/grid.npy           biased runs: the frozen bias grid, kJ/mol
    state.chk, progress.json  OpenMM checkpoint and frame count after the last complete chunk
    trajectory.dcd          all frames for viewers (VMD, PyMOL, mdtraj), written at the end
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import arbg
from arbg import checks
from arbg.chem.bias import (
    BiasConfig,
    bias_energies,
    build_bias,
    frame_log_weights,
    free_force_group,
    frozen_bias_force,
    grid_sha256,
    select_bias_dihedrals,
)
from arbg.chem.energy import energies_kj, make_context
from arbg.chem.systems import BOLTZMANN_KJ_PER_MOL_K, PeptideSystem
from arbg.files import (
    Commit,
    ascii_path,
    atomic_save_npy,
    atomic_write_json,
    claim_dir,
    disk_errors,
    lock_dir,
    recover,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MDConfig:
    """Settings of a reference MD run (Langevin middle integrator, no constraints).

    Attributes
    ----------
    ns : production length in ns (a bias build phase comes on top).
    step_fs : integration time step in fs.
    friction_per_ps : Langevin friction in 1/ps.
    frame_interval_ps : time between saved frames in ps.
    warmup_ps : unsaved equilibration before production in ps.
    seed : seed of the velocities and the Langevin noise.
    chunk_frames : frames per resumable chunk (one atomic commit each).
    temperature_k : sampling temperature of the data in K (heated data; default: the
        system's); frames then get log-weights -(1/kT_target - 1/kT_sampling) E.
    bias : the metadynamics-built static dihedral bias (:mod:`arbg.chem.bias`), or None.
    """

    ns: float = 1.0
    step_fs: float = 1.0
    friction_per_ps: float = field(default=0.3, metadata={"flag": "--friction"})
    frame_interval_ps: float = 1.0
    warmup_ps: float = 50.0
    seed: int = 0
    chunk_frames: int = 1000
    temperature_k: float | None = field(
        default=None,
        metadata={
            "flag": "--sampling-temperature-k",
            "aliases": ("--md-temperature-k",),
            "dest": "md_temperature_k",
        },
    )
    bias: BiasConfig | None = None

    def __post_init__(self) -> None:
        checks.positive_float("--ns", self.ns)
        # no constraints anywhere: hydrogens vibrate at ~10 fs, so steps beyond a few fs blow up
        checks.in_range("--step-fs", self.step_fs, 0.0, 5.0, low_open=True)
        checks.nonnegative_float("--friction", self.friction_per_ps)
        checks.positive_float("--frame-interval-ps", self.frame_interval_ps)
        checks.nonnegative_float("--warmup-ps", self.warmup_ps)
        checks.nonnegative_int("--seed", self.seed)
        checks.positive_int("--chunk-frames", self.chunk_frames)
        checks.optional(checks.positive_float, "--md-temperature-k", self.temperature_k)
        if self.frame_interval_ps * 1000.0 < self.step_fs:
            raise checks.ArgumentError(
                f"--frame-interval-ps: got {self.frame_interval_ps!r}; expected at least one "
                f"step (--step-fs {self.step_fs} fs) per frame"
            )
        if self.n_frames < 1:
            raise checks.ArgumentError(
                f"--ns: got {self.ns!r}; expected at least one frame of "
                f"--frame-interval-ps {self.frame_interval_ps} ps"
            )

    @property
    def steps_per_frame(self) -> int:
        return int(round(self.frame_interval_ps * 1000.0 / self.step_fs))

    @property
    def n_frames(self) -> int:
        return int(round(self.ns * 1000.0 / self.frame_interval_ps))


class SimulationError(RuntimeError):
    """MD blew up (non-finite energy or positions); the last good state stays on disk."""


class ProgressLog:
    """A log line every ``every_s`` seconds of wall time: ns done, ns/h and the time left.

    For runs without a progress bar (worker processes, logs): ``update(frames_done)`` is cheap
    to call after every frame.
    """

    def __init__(
        self, name: str, n_total: int, done: int, ns_per_frame: float, every_s: float = 30.0
    ) -> None:
        self.name, self.n_total, self.start, self.ns_per_frame = name, n_total, done, ns_per_frame
        self.every_s = every_s
        self.t0 = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and done < self.n_total:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)  # frames/s
        left = (self.n_total - done) / rate if rate > 0 else float("inf")
        log.info(
            "%s: %.3f of %.3f ns (%.1f ns/h, %.1f min left)",
            self.name,
            done * self.ns_per_frame,
            self.n_total * self.ns_per_frame,
            rate * self.ns_per_frame * 3600.0,
            left / 60.0,
        )


def run_md(
    system: PeptideSystem,
    out_dir: str | Path,
    config: MDConfig = MDConfig(),
    progress: bool = True,
    wait: bool = False,
) -> Path:
    """Run (or resume, or extend) reference MD of `system` into `out_dir`.

    The directory is locked while the run writes (:func:`arbg.files.lock_dir`; ``wait`` blocks
    instead of failing when another process holds it). Each chunk (frames, weight terms,
    OpenMM state, frame count) is committed by one :class:`arbg.files.Commit`; an interrupted
    commit is finished, and stale temporaries removed, when the run starts. MD that blows up
    raises :class:`SimulationError` with the last complete chunk kept.
    """
    with lock_dir(out_dir, wait=wait):
        recover(out_dir, subdirs=("chunks", "bias"))
        return _run_md(system, Path(out_dir), config, progress)


def _run_md(
    system: PeptideSystem, out_dir: str | Path, config: MDConfig = MDConfig(), progress: bool = True
) -> Path:
    """Run (or resume, or extend) reference MD of `system` into `out_dir` (unlocked).

    Returns the output directory. Re-running with a larger ``config.ns`` extends the run;
    re-running with different settings (system, seed, step, friction, temperature, bias) raises.
    `system` is a PeptideSystem (or anything with its ``spec``, ``n_atoms``, ``positions``,
    ``temperature_k``, ``create_openmm_system()``, ``forcefield_hashes()``, ``save_pdb()``,
    ``topology``, and for a bias ``phi_indices``, ``psi_indices``, ``residue_index``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = getattr(system, "name", None) or getattr(system.spec, "name", type(system).__name__)
    claim_dir(out, {"command": "md", "system": name, "n_atoms": int(system.n_atoms)})
    with ascii_path(out / "trajectory.dcd"):  # the DCD at the end can be written: before the MD
        pass
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    temperature = config.temperature_k or system.temperature_k
    meta = run_metadata(system, config, temperature)
    dihedrals = None
    if config.bias is not None:
        dihedrals, names = select_bias_dihedrals(system, config.bias)
        meta["bias"] = bias_metadata(config.bias, dihedrals, names, temperature, config.step_fs)
    keep_recorded(out, meta)
    done = n_done(out)
    if done:  # resumed or extended: the committed frames must all be there first
        check_chunks(out, done, int(system.n_atoms))
    meta["n_frames"] = max(done, config.n_frames)
    meta["splits"] = contiguous_splits(meta["n_frames"])
    atomic_write_json(out / "metadata.json", meta)
    system.save_pdb(out / "topology.pdb")
    if done >= config.n_frames:
        log.info("%s already holds %d frames (asked %d)", out, done, config.n_frames)
        finalize(system, out, meta)
        return out

    omm = system.create_openmm_system()
    start_state = None
    if config.bias is not None:
        start_state = _add_bias(omm, system, config, dihedrals, temperature, meta, out, progress)
    run = _Production(system, config, omm, temperature, meta, out)
    run.start(done, start_state)
    run.run(progress)
    finalize(system, out, meta)
    return out


def _add_bias(
    omm: Any,
    system: PeptideSystem,
    config: MDConfig,
    dihedrals: np.ndarray,
    temperature: float,
    meta: dict,
    out: Path,
    progress: bool,
) -> Any:
    """Build the metadynamics bias (or read the frozen grid of a production under way) and add
    it to ``omm`` in a free force group; returns the build's end state (None when read)."""
    grid_path = out / "bias" / "grid.npy"
    built = None
    if n_done(out) > 0 and grid_path.exists():
        grid = np.load(grid_path)  # production under way: its bias is fixed
        if grid_sha256(grid) != meta["bias"].get("build", {}).get("grid_sha256"):
            raise ValueError(f"{grid_path} does not match the grid recorded in metadata.json")
    else:
        built = build_bias(
            omm,
            system.positions,
            dihedrals,
            config.bias,
            temperature,
            out / "bias" / "build.npz",
            seed=config.seed,
            step_fs=config.step_fs,
            friction_per_ps=config.friction_per_ps,
            warmup_ps=config.warmup_ps,
            # segments of at most 0.1 ns: a checkpoint and a progress line each
            segment_steps=min(config.chunk_frames * config.steps_per_frame, 100_000),
            progress=progress,
        )
        grid = np.asarray(built.grid, dtype=np.float64)
        atomic_save_npy(grid_path, grid)
        meta["bias"]["build"] = {
            "steps": built.steps,
            "ns": round(built.steps * config.step_fs * 1e-6, 9),
            "n_gaussians": built.n_gaussians,
            "wall_s": built.wall_s,
            "grid_shape": list(grid.shape),
            "grid_sha256": grid_sha256(grid),
            "grid_max_kj_mol": float(grid.max()),
        }
    group = free_force_group(omm)
    meta["bias"]["force_group"] = group
    omm.addForce(frozen_bias_force(dihedrals, grid, group))
    atomic_write_json(out / "metadata.json", meta)
    return built


class _Production:
    """The production phase of one run: an OpenMM context that writes chunks of frames (and,
    for weighted runs, their energy and bias terms) by atomic commits."""

    def __init__(
        self,
        system: PeptideSystem,
        config: MDConfig,
        omm: Any,
        temperature: float,
        meta: dict,
        out: Path,
    ) -> None:
        import openmm

        self.system, self.config, self.out, self.temperature = system, config, out, temperature
        self.integrator = openmm.LangevinMiddleIntegrator(
            temperature, config.friction_per_ps, config.step_fs * 1e-3
        )
        # the build used seed + 1; production under a bias continues with its own stream
        self.integrator.setRandomNumberSeed(config.seed + (2 if config.bias is not None else 1))
        self.context = make_context(omm, self.integrator)
        weighted = is_weighted(config, system.temperature_k, temperature)
        self.evaluator = make_context(omm) if weighted else None
        self.bias_group = meta["bias"]["force_group"] if config.bias is not None else None
        self.kT_target = BOLTZMANN_KJ_PER_MOL_K * system.temperature_k
        self.kT_sample = BOLTZMANN_KJ_PER_MOL_K * temperature
        self.done = 0

    def start(self, done: int, start_state: Any) -> None:
        """Resume from ``state.chk``, or start (warm-up) from the bias build's end or from the
        minimized system."""
        import openmm

        cfg, context = self.config, self.context
        chk = self.out / "state.chk"
        warmup_steps = int(round(cfg.warmup_ps * 1000.0 / cfg.step_fs))
        if done > 0 and chk.exists():
            context.loadCheckpoint(chk.read_bytes())
            self.done = done
            log.info("resuming %s at frame %d of %d", self.out, done, cfg.n_frames)
            return
        if start_state is not None:  # from the end of the build, re-equilibrated under the bias
            context.setPositions(start_state.positions)
            context.setVelocities(start_state.velocities)
        else:
            context.setPositions(self.system.positions)
            openmm.LocalEnergyMinimizer.minimize(context, 1.0, 1000)
            context.setVelocitiesToTemperature(self.temperature, cfg.seed + 1)
        self.integrator.step(warmup_steps)

    def run(self, progress: bool) -> None:
        """Chunks until ``config.n_frames`` frames are committed (a bar or log lines)."""
        cfg, n_total, ns_per_frame = (
            self.config,
            self.config.n_frames,
            self.config.frame_interval_ps / 1000.0,
        )
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=n_total * ns_per_frame,
                initial=self.done * ns_per_frame,
                unit="ns",
                desc=f"md {self.system.name}",
                bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} ns [{elapsed}<{remaining}{postfix}]",
            )
        ticker = ProgressLog(
            f"md {self.system.name} ({self.out})", n_total, self.done, ns_per_frame
        )
        t0, frames_this_run = time.time(), 0
        while self.done < n_total:
            n_chunk = min(cfg.chunk_frames - self.done % cfg.chunk_frames, n_total - self.done)
            frames = self._frames(n_chunk, bar, ticker)
            self._commit(frames)
            frames_this_run += n_chunk
            if bar is not None:
                ns_day = frames_this_run * ns_per_frame / max(time.time() - t0, 1e-9) * 86400.0
                bar.set_postfix_str(f"{ns_day:.1f} ns/day")
        if bar is not None:
            bar.close()

    def _frames(self, n_chunk: int, bar: Any, ticker: ProgressLog) -> np.ndarray:
        """The next ``n_chunk`` frames, float32 nm, each checked for a blow-up."""
        cfg, done = self.config, self.done
        frames = np.empty((n_chunk, self.system.n_atoms, 3), dtype=np.float32)
        for i in range(n_chunk):
            self.integrator.step(cfg.steps_per_frame)
            state = self.context.getState(getPositions=True)
            frames[i] = state.getPositions(asNumpy=True)._value
            _check_finite(frames[i], None, self.out, done + i, cfg)
            if bar is not None:
                bar.update(cfg.frame_interval_ps / 1000.0)
            else:
                ticker.update(done + i + 1)
        energy = self.context.getState(getEnergy=True)
        _check_finite(frames[-1], energy, self.out, done + n_chunk, cfg)
        return frames

    def _commit(self, frames: np.ndarray) -> None:
        """Frames, weight terms, OpenMM state and frame count: one atomic step."""
        chunk_id = self.done // self.config.chunk_frames
        keep = self.done % self.config.chunk_frames  # frames of a partial chunk already on disk
        parts = {"chunk": frames}
        if self.evaluator is not None:
            energy_kj, bias_kj = _frame_terms(self.evaluator, frames, self.bias_group)
            parts["energy"] = energy_kj / self.kT_target
            parts["bias"] = bias_kj / self.kT_sample
        commit = Commit(self.out)
        for prefix, arr in parts.items():
            rel = f"chunks/{prefix}_{chunk_id:06d}.npy"
            if keep:  # complete a partial chunk (ignore anything past the recorded count)
                arr = np.concatenate([checks.load_npy(self.out / rel, "MD chunk")[:keep], arr])
            commit.save_npy(rel, arr)
        self.done += len(frames)
        commit.write_bytes("state.chk", self.context.createCheckpoint())
        commit.write_json("progress.json", {"n_frames": self.done})
        commit.commit()


def _check_finite(x: np.ndarray, state, out: Path, frame: int, config: MDConfig) -> None:
    """Raise :class:`SimulationError` if positions (or the state's energy) are not finite."""
    bad = not np.isfinite(x).all() or float(np.abs(x).max()) > 1e4
    if state is not None and not bad:
        bad = not np.isfinite(state.getPotentialEnergy()._value)
    if bad:
        raise SimulationError(
            f"MD blew up near frame {frame} (non-finite positions or energy) at "
            f"--step-fs {config.step_fs}; nothing of this chunk was written and {out} keeps the "
            f"last good state ({n_done(out)} frames); use a smaller --step-fs (no constraints: "
            "1-2 fs)"
        )


def _frame_terms(
    context, frames: np.ndarray, bias_group: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Physical and bias energies (kJ/mol) of stored frames [F, n, 3] (as float32 -> float64)."""
    x = frames.astype(np.float64)
    if bias_group is None:
        return energies_kj(context, x), np.zeros(len(x))
    physical = set(range(32)) - {bias_group}
    return energies_kj(context, x, groups=physical), energies_kj(context, x, groups={bias_group})


# ---------------------------------------------------------- the directory layout, metadata, readers

FORMAT = "arbg-md"
FORMAT_VERSION = 2  # 2: optional per-frame weight terms (weighted runs); 1 reads the same
LOG_WEIGHTS_DEFINITION = (
    "log w = bias_kT - (1 - T_target/T_sampling) * u_target, with "
    "u_target = E/(k_B T_target) (chunks/energy_*.npy) and bias_kT = "
    "V/(k_B T_sampling) (chunks/bias_*.npy); unnormalised"
)
#: what a run keeps for good: resuming or extending it with other values is refused
FIXED_KEYS = (
    "system",
    "step_fs",
    "friction_per_ps",
    "frame_interval_ps",
    "seed",
    "sampling_temperature_k",
    "bias",
)


def default_split_fractions() -> dict[str, float]:
    return {"train": 0.8, "val": 0.1, "test": 0.1}


def contiguous_splits(
    n_frames: int, fractions: dict[str, float] | None = None
) -> dict[str, list[int]]:
    """Split frames 0..n into contiguous time blocks (never shuffled). Returns name -> [a, b)."""
    fractions = fractions or default_split_fractions()
    total = sum(fractions.values())
    out, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        stop = (
            n_frames
            if i == len(names) - 1
            else start + int(round(n_frames * fractions[name] / total))
        )
        out[name] = [start, stop]
        start = stop
    return out


def _versions() -> dict[str, str]:
    import openmm

    return {"arbg": arbg.__version__, "openmm": openmm.__version__}


def is_weighted(config: MDConfig, target_k: float, sampling_k: float) -> bool:
    """Whether frames of this run carry log-weights (a bias, or heated sampling)."""
    return config.bias is not None or sampling_k != target_k


def run_metadata(system: PeptideSystem, config: MDConfig, temperature: float) -> dict:
    """``metadata.json`` of a run of ``system`` sampled at ``temperature`` K (no bias entry)."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "system": system.spec.to_dict(),
        "forcefield_sha256": system.forcefield_hashes(),
        "n_atoms": system.n_atoms,
        "target_temperature_k": system.temperature_k,
        "sampling_temperature_k": temperature,
        "step_fs": config.step_fs,
        "friction_per_ps": config.friction_per_ps,
        "frame_interval_ps": config.frame_interval_ps,
        "warmup_ps": config.warmup_ps,
        "seed": config.seed,
        "integrator": "LangevinMiddleIntegrator",
        "constraints": None,
        "units": {"positions": "nm", "time": "ps"},
        "versions": _versions(),
    }
    if is_weighted(config, system.temperature_k, temperature):
        meta["log_weights"] = {
            "file": "log_weights.npy",
            "normalised": False,
            "definition": LOG_WEIGHTS_DEFINITION,
        }
    return meta


def bias_metadata(
    config: BiasConfig, dihedrals: np.ndarray, names: list[str], temperature: float, step_fs: float
) -> dict:
    """The ``bias`` entry of ``metadata.json`` (settings, method, grid file)."""
    kT = BOLTZMANN_KJ_PER_MOL_K * temperature
    return {
        "settings": {
            **config.to_dict(),
            "names": names,
            "dihedrals": dihedrals.tolist(),
            "height_kj_mol": config.height_kt * kT,
            "deposit_steps": max(1, int(round(config.deposit_ps * 1000.0 / step_fs))),
        },
        "method": "well-tempered metadynamics (openmm.app.Metadynamics) for build_ns, then "
        "frozen: CustomCVForce table(cv...) of CustomTorsionForce theta variables, "
        "periodic Continuous{1,2,3}DFunction over [-pi, pi]",
        "grid_file": "bias/grid.npy",
        "grid_units": "kJ/mol",
        "grid_layout": "axes in reverse variable order (OpenMM's layout); grid_points nodes per "
        "axis from -pi to pi inclusive (first node == last)",
    }


def keep_recorded(out: Path, meta: dict) -> None:
    """Check ``meta`` against the ``metadata.json`` already in ``out`` (a resumed or extended
    run) and carry over what its bias build recorded.

    Raises
    ------
    ValueError
        When a setting of :data:`FIXED_KEYS` differs.
    """
    path = out / "metadata.json"
    if not path.exists():
        return
    old = checks.read_json(path, "MD metadata")
    for key in FIXED_KEYS:
        a = old.get(key) if key != "bias" else (old.get(key) or {}).get("settings")
        b = meta.get(key) if key != "bias" else (meta.get(key) or {}).get("settings")
        if a != b:
            raise ValueError(
                f"{out} holds a run with different {key!r} ({a!r} vs {b!r}); use another --out"
            )
    for key in ("build", "force_group"):  # what the build recorded stays
        if key in (old.get("bias") or {}):
            meta["bias"][key] = old["bias"][key]


def n_done(out: Path) -> int:
    """Frames committed in ``out`` (0 when none)."""
    path = out / "progress.json"
    if not path.exists():
        return 0
    n = checks.read_json(path, "MD progress file").get("n_frames")
    return checks.nonnegative_int(f"{path} n_frames", n)


def check_chunks(out: Path, n_frames: int, n_atoms: int) -> None:
    """Check that the chunk files of ``out`` hold the ``n_frames`` committed frames whole
    (every ``chunks/*.npy`` as long as its header says, frames of ``n_atoms`` atoms, enough of
    them), without reading the frames. Raises ``ArgumentError`` naming the first bad file."""
    prefixes = ["chunk"] + [p for p in ("energy", "bias") if any(out.glob(f"chunks/{p}_*.npy"))]
    for prefix in prefixes:
        total = 0
        for f in sorted((out / "chunks").glob(f"{prefix}_*.npy")):
            arr = _npy_view(f)
            if prefix == "chunk" and arr.shape[1:] != (n_atoms, 3):
                raise checks.ArgumentError(
                    f"MD chunk {str(f)!r} holds frames of shape {list(arr.shape[1:])}, not "
                    f"[{n_atoms}, 3]; restore it or use a new --out"
                )
            total += len(arr)
        if total < n_frames:
            raise checks.ArgumentError(
                f"{out}: chunks/{prefix}_*.npy hold {total} frames, progress.json records "
                f"{n_frames} (a chunk is missing or truncated); restore it or use a new --out"
            )


def _npy_view(f: Path) -> np.ndarray:
    """A memory map of ``.npy`` file ``f``, refusing a file shorter than its header says."""
    try:
        with open(f, "rb") as fh:
            fmt = np.lib.format
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(fh)
            offset = fh.tell()
        need = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
        size = f.stat().st_size
    except (OSError, ValueError) as e:
        raise checks.ArgumentError(f"MD chunk {str(f)!r} is not a readable .npy array: {e}") from e
    if size < need or len(shape) < 1:
        raise checks.ArgumentError(
            f"MD chunk {str(f)!r} is truncated ({size} bytes of {need}); the run cannot be "
            "resumed or extended: restore the file or use a new --out"
        )
    return np.load(f, mmap_mode="r", allow_pickle=False)


def load_md_frames(out_dir: str | Path) -> np.ndarray:
    """All frames of an ``arbg md`` directory, [F, n, 3] float32 nm, canonical order."""
    out = Path(out_dir)
    progress = n_done(out)
    chunks = sorted((out / "chunks").glob("chunk_*.npy"))
    if not chunks:
        raise FileNotFoundError(f"{out}: no chunks/chunk_*.npy frames")
    frames = np.concatenate([checks.load_npy(c, "MD chunk") for c in chunks])
    if len(frames) < progress:
        raise checks.ArgumentError(
            f"{out}: {len(frames)} frames in chunks/ for the {progress} of progress.json "
            "(chunks missing or truncated)"
        )
    return frames[:progress]


def load_md_log_weights(out_dir: str | Path) -> np.ndarray:
    """Unnormalised frame log-weights of an ``arbg md`` directory, [F] float64.

    Zeros for unweighted (equilibrium) runs; for weighted runs computed from the per-chunk terms
    (``chunks/energy_*.npy``, ``chunks/bias_*.npy``) by :func:`arbg.chem.bias.frame_log_weights`.
    """
    out = Path(out_dir)
    meta = checks.read_json(out / "metadata.json", "MD metadata")
    n = n_done(out)
    if not meta.get("log_weights"):
        return np.zeros(n)
    terms = {}
    for prefix in ("energy", "bias"):
        files = sorted((out / "chunks").glob(f"{prefix}_*.npy"))
        arr = (
            np.concatenate([checks.load_npy(f, "MD chunk") for f in files])
            if files
            else np.zeros(0)
        )
        if len(arr) < n:
            raise ValueError(
                f"{out}: {len(arr)} frames of chunks/{prefix}_*.npy for {n} "
                "frames: the weight terms are incomplete"
            )
        terms[prefix] = arr[:n]
    return frame_log_weights(
        terms["energy"], terms["bias"], meta["target_temperature_k"], meta["sampling_temperature_k"]
    )


def md_bias_kt(out_dir: str | Path, positions: np.ndarray) -> np.ndarray:
    """The frozen bias of an ``arbg md`` run at any frames, in kT of its sampling temperature.

    ``V(x) / (k_B T_sampling)``, recomputed by OpenMM from the run's ``bias/grid.npy`` and its
    biased dihedrals (:func:`arbg.chem.bias.bias_energies`); zeros for an unbiased run. On the
    run's own frames it equals ``chunks/bias_*.npy``; on another run's frames it is what pooling
    runs needs (:func:`arbg.reweight.mixture_log_weights`).

    Parameters
    ----------
    out_dir : the run. positions : [F, n_atoms, 3] nm, canonical atom order.

    Returns
    -------
    [F] float64, kT.
    """
    out = Path(out_dir)
    meta = checks.read_json(out / "metadata.json", "MD metadata")
    x = np.asarray(positions, dtype=np.float64)
    if not meta.get("bias"):
        return np.zeros(len(x))
    grid = checks.load_npy(out / meta["bias"].get("grid_file", "bias/grid.npy"), "bias grid")
    dih = np.asarray(meta["bias"]["settings"]["dihedrals"], dtype=np.int64)
    kT = BOLTZMANN_KJ_PER_MOL_K * float(meta["sampling_temperature_k"])
    return bias_energies(x, dih, grid) / kT


def finalize(system: PeptideSystem, out: Path, meta: dict) -> None:
    """The end-of-run copies: ``trajectory.dcd`` and, for weighted runs, ``log_weights.npy``."""
    _write_dcd(system, out)
    if meta.get("log_weights"):
        atomic_save_npy(out / "log_weights.npy", load_md_log_weights(out))


def _write_dcd(system: PeptideSystem, out: Path) -> None:
    import mdtraj

    frames = load_md_frames(out)
    traj = mdtraj.Trajectory(frames, system.topology)
    tmp = out / ".trajectory.dcd.tmp"
    # mdtraj's DCD writer takes ASCII paths only, and fails on a full disk with a TypeError
    with disk_errors(out / "trajectory.dcd", cleanup=lambda: tmp.unlink(missing_ok=True)):
        with ascii_path(tmp) as name:
            traj.save_dcd(name)
    tmp.replace(out / "trajectory.dcd")
