"""The on-disk layout of an ``arbg md`` output directory: its metadata, splits and readers.

Layout::

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

The writer is :func:`arbg.chem.md.run_md`; readers need only this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import arbg
from arbg import checks
from arbg.chem.bias import BiasConfig, frame_log_weights
from arbg.chem.systems import BOLTZMANN_KJ_PER_MOL_K, PeptideSystem
from arbg.files import atomic_save_npy

if TYPE_CHECKING:
    from arbg.chem.md import MDConfig

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
    traj.save_dcd(str(tmp))
    tmp.replace(out / "trajectory.dcd")
