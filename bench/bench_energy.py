"""Reduced-energy throughput: a bare OpenMM loop against arbg in-process and on Dask workers.

Usage: python bench/bench_energy.py [--systems aldp chignolin] [--n 20000] [--rounds 5]

For each system, evaluations/s of:

- ``bare x1``: the plain OpenMM loop (one Context, ``setPositions`` +
  ``getState(getEnergy=True)`` + ``value_in_unit``, same platform, one thread) in this process;
- ``bare x2``: that loop in two processes at once, each on half the batch (started together
  behind a barrier): what two cores of this machine give right now, the ceiling of 2 workers;
- :class:`OpenMMEnergy` in this process (no Dask, ``--workers 1``'s default);
- :class:`OpenMMEnergy` on LocalClusters of 1 and 2 single-threaded worker processes.

The settings are timed in interleaved rounds and the best round of each is kept, so that a
shared machine's load hits them alike. Beside each figure: ``other`` is the CPU (cores) that
processes outside this benchmark used during that round (0 on a quiet machine; the MD jobs
paused by tools/quiet do not count); ``per worker`` the Dask rate / (workers x bare x1) (goal
>= 0.8); ``x 1 worker`` the speed-up of 2 workers (goal >= 1.7 on a quiet machine); ``busy`` the
share of the workers' wall time inside the energy loop of a task (the rest: Dask's overhead and
waiting); ``cpu`` the share of that loop's wall time the worker process was on a core (below
100%: the core was shared with another process).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import psutil

from arbg.chem.energy import OpenMMEnergy, choose_platform, make_context
from arbg.chem.systems import build_system
from arbg.cluster import local_cluster


class OtherLoad:
    """CPU used by processes outside this one and its descendants, in cores, over a block."""

    def __init__(self):
        self.me = psutil.Process()

    def _mine(self) -> float:
        done = os.times()  # children that ended (a closed cluster's workers) and were waited for
        total = done.children_user + done.children_system
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:  # gone meanwhile
                pass
        return total

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def __enter__(self) -> OtherLoad:
        self.t0, self.busy0, self.mine0 = time.perf_counter(), self._busy(), self._mine()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        other = (self._busy() - self.busy0) - (self._mine() - self.mine0)
        self.cores = max(0.0, other / wall)


def batch(name: str, n: int):
    """The system and `n` perturbed conformations [n, atoms, 3] nm (seeded: the same anywhere)."""
    system = build_system(name)
    n = n if system.n_atoms <= 100 else max(n // 10, 200)
    rng = np.random.default_rng(0)
    x = system.positions[None] + rng.normal(scale=0.002, size=(n, system.n_atoms, 3))
    return system, x


def bare_loop(context, x: np.ndarray) -> float:
    """Seconds of the plain OpenMM loop a user would write."""
    from openmm import unit

    kj = unit.kilojoule_per_mole
    t0 = time.perf_counter()
    for xi in x:
        context.setPositions(xi)
        context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(kj)
    return time.perf_counter() - t0


# -- the two-process ceiling: a pool of plain processes, one Context each

_POOL: dict = {}


def _pool_init(name: str, n: int, barrier) -> None:
    os.environ.update(OMP_NUM_THREADS="1")
    system, x = batch(name, n)
    _POOL.update(context=make_context(system.create_openmm_system()), x=x, barrier=barrier)


def _pool_run(part: int, parts: int) -> tuple[float, float, int]:
    x = np.array_split(_POOL["x"], parts)[part]
    _POOL["barrier"].wait(timeout=60)  # both processes start together
    t0 = time.time()
    bare_loop(_POOL["context"], x)
    return t0, time.time(), len(x)


class BarePool:
    """`k` spawned processes running :func:`bare_loop` on a k-th of the batch each, at once."""

    def __init__(self, name: str, n: int, k: int = 2):
        ctx = mp.get_context("spawn")
        self.k = k
        self.pool = ProcessPoolExecutor(
            k, mp_context=ctx, initializer=_pool_init, initargs=(name, n, ctx.Barrier(k))
        )

    def rate(self) -> float:
        runs = [f.result() for f in [self.pool.submit(_pool_run, i, self.k) for i in range(self.k)]]
        return sum(r[2] for r in runs) / (max(r[1] for r in runs) - min(r[0] for r in runs))

    def close(self) -> None:
        self.pool.shutdown()


def timed(energy: OpenMMEnergy, x: np.ndarray) -> tuple[float, float, float]:
    """(evaluations/s, task loop seconds / wall, task CPU seconds / task loop seconds)."""
    before, cpu_before = energy.task_seconds, energy.task_cpu_seconds
    t0 = time.perf_counter()
    u = energy(x)
    wall = time.perf_counter() - t0
    assert np.isfinite(u).all()
    loop = energy.task_seconds - before
    return len(x) / wall, loop / wall, (energy.task_cpu_seconds - cpu_before) / max(loop, 1e-9)


def bench_system(name: str, n: int, rounds: int, engines: dict) -> None:
    system, x = batch(name, n)
    omm = system.create_openmm_system()
    context = make_context(omm)
    pool = BarePool(name, n, 2)
    models = {"in-process": OpenMMEnergy(omm, system.kT)}
    for w, engine in engines.items():
        models[w] = OpenMMEnergy(omm, system.kT, engine=engine)
        models[w](x[: len(x) // 4])  # Contexts built on the workers, time per evaluation measured
    pool.rate()  # processes started and warm
    settings = {
        "bare x1": lambda: (len(x) / bare_loop(context, x),),
        "bare x2": lambda: (pool.rate(),),
        **{k: (lambda m=m: timed(m, x)) for k, m in models.items()},
    }
    best: dict = {}
    for _ in range(rounds):  # interleaved: the machine's load hits every setting alike
        for key, run in settings.items():
            with OtherLoad() as load:
                result = run()
            if key not in best or result[0] > best[key][0][0]:
                best[key] = (result, load.cores)
    pool.close()
    report(name, system.n_atoms, len(x), best, models, list(engines))


def report(name: str, atoms: int, n: int, best: dict, models: dict, workers: list) -> None:
    bare, bare2 = best["bare x1"][0][0], best["bare x2"][0][0]
    print(f"{name}: {atoms} atoms, OpenMM {choose_platform(atoms)}, {n} conformations per call")
    line = "  {:24s} {:8.0f} evals/s  ({})  [other {:.2f} cores]"
    print(line.format("bare OpenMM loop x1", bare, "1 process", best["bare x1"][1]))
    note = f"{bare2 / bare:.2f} x 1 process: the ceiling of 2 workers"
    print(line.format("bare OpenMM loop x2", bare2, note, best["bare x2"][1]))
    rate, other = best["in-process"][0][0], best["in-process"][1]
    print(line.format("arbg in-process", rate, f"{rate / bare:.2f} x bare", other))
    for w in workers:
        (rate, busy, cpu), other = best[w]
        note = f"{rate / (w * bare):.2f} x bare per worker"
        if w > 1 and 1 in workers:
            one = best[1][0][0]
            note += f", {rate / one:.2f} x 1 worker, {rate / bare2:.2f} x bare x2"
        note += f"; busy {busy / w:.0%}, cpu {cpu:.0%}; {models[w].n_tasks} tasks"
        print(line.format(f"dask {w} worker(s)", rate, note, other))


def quiet_dask_logs() -> None:
    """Only warnings from distributed's loggers (its INFO lines at cluster start and close)."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("distributed"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--systems", nargs="+", default=["aldp", "chignolin"])
    p.add_argument("--n", type=int, default=20000, help="conformations per timing (/10 >100 atoms)")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    engines = {w: local_cluster(w) for w in args.workers}
    quiet_dask_logs()
    try:
        for name in args.systems:
            bench_system(name, args.n, args.rounds, engines)
    finally:
        for engine in engines.values():
            engine.close()
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
