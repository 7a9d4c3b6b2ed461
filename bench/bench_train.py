"""Training throughput (tokens/s) of the ``tiny`` and ``small`` presets at batch 64.

aldp-sized inputs: 22 atoms -> 63 tokens per frame, 4096 bins. Runs a few warm-up steps, then
times ``--steps`` optimizer steps (Muon + AdamW, fp32; bf16 autocast is also timed on CUDA).

Usage: python bench/bench_train.py [--threads 1] [--steps 10] [--presets tiny small]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from arbg.chem.systems import build_system
from arbg.data.datasets import Dataset
from arbg.train.trainer import TrainConfig, Trainer


def aldp_like_dataset(n_frames: int = 512) -> Dataset:
    system = build_system("aldp", minimize=False)
    rng = np.random.default_rng(0)
    pos = system.positions[None] + 0.02 * rng.standard_normal((n_frames, system.n_atoms, 3))
    return Dataset(
        pos.astype(np.float32),
        system,
        {"train": [0, n_frames - 64], "val": [n_frames - 64, n_frames]},
    )


def bench(preset: str, device: str, bf16: bool, steps: int, warmup: int, batch: int) -> float:
    import tempfile

    ds = aldp_like_dataset()
    cfg = TrainConfig(
        preset=preset,
        n_bins=4096,
        steps=steps + warmup,
        batch_size=batch,
        device=device,
        bf16=bf16,
        eval_every=0,
        eval_frames=16,
        checkpoint_every=0,
    )
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(ds, out, cfg, progress=False)
        for _ in range(warmup):
            tr.train_step()
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    n_params = tr.model.num_params()
    tps = steps * batch * tr.D / dt
    print(
        f"{preset:6s} {device:5s} bf16={int(bf16)} params={n_params / 1e6:5.2f}M "
        f"batch={batch} tokens/step={batch * tr.D} {dt / steps * 1e3:8.1f} ms/step "
        f"{tps:10.0f} tokens/s",
        flush=True,
    )
    return tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s)")
    if not args.no_cpu:
        for p in args.presets:
            bench(p, "cpu", False, args.steps, args.warmup, args.batch)
    if torch.cuda.is_available():
        print(f"cuda: {torch.cuda.get_device_name()}")
        for p in args.presets:
            for bf16 in (False, True):
                bench(p, "cuda", bf16, max(args.steps, 50), 10, args.batch)


if __name__ == "__main__":
    main()
