"""Reduced energies u(x) = E(x)/kT with OpenMM, batched and parallel; capped-prefix energies.

Units at the boundary: positions in nm (float32 or float64, ``[B, n_atoms, 3]``), energies
returned in kT (float64). One OpenMM ``Context`` per process (and, on Dask workers, per worker
thread and system; see :mod:`arbg.cluster`) is created once and reused; each evaluation is
``setPositions`` + ``getState(getEnergy=True)``. Non-finite energies (clashes,
overflow) come back as ``+inf``, are counted in :attr:`OpenMMEnergy.n_nonfinite` and logged;
they never crash a batch and never come back as 0.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np

from arbg.checks import ArgumentError
from arbg.cluster import active_engine, worker_cache

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


def energies_kj(context, x: np.ndarray, groups: set[int] | None = None) -> np.ndarray:
    """Potential energies (kJ/mol) of a batch [B, n, 3] nm with one context.

    The batch is made one C-contiguous, aligned float64 array first (a copy only when needed):
    OpenMM converts an unaligned array, such as one unpickled by Dask from a message, ~20%
    slower per ``setPositions`` for small systems. `groups`: the force groups to include
    (default: all). Non-finite positions or energies give +inf.
    """
    x = np.require(x, dtype=np.float64, requirements=("C", "A"))
    out = np.full(len(x), np.inf, dtype=np.float64)
    mask = -1 if groups is None else sum(1 << g for g in groups)  # OpenMM's int form, once
    if mask >= 1 << 31:  # OpenMM takes a signed 32-bit mask
        mask -= 1 << 32
    import openmm

    failed: list[str] = []
    for i in np.flatnonzero(np.isfinite(x).all(axis=(1, 2))).tolist():
        try:
            context.setPositions(x[i])
            state = context.getState(getEnergy=True, groups=mask)
            out[i] = state.getPotentialEnergy()._value  # always kJ/mol; skips unit conversion
        except openmm.OpenMMException as e:  # a numerical failure of this conformation only;
            failed.append(str(e))  # anything else is a bug and propagates
    if failed:
        log.warning(
            "%d of %d conformations raised an OpenMM error (energy set to +inf, weight zero); "
            "the first: %s",
            len(failed),
            len(x),
            " ".join(failed[0].split())[:200],
        )
    out[~np.isfinite(out)] = np.inf
    return out


# -- parallel evaluation on Dask workers (arbg.cluster): tasks carry a key, the system's XML
# (scattered once to every worker) and positions; the Context stays in the worker thread.
TARGET_TASK_S = 0.25  # seconds of work per task: Dask's few ms per task stay under ~2%
MIN_PARALLEL_S = 0.1  # batches estimated below this run in this process
PROBE = 32  # conformations timed in this process to size the first tasks of a system
MAX_CACHED_CONTEXTS = 64  # per worker thread; the oldest is dropped beyond this


def plan_tasks(n: int, sec_per_eval: float, n_workers: int) -> int:
    """Number of tasks for `n` conformations at `sec_per_eval` s each on `n_workers` workers.

    0 means "evaluate in this process" (the batch is too small to pay a round trip). Otherwise
    a multiple of the workers with ~TARGET_TASK_S of work per task (balanced, overhead small).
    """
    total = n * sec_per_eval
    if n < 2 or total < MIN_PARALLEL_S:
        return 0
    per_worker = max(1, round(total / max(1, n_workers) / TARGET_TASK_S))
    return int(min(n, max(1, n_workers) * per_worker))


def assign_workers(n_tasks: int, threads: dict[str, int]) -> list[str | None]:
    """The worker each of `n_tasks` equal chunks goes to: round robin over the worker threads.

    Every worker gets a share of the chunks in proportion to its threads, whatever the
    scheduler's estimate of their load (left to itself it may give two equal chunks to one
    of two idle workers). The restriction is loose: a chunk whose worker is gone or busy can
    still run (or be stolen) elsewhere. None for every chunk when no worker is known yet.
    """
    slots = [w for w in sorted(threads) for _ in range(threads[w])]
    return [slots[i % len(slots)] if slots else None for i in range(n_tasks)]


def _energy_task(key: str, system_xml: str, x: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
    """Dask task: energies (kJ/mol) of x [B, n, 3] nm with this worker's cached Context.

    Returns the energies [B], the wall and CPU seconds of the energy loop (CPU: the worker
    process's, OpenMM's CPU platform computing in threads of its own), and
    whether the Context had to be built (a cache miss: the first task of a system on a worker).
    """
    cache = worker_cache()
    context = cache.get(("openmm-energy", key))
    built = context is None
    if built:
        import openmm

        context = make_context(openmm.XmlSerializer.deserialize(system_xml))
        while len(cache) >= MAX_CACHED_CONTEXTS:
            cache.pop(next(iter(cache)))
        cache[("openmm-energy", key)] = context
    t0, c0 = time.perf_counter(), time.process_time()
    e = energies_kj(context, x)
    return e, time.perf_counter() - t0, time.process_time() - c0, built


class OpenMMEnergy:
    """Batched reduced energy of one OpenMM System, in this process or on Dask workers.

    Parameters
    ----------
    system : openmm.System (no constraints).
    kT : k_B T in kJ/mol.
    engine : an :class:`arbg.cluster.Engine` to evaluate large batches on; None uses the
        engine of the running command (:func:`arbg.cluster.active_engine`), and without one
        everything runs in this process.

    Large batches are cut into chunks of ~``TARGET_TASK_S`` seconds of work (sized from the
    measured time per evaluation), one Dask task each; every worker thread builds one Context
    per system (keyed by the hash of the system's XML) and reuses it. Results equal the
    in-process ones bit for bit (same platform and precision).
    """

    def __init__(self, system, kT: float, engine=None):
        import openmm

        self.kT = float(kT)
        self.n_atoms = system.getNumParticles()
        self.engine = engine
        self._xml = openmm.XmlSerializer.serialize(system)
        self.key = hashlib.sha256(self._xml.encode()).hexdigest()[:16]
        self._system = system
        self._context = None
        self._scattered: tuple[object, object] | None = None  # (client, future of the XML)
        self.sec_per_eval: float | None = None  # measured, seconds per conformation
        self.n_evaluations = 0
        self.n_nonfinite = 0
        self.n_tasks = 0
        self.task_seconds = 0.0  # wall time of the energy loops inside Dask tasks
        self.task_cpu_seconds = 0.0  # their CPU time (< task_seconds: the core was shared)
        self.n_contexts_built = 0  # on workers: one per worker thread and system when cached

    def _local_context(self):
        if self._context is None:
            self._context = make_context(self._system)
        return self._context

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Reduced energies [B] in kT of positions [B, n, 3] (or [n, 3]) in nm."""
        x = np.asarray(x)
        if x.dtype != np.float32:  # float32 stays (half the bytes to ship); exact in float64
            x = x.astype(np.float64, copy=False)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(
                f"positions must have shape [B, {self.n_atoms}, 3] (nm), got {list(x.shape)}"
            )
        if len(x) == 0:
            return np.zeros(0)
        engine = self.engine if self.engine is not None else active_engine()
        if engine is not None and not engine.distributed:
            engine = None
        e = self._evaluate(x, engine)
        u = e / self.kT
        bad = int(np.sum(~np.isfinite(u)))
        self.n_evaluations += len(u)
        if bad:
            self.n_nonfinite += bad
            log.warning("%d of %d energies are non-finite (set to +inf)", bad, len(u))
        return u

    def _evaluate(self, x: np.ndarray, engine) -> np.ndarray:
        if engine is not None and self.sec_per_eval is None and len(x) > PROBE:
            head = self._timed_local(x[:PROBE])  # useful work that sizes the tasks
            return np.concatenate([head, self._evaluate(x[PROBE:], engine)])
        if engine is None or self.sec_per_eval is None:
            return self._timed_local(x)
        threads = engine.worker_threads()
        n_tasks = plan_tasks(len(x), self.sec_per_eval, sum(threads.values()))
        if n_tasks == 0:
            return self._timed_local(x)
        return self._distributed(x, engine.client, assign_workers(n_tasks, threads))

    def _timed_local(self, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        e = energies_kj(self._local_context(), x)
        self._observe(time.perf_counter() - t0, len(x))
        return e

    def _observe(self, seconds: float, n: int) -> None:
        rate = seconds / max(n, 1)
        self.sec_per_eval = rate if self.sec_per_eval is None else 0.5 * (self.sec_per_eval + rate)

    def _distributed(self, x: np.ndarray, client, workers: list[str | None]) -> np.ndarray:
        """Energies (kJ/mol) of x in ``len(workers)`` Dask tasks, chunk i on ``workers[i]``."""
        if self._scattered is None or self._scattered[0] is not client:
            future = client.scatter(self._xml, broadcast=True, hash=False)
            self._scattered = (client, future)
        xml = self._scattered[1]  # a copy on every worker: survives the loss of one
        # positions travel inside the tasks (not scattered): a task lost with its worker is
        # re-run elsewhere from what the scheduler holds; one submission per chunk keeps each
        # message small however large the batch
        n_tasks = len(workers)
        futures = [
            client.submit(
                _energy_task,
                self.key,
                xml,
                chunk,
                pure=False,
                workers=None if w is None else [w],
                allow_other_workers=True,
            )
            for chunk, w in zip(np.array_split(x, n_tasks), workers, strict=True)
        ]
        results = client.gather(futures)
        self.n_tasks += n_tasks
        self.task_seconds += sum(r[1] for r in results)
        self.task_cpu_seconds += sum(r[2] for r in results)
        self.n_contexts_built += sum(r[3] for r in results)
        self._observe(sum(r[1] for r in results), len(x))
        log.debug("%d energies in %d Dask tasks", len(x), n_tasks)
        return np.concatenate([r[0] for r in results])

    def close(self) -> None:
        """Release the scattered system and the local Context."""
        self._scattered = None
        self._context = None


def prefix_energy_model(system, block: int) -> OpenMMEnergy:
    """Energy model of the capped fragment made of residue blocks 0..block plus an OXT."""
    cache = system.__dict__.setdefault("_prefix_models", {})
    if block not in cache:
        cache[block] = OpenMMEnergy(_fragment_system(system, block), system.kT)
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
