"""Reduced energies u(x) = E(x)/kT with OpenMM, batched and parallel; capped-prefix energies.

Units at the boundary: positions in nm (float32 or float64, ``[B, n_atoms, 3]``), energies
returned in kT (float64). One OpenMM ``Context`` per worker process is created once and reused;
each evaluation is ``setPositions`` + ``getState(getEnergy=True)``. Non-finite energies (clashes,
overflow) come back as ``+inf``, are counted in :attr:`OpenMMEnergy.n_nonfinite` and logged;
they never crash a batch and never come back as 0.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np

from arbg.checks import ArgumentError

log = logging.getLogger(__name__)

# OpenMM's CPU platform has a fixed cost of ~0.7 ms per call here, which dominates for small
# peptides; the Reference platform (double precision) is ~20x faster below ~100 atoms.
# ARBG_OPENMM_PLATFORM overrides the choice.
REFERENCE_MAX_ATOMS = 100


def choose_platform(n_atoms: int) -> str:
    """OpenMM platform name for a system of `n_atoms` atoms (see REFERENCE_MAX_ATOMS)."""
    forced = os.environ.get("ARBG_OPENMM_PLATFORM")
    if forced:
        return forced
    return "Reference" if n_atoms <= REFERENCE_MAX_ATOMS else "CPU"


def resolve_forcefield_file(name: str) -> str:
    """Path of a force-field XML: a user path, or one shipped with OpenMM."""
    if Path(name).is_file():
        return str(Path(name))
    from openmm.app import forcefield as ffmod

    data = Path(ffmod.__file__).parent / "data"
    if (data / name).is_file():
        return str(data / name)
    try:  # openmmforcefields-style plugins register extra data directories
        for d in ffmod._getDataDirectories():
            if (Path(d) / name).is_file():
                return str(Path(d) / name)
    except Exception:  # pragma: no cover - private API
        pass
    raise FileNotFoundError(
        f"unknown force-field file {name!r}: not a path and not shipped with OpenMM (see {data})"
    )


def load_forcefield(files: tuple[str, ...] | list[str]):
    """openmm.app.ForceField from file names, with a clear error for unknown files."""

    for f in files:
        resolve_forcefield_file(f)
    try:
        return _load_forcefield_cached(tuple(files))
    except Exception as e:  # openmm raises XML parse / value errors without the file name
        raise ArgumentError(
            f"--forcefield: {', '.join(map(str, files))} is not a valid OpenMM force-field "
            f"XML set: {type(e).__name__}: {e}"
        ) from e


@functools.lru_cache(maxsize=8)
def _load_forcefield_cached(files: tuple[str, ...]):
    from openmm import app

    return app.ForceField(*files)


def create_openmm_system(spec, topology):
    """openmm.System for `topology` under `spec` (force field, nonbonded method, no constraints)."""
    from openmm import app, unit

    ff = load_forcefield(spec.forcefield)
    method = {"NoCutoff": app.NoCutoff, "CutoffNonPeriodic": app.CutoffNonPeriodic}[spec.nonbonded]
    kwargs = dict(nonbondedMethod=method, constraints=None, rigidWater=False, removeCMMotion=False)
    if spec.nonbonded == "CutoffNonPeriodic":
        kwargs["nonbondedCutoff"] = spec.cutoff_nm * unit.nanometer
    try:
        return ff.createSystem(topology, **kwargs)
    except ValueError as e:
        raise ValueError(
            f"force field {list(spec.forcefield)} cannot parameterise the peptide: {e}"
        ) from e


def make_context(system, integrator=None, threads: int = 1):
    """An OpenMM Context on the platform chosen for the system size (one thread on CPU)."""
    import openmm

    integrator = integrator or openmm.VerletIntegrator(0.001)
    name = choose_platform(system.getNumParticles())
    platform = openmm.Platform.getPlatformByName(name)
    props = {"Threads": str(threads)} if name == "CPU" else {}
    return openmm.Context(system, integrator, platform, props)


def _energies_kj(context, x: np.ndarray, groups: set[int] | None = None) -> np.ndarray:
    """Potential energies (kJ/mol) of a batch [B, n, 3] nm with one context.

    `groups`: the force groups to include (default: all).
    """
    from openmm import unit

    out = np.empty(len(x), dtype=np.float64)
    kj = unit.kilojoule_per_mole
    kwargs = {} if groups is None else {"groups": set(groups)}
    for i, xi in enumerate(x):
        if not np.all(np.isfinite(xi)):
            out[i] = np.inf
            continue
        try:
            context.setPositions(xi)
            state = context.getState(getEnergy=True, **kwargs)
            out[i] = state.getPotentialEnergy().value_in_unit(kj)
        except Exception:  # OpenMM raises on NaN coordinates/forces on some platforms
            out[i] = np.inf
    out[~np.isfinite(out)] = np.inf
    return out


# -- worker-process state (one context per process, reused)
_WORKER: dict = {}


def _worker_init(system_xml: str) -> None:
    import openmm

    _WORKER["context"] = make_context(openmm.XmlSerializer.deserialize(system_xml))


def _worker_eval(x: np.ndarray) -> np.ndarray:
    return _energies_kj(_WORKER["context"], x)


class OpenMMEnergy:
    """Batched reduced energy of one OpenMM System.

    Parameters
    ----------
    system : openmm.System (no constraints).
    kT : k_B T in kJ/mol.
    n_workers : worker processes; 1 evaluates in this process.
    """

    def __init__(self, system, kT: float, n_workers: int = 1):
        import openmm

        self.kT = float(kT)
        self.n_atoms = system.getNumParticles()
        self.n_workers = max(1, int(n_workers))
        self._xml = openmm.XmlSerializer.serialize(system)
        self._system = system
        self._context = None
        self._pool = None
        self.n_evaluations = 0
        self.n_nonfinite = 0

    def _local_context(self):
        if self._context is None:
            self._context = make_context(self._system)
        return self._context

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Reduced energies [B] in kT of positions [B, n, 3] (or [n, 3]) in nm."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(
                f"positions must have shape [B, {self.n_atoms}, 3] (nm), got {list(x.shape)}"
            )
        if len(x) == 0:
            return np.zeros(0)
        if self.n_workers == 1 or len(x) < 2 * self.n_workers:
            e = _energies_kj(self._local_context(), x)
        else:
            if self._pool is None:
                ctx = mp.get_context("spawn")
                self._pool = ctx.Pool(
                    self.n_workers, initializer=_worker_init, initargs=(self._xml,)
                )
            chunks = np.array_split(x, self.n_workers * 4)
            e = np.concatenate(self._pool.map(_worker_eval, chunks))
        u = e / self.kT
        bad = int(np.sum(~np.isfinite(u)))
        self.n_evaluations += len(u)
        if bad:
            self.n_nonfinite += bad
            log.warning("%d of %d energies are non-finite (set to +inf)", bad, len(u))
        return u

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def __del__(self):  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


def prefix_energy_model(system, block: int) -> OpenMMEnergy:
    """Energy model of the capped fragment made of residue blocks 0..block plus an OXT."""
    cache = system.__dict__.setdefault("_prefix_models", {})
    if block not in cache:
        cache[block] = OpenMMEnergy(
            _fragment_system(system, block), system.kT, n_workers=system.n_workers
        )
    return cache[block]


def fragment_topology(system, block: int):
    """openmm Topology of blocks 0..block with a terminal OXT appended to residue `block`."""
    from openmm import app

    stop = system.residue_blocks[block][1]
    atoms = list(system.omm_topology.atoms())[:stop]
    new = app.Topology()
    chain = new.addChain("A")
    res_map, atom_map = {}, {}
    for a in atoms:
        r = a.residue
        if r.index not in res_map:
            res_map[r.index] = new.addResidue(r.name, chain, id=r.id)
        atom_map[a.index] = new.addAtom(a.name, a.element, res_map[r.index])
    # the C-terminal residue is the standard residue of the block (never a cap)
    c_atom = next(
        a
        for a in atoms
        if a.residue.name not in ("ACE", "NME")
        and system.residue_index[a.index] == block
        and a.name == "C"
    )
    oxt = new.addAtom("OXT", app.element.oxygen, res_map[c_atom.residue.index])
    for a, b in system.omm_topology.bonds():
        if a.index < stop and b.index < stop:
            new.addBond(atom_map[a.index], atom_map[b.index])
    new.addBond(atom_map[c_atom.index], oxt)
    return new


def _fragment_system(system, block: int):
    return system.create_openmm_system(fragment_topology(system, block))


def minimize_positions(system, positions: np.ndarray, max_iterations: int = 500) -> np.ndarray:
    """Local energy minimisation with OpenMM; returns [n, 3] nm."""
    import openmm
    from openmm import unit

    ctx = make_context(system.create_openmm_system())
    ctx.setPositions(np.asarray(positions, dtype=np.float64))
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, max_iterations)
    pos = ctx.getState(getPositions=True).getPositions(asNumpy=True)
    return np.array(pos.value_in_unit(unit.nanometer), dtype=np.float64)
