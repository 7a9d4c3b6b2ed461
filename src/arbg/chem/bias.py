"""Enhanced-sampling MD for training data: a static, exactly reweightable dihedral bias.

Plain MD rarely visits rare basins (alanine dipeptide's alpha-L, phi > 0, about once per 100 ns
at 300 K). Since SNIS corrects any proposal, training data need not be equilibrium data; what it
needs is known per-frame weights. ``arbg md --bias dihedrals`` therefore runs in two phases:

1. **build**: well-tempered metadynamics with OpenMM's own :class:`openmm.app.Metadynamics` on
   backbone dihedrals (each a :class:`openmm.app.BiasVariable` over a ``CustomTorsionForce``
   ``theta``, periodic on [-pi, pi]) for ``BiasConfig.build_ns``. Resumable: after every segment
   the bias grid, the OpenMM checkpoint and the step count go into one atomically written file.
2. **freeze**: the final metadynamics grid is evaluated by exactly the tabulated function
   OpenMM's metadynamics force uses (``CustomCVForce("table(cv0, ...)")`` with a periodic
   ``Continuous{1,2,3}DFunction``), now with constant values, in its own force group. Production
   MD (:func:`arbg.chem.md.run_md`) runs under this static bias, so a frame x sampled at T_s has the
   exact log-weight (unnormalised) towards the target at T_t

       log w(x) = V(x) / (k_B T_s) - (1 / (k_B T_t) - 1 / (k_B T_s)) E(x),

   the first term for the bias, the second for heated data (T_s != T_t); see
   :func:`frame_log_weights`.

The grid is in kJ/mol (OpenMM's layout: axes in reverse variable order, ``grid_points`` nodes per
axis from -pi to pi inclusive, first node == last). OpenMM objects and units stay in this module
and :mod:`arbg.chem.md`; everything returned is numpy (nm, kJ/mol or kT as named).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arbg.chem.energy import energies_kj, make_context
from arbg.chem.systems import BOLTZMANN_KJ_PER_MOL_K
from arbg.files import atomic_save_npz

log = logging.getLogger(__name__)

BIAS_VARIABLES = ("phi", "phi-psi")
MAX_VARIABLES = 3  # openmm.app.Metadynamics handles 1 to 3 collective variables


@dataclass(frozen=True)
class BiasConfig:
    """Settings of the metadynamics build and the frozen production bias.

    Attributes
    ----------
    variables : "phi" (phi of each biased residue) or "phi-psi" (phi and psi of each).
    residues : residue blocks (0-based) whose dihedrals are biased; None = the central residue
        among those with a phi. At most 3 variables in all (OpenMM's Metadynamics limit).
    build_ns : length of the metadynamics build phase, ns (after the unbiased warm-up).
    bias_factor : well-tempered bias factor gamma (> 1); the variables are sampled as if at
        gamma * T; the converged bias is about -(1 - 1/gamma) times their free energy.
    height_kt : initial Gaussian height in units of k_B T_sampling.
    width_deg : Gaussian width (standard deviation) in degrees.
    deposit_ps : interval between Gaussian depositions, ps.
    grid_points : grid nodes per variable over [-pi, pi] (inclusive); None = OpenMM's default,
        ceil(5 * 2 pi / width).
    """

    variables: str = "phi"
    residues: tuple[int, ...] | None = None
    build_ns: float = 1.0
    bias_factor: float = field(default=10.0, metadata={"flag": "--bias-factor"})
    height_kt: float = 0.5
    width_deg: float = 20.0
    deposit_ps: float = 0.5
    grid_points: int | None = field(default=None, metadata={"flag": "--bias-grid"})

    def __post_init__(self) -> None:
        if self.variables not in BIAS_VARIABLES:
            raise ValueError(
                f"unknown bias variables {self.variables!r}; use one of {', '.join(BIAS_VARIABLES)}"
            )
        if self.bias_factor <= 1.0:
            raise ValueError(f"the bias factor must be > 1, got {self.bias_factor}")
        if self.build_ns < 0 or self.height_kt <= 0 or self.width_deg <= 0 or self.deposit_ps <= 0:
            raise ValueError(
                "bias build_ns must be >= 0 and height, width, deposit interval positive"
            )

    @property
    def width_rad(self) -> float:
        return math.radians(self.width_deg)

    @property
    def n_grid(self) -> int:
        """Grid nodes per variable (OpenMM's default when ``grid_points`` is None)."""
        if self.grid_points is not None:
            return int(self.grid_points)
        return int(np.ceil(5 * 2 * np.pi / self.width_rad))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["residues"] = None if self.residues is None else [int(r) for r in self.residues]
        d["grid_points"] = self.n_grid
        return d


@dataclass
class BuiltBias:
    """Result of the metadynamics build phase.

    Attributes
    ----------
    grid : bias grid, kJ/mol (see module docstring for the layout).
    positions : [n_atoms, 3] nm, velocities : [n_atoms, 3] nm/ps: the final state of the build.
    steps : MD steps of the build (after the warm-up). n_gaussians : Gaussians deposited.
    wall_s : wall-clock seconds spent building (summed over resumed runs).
    """

    grid: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    steps: int
    n_gaussians: int
    wall_s: float


# ------------------------------------------------------------------------ choosing the variables


def select_bias_dihedrals(system, config: BiasConfig) -> tuple[np.ndarray, list[str]]:
    """Dihedrals to bias and their names.

    Parameters
    ----------
    system : anything with ``phi_indices``, ``psi_indices`` ([k, 4] atom indices) and
        ``residue_index`` ([n_atoms] residue block of each atom), e.g. a PeptideSystem.
    config : the bias settings (variables, residues).

    Returns
    -------
    (indices [m, 4] int64, names) with names like ``phi1``, ``psi1`` (1-based residues).
    """
    res_index = np.asarray(system.residue_index)
    phi = {int(res_index[row[2]]): row for row in np.asarray(system.phi_indices)}
    psi = {int(res_index[row[1]]): row for row in np.asarray(system.psi_indices)}
    if not phi:
        raise ValueError("the system has no backbone phi dihedral to bias")
    residues = config.residues
    if residues is None:
        candidates = sorted(phi)
        residues = (candidates[(len(candidates) - 1) // 2],)
    if len(set(residues)) != len(residues):
        raise ValueError(f"residues listed twice: {[r + 1 for r in residues]}")
    rows, names = [], []
    for r in residues:
        if r not in phi:
            raise ValueError(
                f"residue {r + 1} has no phi dihedral (residues with one: "
                f"{', '.join(str(k + 1) for k in sorted(phi))})"
            )
        rows.append(phi[r])
        names.append(f"phi{r + 1}")
        if config.variables == "phi-psi":
            if r not in psi:
                raise ValueError(f"residue {r + 1} has no psi dihedral")
            rows.append(psi[r])
            names.append(f"psi{r + 1}")
    if len(rows) > MAX_VARIABLES:
        raise ValueError(
            f"{len(rows)} biased dihedrals ({', '.join(names)}); OpenMM's "
            f"metadynamics takes at most {MAX_VARIABLES}"
        )
    return np.array(rows, dtype=np.int64).reshape(-1, 4), names


# ------------------------------------------------------------------------------ OpenMM forces


def _torsion_cv(indices: np.ndarray):
    import openmm

    force = openmm.CustomTorsionForce("theta")
    force.addTorsion(*(int(i) for i in indices), [])
    return force


def free_force_group(omm_system) -> int:
    """The highest force group no force of `omm_system` uses (as Metadynamics chooses it)."""
    used = {f.getForceGroup() for f in omm_system.getForces()}
    free = set(range(32)) - used
    if not free:
        raise RuntimeError("all 32 force groups are in use: no group left for the bias")
    return max(free)


def frozen_bias_force(dihedrals: np.ndarray, grid: np.ndarray, group: int):
    """The static bias: OpenMM's metadynamics force with a fixed grid.

    Parameters
    ----------
    dihedrals : [m, 4] atom indices (m = 1..3 variables).
    grid : m-dimensional bias grid in kJ/mol, axes in reverse variable order, nodes from -pi to
        pi inclusive on every axis.
    group : force group of the returned force.

    Returns
    -------
    openmm.CustomCVForce ``table(cv0, ...)`` over ``CustomTorsionForce("theta")`` variables with
    a periodic tabulated function: the same energy function as ``openmm.app.Metadynamics``.
    """
    import openmm

    dihedrals = np.asarray(dihedrals, dtype=np.int64).reshape(-1, 4)
    grid = np.asarray(grid, dtype=np.float64)
    m = len(dihedrals)
    if grid.ndim != m:
        raise ValueError(f"a bias over {m} dihedral(s) needs a {m}-D grid, got {grid.shape}")
    names = [f"cv{i}" for i in range(m)]
    force = openmm.CustomCVForce(f"table({', '.join(names)})")
    for name, idx in zip(names, dihedrals, strict=True):
        force.addCollectiveVariable(name, _torsion_cv(idx))
    widths = list(reversed(grid.shape))
    limits = [-np.pi, np.pi] * m
    values = grid.ravel().tolist()
    if m == 1:
        table = openmm.Continuous1DFunction(values, -np.pi, np.pi, True)
    elif m == 2:
        table = openmm.Continuous2DFunction(*widths, values, *limits, True)
    elif m == 3:
        table = openmm.Continuous3DFunction(*widths, values, *limits, True)
    else:
        raise ValueError(f"1 to {MAX_VARIABLES} biased dihedrals, got {m}")
    force.addTabulatedFunction("table", table)
    force.setForceGroup(int(group))
    return force


def bias_energies(positions: np.ndarray, dihedrals: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The frozen bias V(x) of frames, recomputed by OpenMM from the grid alone.

    Parameters
    ----------
    positions : [F, n_atoms, 3] nm. dihedrals : [m, 4]. grid : kJ/mol (see
        :func:`frozen_bias_force`).

    Returns
    -------
    [F] float64 bias energies in kJ/mol.
    """
    import openmm

    x = np.asarray(positions, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    omm = openmm.System()
    for _ in range(x.shape[1]):
        omm.addParticle(1.0)
    omm.addForce(frozen_bias_force(dihedrals, grid, 0))
    return energies_kj(make_context(omm), x)


def frame_log_weights(
    u_target: np.ndarray,
    bias_kt: np.ndarray,
    target_temperature_k: float,
    sampling_temperature_k: float,
) -> np.ndarray:
    """Unnormalised log-weights of frames sampled at T_s under a static bias, towards T_t.

    ``log w = V/(k T_s) - (1/(k T_t) - 1/(k T_s)) E = bias_kt - (1 - T_t/T_s) u_target``.

    Parameters
    ----------
    u_target : [F] E(x) / (k_B T_target), kT. bias_kt : [F] V(x) / (k_B T_sampling).
    target_temperature_k, sampling_temperature_k : K.

    Returns
    -------
    [F] float64 log-weights (no constant removed).
    """
    u = np.asarray(u_target, dtype=np.float64)
    v = np.asarray(bias_kt, dtype=np.float64)
    return v - (1.0 - target_temperature_k / sampling_temperature_k) * u


def grid_sha256(grid: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(grid, dtype=np.float64).tobytes()).hexdigest()


# -------------------------------------------------------------------------- the build phase


class _Stepper:
    """The part of openmm.app.Simulation that Metadynamics.step uses."""

    def __init__(self, context, integrator):
        self.context = context
        self.integrator = integrator

    @property
    def currentStep(self) -> int:  # noqa: N802 - OpenMM's name
        return self.context.getStepCount()

    def step(self, steps: int) -> None:
        self.integrator.step(int(steps))


def _grid_of(meta) -> np.ndarray:
    if not hasattr(meta, "_totalBias"):  # pragma: no cover - OpenMM >= 7.3 has it
        raise RuntimeError(
            "this OpenMM's Metadynamics keeps no _totalBias grid; arbg needs OpenMM >= 7.3"
        )
    return np.array(meta._totalBias, dtype=np.float64)


def _restore_grid(meta, grid: np.ndarray, context) -> None:
    """Put a saved grid back into a Metadynamics object (resuming a build)."""
    meta._selfBias = np.array(grid, dtype=np.float64)
    meta._totalBias = np.array(grid, dtype=np.float64)
    if len(meta.variables) == 1:
        meta._table.setFunctionParameters(meta._totalBias.flatten(), *meta._limits)
    else:
        meta._table.setFunctionParameters(*meta._widths, meta._totalBias.flatten(), *meta._limits)
    meta._force.updateParametersInContext(context)


def _save_state(path: Path, context, meta, steps: int, deposit_steps: int, wall: float) -> None:
    """One atomic file: grid, step count, OpenMM checkpoint and the current state."""
    from openmm import unit

    st = context.getState(getPositions=True, getVelocities=True)
    atomic_save_npz(
        path,
        grid=_grid_of(meta),
        steps=np.int64(steps),
        n_gaussians=np.int64(steps // deposit_steps),
        wall_s=np.float64(wall),
        positions=np.array(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)),
        velocities=np.array(
            st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
        ),
        checkpoint=np.frombuffer(context.createCheckpoint(), dtype=np.uint8),
    )


def _built_from(saved: dict[str, np.ndarray], total: int) -> BuiltBias:
    """The finished build stored in ``build.npz`` (``saved``: its arrays)."""
    return BuiltBias(
        saved["grid"],
        saved["positions"],
        saved["velocities"],
        total,
        int(saved["n_gaussians"]),
        float(saved["wall_s"]),
    )


def _metadynamics(
    omm_system: Any,
    dihedrals: np.ndarray,
    config: BiasConfig,
    temperature_k: float,
    deposit_steps: int,
) -> tuple[Any, Any]:
    """A copy of ``omm_system`` and the ``openmm.app.Metadynamics`` that biases it."""
    import openmm
    from openmm import app, unit

    system = openmm.XmlSerializer.clone(omm_system)
    variables = [
        app.BiasVariable(
            _torsion_cv(d), -np.pi, np.pi, config.width_rad, periodic=True, gridWidth=config.n_grid
        )
        for d in dihedrals
    ]
    kT = BOLTZMANN_KJ_PER_MOL_K * temperature_k
    meta = app.Metadynamics(
        system,
        variables,
        temperature_k * unit.kelvin,
        config.bias_factor,
        config.height_kt * kT * unit.kilojoule_per_mole,
        deposit_steps,
    )
    return system, meta


def _run_segments(
    stepper: _Stepper,
    meta: Any,
    state_path: Path,
    total: int,
    segment: int,
    deposit_steps: int,
    step_fs: float,
    wall: float,
    progress: bool,
) -> None:
    """Metadynamics up to ``total`` steps in segments, the state saved after each."""
    context, ns = stepper.context, step_fs * 1e-6  # ns per step
    done = context.getStepCount()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        fmt = "{l_bar}{bar}| {n:.3f}/{total:.3f} ns [{elapsed}<{remaining}]"
        kw = {"unit": "ns", "desc": "metadynamics build", "bar_format": fmt}
        bar = tqdm(total=total * ns, initial=done * ns, **kw)
    while done < total:
        n = min(segment, total - done)
        t0 = time.time()
        meta.step(stepper, n)
        wall += time.time() - t0
        done = context.getStepCount()
        _save_state(state_path, context, meta, done, deposit_steps, wall)
        if bar is not None:
            bar.update(n * ns)
        else:
            log.info("metadynamics build: %.3f of %.3f ns (%.1f s)", done * ns, total * ns, wall)
    if bar is not None:
        bar.close()


def build_bias(
    omm_system,
    positions: np.ndarray,
    dihedrals: np.ndarray,
    config: BiasConfig,
    temperature_k: float,
    state_path: str | Path,
    *,
    seed: int = 0,
    step_fs: float = 1.0,
    friction_per_ps: float = 0.3,
    warmup_ps: float = 50.0,
    segment_steps: int = 1_000_000,
    progress: bool = False,
) -> BuiltBias:
    """Build a well-tempered metadynamics bias (resumable); return its final grid and state.

    Minimises `positions`, draws velocities (``seed + 1``), runs ``warmup_ps`` unbiased, then
    ``config.build_ns`` of metadynamics (Langevin middle integrator at `temperature_k`). After
    every ``segment_steps`` steps the grid, the OpenMM checkpoint, the step count and the final
    positions/velocities are written atomically to `state_path` (an .npz); a later call with
    the same arguments resumes from there (bit-identical continuation on one platform) or, if
    the build is complete, returns it without running anything.

    Parameters
    ----------
    omm_system : openmm.System of the physical model (not modified; a copy gets the bias).
    positions : [n_atoms, 3] starting positions, nm.
    dihedrals : [m, 4] atom indices of the biased dihedrals.
    config : BiasConfig. temperature_k : sampling temperature, K.
    state_path : the resumable state file.
    """
    import openmm

    state_path = Path(state_path)
    deposit_steps = max(1, int(round(config.deposit_ps * 1000.0 / step_fs)))
    total = int(round(config.build_ns * 1e6 / step_fs))
    total -= total % deposit_steps  # end on a deposition, so a resume never splits one
    saved = dict(np.load(state_path)) if state_path.exists() else None
    if saved is not None and int(saved["steps"]) >= total:
        if int(saved["steps"]) != total:
            raise ValueError(
                f"{state_path} holds a {int(saved['steps'])}-step build, asked {total}"
            )
        return _built_from(saved, total)

    system, meta = _metadynamics(omm_system, dihedrals, config, temperature_k, deposit_steps)
    integrator = openmm.LangevinMiddleIntegrator(temperature_k, friction_per_ps, step_fs * 1e-3)
    integrator.setRandomNumberSeed(seed + 1)
    context = make_context(system, integrator)
    wall = 0.0
    if saved is not None:
        context.loadCheckpoint(saved["checkpoint"].tobytes())
        _restore_grid(meta, saved["grid"], context)
        wall = float(saved["wall_s"])
        log.info("resuming the bias build at step %d of %d", context.getStepCount(), total)
    else:
        context.setPositions(np.asarray(positions, dtype=np.float64))
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 1000)
        context.setVelocitiesToTemperature(temperature_k, seed + 1)
        integrator.step(int(round(warmup_ps * 1000.0 / step_fs)))
        context.setStepCount(0)
    stepper = _Stepper(context, integrator)
    if saved is None and total == 0:  # no build asked: a zero bias from the warmed-up state
        _save_state(state_path, context, meta, 0, deposit_steps, wall)
    segment = max(deposit_steps, segment_steps - segment_steps % deposit_steps)
    _run_segments(stepper, meta, state_path, total, segment, deposit_steps, step_fs, wall, progress)
    saved = dict(np.load(state_path))
    log.info(
        "bias built: %d steps, %d Gaussians, max %.2f kJ/mol, %.1f s",
        total,
        int(saved["n_gaussians"]),
        float(np.max(saved["grid"])),
        float(saved["wall_s"]),
    )
    return _built_from(saved, total)
