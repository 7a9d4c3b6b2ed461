"""Reduced-energy throughput: a bare OpenMM loop against arbg in-process and on Dask workers.

Usage: python bench/bench_energy.py [--systems aldp chignolin] [--n 20000] [--rounds 3]

For each system: evaluations/s of a bare OpenMM loop (one Context, ``setPositions`` +
``getState(getEnergy=True)``, same platform, one thread), of :class:`OpenMMEnergy` in this
process (no Dask, ``--workers 1``'s default) and on LocalClusters of 1 and 2 single-threaded
worker processes (loopback). The settings are timed in interleaved rounds and the best round
of each is kept, so that a shared machine's load hits them alike. ``per worker`` is the Dask
rate / (workers x bare rate), the share of a bare loop each worker delivers (goal >= 0.8);
``x 1 worker`` the speed-up of 2 workers (goal >= 1.7 on a quiet machine); ``busy`` the share
of the workers' wall time spent inside the energy loop of a task (the rest is Dask overhead or
waiting). Prints the load average beside the figures.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from arbg.chem.energy import OpenMMEnergy, choose_platform, make_context
from arbg.chem.systems import build_system
from arbg.cluster import local_cluster


def bare_loop(context, x: np.ndarray) -> float:
    """Evaluations/s of the plain OpenMM loop a user would write."""
    from openmm import unit

    kj = unit.kilojoule_per_mole
    t0 = time.perf_counter()
    for xi in x:
        context.setPositions(xi)
        context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(kj)
    return len(x) / (time.perf_counter() - t0)


def timed(energy: OpenMMEnergy, x: np.ndarray) -> tuple[float, float]:
    """(evaluations/s, seconds inside tasks) of one call."""
    before = energy.task_seconds
    t0 = time.perf_counter()
    u = energy(x)
    wall = time.perf_counter() - t0
    assert np.isfinite(u).all()
    return len(x) / wall, (energy.task_seconds - before) / wall


def bench_system(name: str, n: int, rounds: int, engines: dict) -> None:
    system = build_system(name)
    n = n if system.n_atoms <= 100 else max(n // 10, 200)
    rng = np.random.default_rng(0)
    x = system.positions[None] + rng.normal(scale=0.002, size=(n, system.n_atoms, 3))
    omm = system.create_openmm_system()
    context = make_context(omm)
    models = {"in-process": OpenMMEnergy(omm, system.kT)}
    for w, engine in engines.items():
        models[w] = OpenMMEnergy(omm, system.kT, engine=engine)
        models[w](x[: n // 4])  # Contexts built on the workers, time per evaluation measured
    best: dict = {"bare": 0.0, **{k: (0.0, 0.0) for k in models}}
    for _ in range(rounds):  # interleaved: the machine's load hits every setting alike
        best["bare"] = max(best["bare"], bare_loop(context, x))
        for key, model in models.items():
            best[key] = max(best[key], timed(model, x))
    bare = best["bare"]
    head = f"{name:10s} atoms={system.n_atoms:4d} {choose_platform(system.n_atoms):9s} n={n:5d}"
    print(f"{head}  bare OpenMM loop {bare:8.0f} evals/s")
    rate = best["in-process"][0]
    print(f"{head}  in-process       {rate:8.0f} evals/s  ({rate / bare:.2f} x bare)")
    for w in engines:
        rate, busy = best[w]
        extra = f", {rate / best[1][0]:.2f} x 1 worker" if w > 1 and 1 in engines else ""
        print(
            f"{head}  dask {w} worker(s) {rate:8.0f} evals/s  ({rate / (w * bare):.2f} x bare "
            f"per worker{extra}; busy {busy / w:.0%}; {models[w].n_tasks} tasks in all)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--systems", nargs="+", default=["aldp", "chignolin"])
    p.add_argument("--n", type=int, default=20000, help="conformations per timing (/10 >100 atoms)")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    engines = {w: local_cluster(w) for w in args.workers}
    try:
        for name in args.systems:
            bench_system(name, args.n, args.rounds, engines)
    finally:
        for engine in engines.values():
            engine.close()
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
