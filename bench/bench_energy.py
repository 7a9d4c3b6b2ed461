"""Reduced-energy throughput (evaluations/s) with 1 and 2 worker processes.

Usage: python bench/bench_energy.py [--systems aldp chignolin] [--n 2000]
Prints one line per (system, workers): evaluations per second and microseconds per evaluation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from arbg.chem.energy import OpenMMEnergy, choose_platform
from arbg.chem.systems import build_system


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--systems", nargs="+", default=["aldp", "chignolin"])
    p.add_argument("--n", type=int, default=2000, help="conformations per timing")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    args = p.parse_args()
    rng = np.random.default_rng(0)
    for name in args.systems:
        system = build_system(name)
        n = args.n if system.n_atoms < 100 else max(args.n // 10, 50)
        x = system.positions[None] + rng.normal(scale=0.002, size=(n, system.n_atoms, 3))
        for workers in args.workers:
            energy = OpenMMEnergy(system.create_openmm_system(), system.kT, n_workers=workers)
            energy(x[: 4 * workers])  # warm-up (starts worker processes)
            t0 = time.perf_counter()
            u = energy(x)
            dt = time.perf_counter() - t0
            energy.close()
            assert np.isfinite(u).all()
            platform = choose_platform(system.n_atoms)
            print(
                f"{name:10s} atoms={system.n_atoms:4d} platform={platform:9s}"
                f" workers={workers}  {n / dt:9.0f} evals/s  {dt / n * 1e6:8.1f} us/eval"
            )


if __name__ == "__main__":
    main()
