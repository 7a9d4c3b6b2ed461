"""Corpus MD throughput (ns/h) in-process and on a LocalCluster of 1 and 2 Dask workers.

Usage: python bench/bench_corpus.py [--sequences AA,GA,GG,AG] [--ns 0.1] [--workers 1 2]

Runs the same small corpus (fast-implicit, 1 fs, 5 ps warm-up) into a fresh temporary
directory per setting and prints ns of production MD per wall-clock hour over the whole job
(builds, minimisation, warm-up, consolidation and Dask start-up included), the ratio to the
in-process run per worker and the speed-up over one Dask worker, and that every setting gave
the same frames. Prints the load average beside it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from arbg.cluster import local_cluster
from arbg.data.corpora import CorpusConfig, parse_sequences, run_corpus


def run(out: Path, seqs: list[str], cfg: CorpusConfig, workers: int | None) -> float:
    """ns/h of one corpus run (workers None: in this process, no Dask)."""
    t0 = time.perf_counter()
    if workers is None:
        m = run_corpus(out, seqs, cfg, progress=False)
    else:
        with local_cluster(workers) as engine:
            m = run_corpus(out, seqs, cfg, engine=engine, progress=False)
    wall = time.perf_counter() - t0
    assert m["totals"]["done"] == len(seqs), m["totals"]
    return m["totals"]["ns_done"] / wall * 3600.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", default="AA,GA,GG,AG")
    p.add_argument("--ns", type=float, default=0.1, help="production ns per sequence")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    args = p.parse_args()
    seqs = parse_sequences(args.sequences)
    cfg = CorpusConfig(ns=args.ns, fractions=(1.0, 0.0, 0.0), warmup_ps=5.0, chunk_frames=50)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    print(f"corpus of {len(seqs)} sequences x {args.ns} ns")
    with tempfile.TemporaryDirectory(prefix="arbg-bench-corpus-") as tmp:
        base = run(Path(tmp) / "local", seqs, cfg, None)
        print(f"in-process          {base:8.2f} ns/h")
        one = None
        for w in args.workers:
            rate = run(Path(tmp) / f"dask{w}", seqs, cfg, w)
            one = rate if w == 1 else one
            extra = f", {rate / one:.2f} x 1 worker" if one and w > 1 else ""
            print(
                f"dask {w} worker(s)    {rate:8.2f} ns/h  "
                f"({rate / (w * base):.2f} x in-process per worker{extra})"
            )
        for s in seqs:
            ref = np.load(Path(tmp) / "local" / "sequences" / f"{s}.npz")["positions"]
            for w in args.workers:
                x = np.load(Path(tmp) / f"dask{w}" / "sequences" / f"{s}.npz")["positions"]
                np.testing.assert_array_equal(x, ref)
        print("frames identical in every setting")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
