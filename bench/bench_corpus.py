"""Corpus MD throughput (ns/h) in-process and on a LocalCluster of 1 and 2 Dask workers.

Usage: python bench/bench_corpus.py [--sequences AA,GA,GG,AG] [--ns 0.1] [--rounds 2]

Runs the same small corpus (fast-implicit, 1 fs, 5 ps warm-up) into a fresh temporary
directory per setting and prints ns of production MD per wall-clock hour over the whole job
(builds, minimisation, warm-up, consolidation and the LocalCluster's start-up included; the
start-up is also shown apart), the ratio to the in-process run per worker and the speed-up over
one Dask worker, and checks that every setting gave the same frames.

``1 process`` is ``arbg corpus`` without Dask: the corpus run in-process, in a fresh process
(arbg imported before the clock starts, no build or force field cached from an earlier round).
``2 processes`` runs that in two plain processes at once (half the sequences each, started
together): what two cores of this machine give right now, the ceiling of 2 workers. The
settings are run in interleaved rounds (best kept); ``other`` is the CPU (cores) used by
processes outside this benchmark meanwhile (0 on a quiet machine).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from bench_energy import OtherLoad, quiet_dask_logs  # bench/ is on sys.path when this runs

from arbg.cluster import local_cluster
from arbg.data.corpora import CorpusConfig, run_corpus
from arbg.data.sequences import parse_sequences


def run(out: Path, seqs: list[str], cfg: CorpusConfig, workers: int) -> tuple:
    """(ns/h, cluster start-up s, other load) of one corpus run on a new LocalCluster."""
    with OtherLoad() as load:
        t0 = time.perf_counter()
        with local_cluster(workers) as engine:
            start = time.perf_counter() - t0
            quiet_dask_logs()
            m = run_corpus(out, seqs, cfg, engine=engine, progress=False)
        wall = time.perf_counter() - t0
    assert m["totals"]["done"] == len(seqs), m["totals"]
    return m["totals"]["ns_done"] / wall * 3600.0, start, load.cores


_BARRIER: list = []


def _part_init(barrier) -> None:
    import arbg.data.corpora  # noqa: F401  (imported before the clock starts, as here)

    _BARRIER.append(barrier)


def _part_run(out: str, seqs: list[str], cfg: dict) -> tuple[float, float, float]:
    _BARRIER[0].wait(timeout=120)
    t0 = time.time()
    m = run_corpus(out, seqs, CorpusConfig.from_dict(cfg), progress=False)
    return t0, time.time(), m["totals"]["ns_done"]


def run_processes(out: Path, seqs: list[str], cfg: CorpusConfig, k: int) -> tuple:
    """(ns/h, 0, other load) of `k` in-process corpora in `k` new processes at once."""
    ctx = mp.get_context("spawn")
    parts = [seqs[i::k] for i in range(k)]
    with ProcessPoolExecutor(
        k, mp_context=ctx, initializer=_part_init, initargs=(ctx.Barrier(k),)
    ) as pool:
        pool.submit(time.sleep, 0).result()  # processes up
        with OtherLoad() as load:
            futures = [
                pool.submit(_part_run, str(out / f"part{i}"), p, cfg.to_dict())
                for i, p in enumerate(parts)
            ]
            runs = [f.result() for f in futures]
    wall = max(r[1] for r in runs) - min(r[0] for r in runs)
    return sum(r[2] for r in runs) / wall * 3600.0, 0.0, load.cores


def frames(root: Path, seq: str) -> np.ndarray:
    """The frames of `seq` in the corpus at `root` (or in one of its ``part*`` corpora)."""
    for d in [root, *sorted(root.glob("part*"))]:
        if (d / "sequences" / f"{seq}.npz").exists():
            return np.load(d / "sequences" / f"{seq}.npz")["positions"]
    raise FileNotFoundError(f"{seq} not in {root}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", default="AA,GA,GG,AG")
    p.add_argument("--ns", type=float, default=0.1, help="production ns per sequence")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    seqs = parse_sequences(args.sequences)
    cfg = CorpusConfig(ns=args.ns, fractions=(1.0, 0.0, 0.0), warmup_ps=5.0, chunk_frames=50)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    print(f"corpus of {len(seqs)} sequences x {args.ns} ns")
    keys = ["1 process", "2 processes", *args.workers]
    best: dict = {}
    with tempfile.TemporaryDirectory(prefix="arbg-bench-corpus-") as tmp:
        for r in range(args.rounds):  # interleaved: the machine's load hits every setting alike
            for key in keys:
                out = Path(tmp) / f"{key}-{r}".replace(" ", "_")
                if isinstance(key, str):
                    result = run_processes(out, seqs, cfg, int(key[0]))
                else:
                    result = run(out, seqs, cfg, key)
                if key not in best or result[0] > best[key][0]:
                    best[key] = result
        report(best, args.workers)
        ref = Path(tmp) / "1_process-0"
        for s in seqs:
            for key in keys[1:]:
                out = Path(tmp) / f"{key}-0".replace(" ", "_")
                np.testing.assert_array_equal(frames(out, s), frames(ref, s))
        print("frames identical in every setting")
    print(f"load average {os.getloadavg()}")


def report(best: dict, workers: list[int]) -> None:
    base, _, other = best["1 process"]
    print(f"  1 process           {base:8.2f} ns/h  (no Dask)  [other {other:.2f} cores]")
    two, _, other = best["2 processes"]
    print(
        f"  2 processes         {two:8.2f} ns/h  ({two / base:.2f} x 1 process: the ceiling of"
        f" 2 workers)  [other {other:.2f} cores]"
    )
    for w in workers:
        rate, start, other = best[w]
        note = f"{rate / (w * base):.2f} x 1 process per worker"
        if w > 1 and 1 in workers:
            note += f", {rate / best[1][0]:.2f} x 1 worker, {rate / two:.2f} x 2 processes"
        print(
            f"  dask {w} worker(s)    {rate:8.2f} ns/h  ({note}; cluster start {start:.1f} s)"
            f"  [other {other:.2f} cores]"
        )


if __name__ == "__main__":
    main()
