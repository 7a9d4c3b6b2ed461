"""Training throughput (tokens/s) of the presets, and on the CPU against a plain PyTorch
transformer of the same size.

aldp-sized inputs: 22 atoms -> 60 tokens per frame (gauge frame), 4096 bins. Runs warm-up steps,
then times ``--steps`` optimizer steps of :class:`arbg.train.trainer.Trainer` (Muon + AdamW,
grad clipping; fp32 on the CPU, fp32 and bf16 autocast on CUDA). ``--plain`` also times a plain
PyTorch transformer of the same width, depth, heads, parameter count, sequence length and bins
(``nn.TransformerEncoder``, pre-norm, causal mask, learned positions, ``F.cross_entropy``), fp32,
same batch and threads, trained with the *same* optimizer as the arbg step it is compared with
(:func:`arbg.train.optim.build_optimizers` with the trainer's config: AdamW, or Muon for the 2-D
block matrices + AdamW for the rest) and the same grad clipping. Interleaved rounds, best of each
and median of the per-round ratios, in wall seconds (``--clock cpu``: CPU seconds of this process,
for a shared machine): issue 14 asks the arbg step to be at least as fast on the CPU
(``arbg/plain`` >= 1 for each optimizer); ``vs plain AdamW`` puts arbg's default Muon step next
to a plain AdamW one (Muon's Newton-Schulz iterations cost ~20% more at batch 64 on the CPU).

Usage: python bench/bench_train.py [--threads 1 2] [--steps 5] [--batch 64] [--presets tiny small]
[--plain] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from arbg.chem.systems import build_system
from arbg.data.datasets import Dataset
from arbg.nn.model import ModelConfig
from arbg.runtime import tune_malloc
from arbg.train.config import TrainConfig
from arbg.train.optim import build_optimizers
from arbg.train.trainer import Trainer


def aldp_like_dataset(n_frames: int = 512) -> Dataset:
    system = build_system("aldp", minimize=False)
    rng = np.random.default_rng(0)
    pos = system.positions[None] + 0.02 * rng.standard_normal((n_frames, system.n_atoms, 3))
    return Dataset(
        pos.astype(np.float32),
        system,
        {"train": [0, n_frames - 64], "val": [n_frames - 64, n_frames]},
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_steps(
    step, device: str, steps: int, warmup: int, repeats: int = 3, clock=time.perf_counter
) -> float:
    """Best-of-``repeats`` mean seconds per step over ``steps`` steps (after ``warmup``)."""
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = clock()
        for _ in range(steps):
            step()
        _sync(device)
        best = min(best, (clock() - t0) / steps)
    return best


def arbg_trainer(
    preset: str, device: str, bf16: bool, batch: int, out: str, optimizer: str = "muon"
) -> Trainer:
    cfg = TrainConfig(
        optimizer=optimizer,
        preset=preset,
        n_bins=4096,
        steps=10_000,
        batch_size=batch,
        device=device,
        bf16=bf16,
        eval_every=0,
        eval_frames=16,
        checkpoint_every=0,
    )
    return Trainer(aldp_like_dataset(), out, cfg, progress=False)


def _report(tr: Trainer, preset: str, device: str, bf16: bool, batch: int, dt: float) -> float:
    tps = batch * tr.D / dt
    mfu = tps * tr.flops_per_token / tr.peak_flops if tr.peak_flops else float("nan")
    print(
        f"arbg   {preset:6s} {device:5s} bf16={int(bf16)} "
        f"params={tr.model.num_params() / 1e6:5.2f}M batch={batch} tokens/step={batch * tr.D} "
        f"{dt * 1e3:8.1f} ms/step {tps:10.0f} tokens/s  MFU {mfu:.3f}",
        flush=True,
    )
    return tps


def bench(preset: str, device: str, bf16: bool, steps: int, warmup: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        tr = arbg_trainer(preset, device, bf16, batch, out)
        dt = _time_steps(tr.train_step, device, steps, warmup)
    return _report(tr, preset, device, bf16, batch, dt)


class PlainTransformer(nn.Module):
    """``nn.TransformerEncoder`` LM (pre-norm, causal) with arbg's width, depth, heads and bins;
    the FFN width ``3/2`` of the SwiGLU hidden width gives the same parameter count."""

    def __init__(self, cfg: ModelConfig, T: int) -> None:
        super().__init__()
        C = cfg.n_embd
        self.emb = nn.Embedding(cfg.n_bins + 1, C)
        self.pos = nn.Embedding(T, C)
        layer = nn.TransformerEncoderLayer(
            C,
            cfg.n_head,
            dim_feedforward=3 * int(cfg.mlp_hidden) // 2,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
            bias=False,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(C, bias=False)
        self.head = nn.Linear(C, cfg.n_bins, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T))

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        x = self.emb(tokens) + self.pos.weight[:T]
        x = self.blocks(x, mask=self.mask, is_causal=True)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def plain_step(preset: str, batch: int, T: int, cfg: TrainConfig):
    """(step function, parameter count) of :class:`PlainTransformer` with the optimizers and the
    gradient clipping of the trainer config ``cfg``."""
    mcfg = ModelConfig.preset(preset, n_bins=4096)
    torch.manual_seed(0)
    model = PlainTransformer(mcfg, T)
    opts = build_optimizers(model, cfg)  # model.blocks: Muon for their matrices with "muon"
    g = torch.Generator().manual_seed(0)
    bins = torch.randint(0, mcfg.n_bins, (512, T), generator=g)

    def step() -> None:
        pick = torch.randint(len(bins), (batch,), generator=g)
        b = bins[pick]
        tokens = torch.cat([torch.full_like(b[:, :1], mcfg.n_bins), b[:, :-1]], dim=1)
        loss = model(tokens, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def _median_ratio(plain: list[float], arbg: list[float]) -> float:
    """Median over rounds of plain / arbg seconds per step (each round times both back to back,
    so a slow spell of the machine falls on both)."""
    return float(np.median(np.asarray(plain) / np.asarray(arbg)))


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def compare_plain(
    preset: str, steps: int, warmup: int, batch: int, rounds: int = 8, clock: str = "wall"
) -> None:
    """arbg vs plain on the CPU, each with AdamW and with Muon (+ AdamW).

    Interleaved rounds, the best of each and the median of the per-round ratios. ``clock``:
    ``wall`` (an idle machine: the speed a user sees) or ``cpu``, the CPU seconds of this process
    (a shared machine: other processes' load does not count, but with more than one thread the
    OpenMP threads' spin-waiting between parallel regions does, which charges a model of many
    small kernels for time no one waited).
    """
    opts = ("adamw", "muon")
    with tempfile.TemporaryDirectory() as out:
        trs = {o: arbg_trainer(preset, "cpu", False, batch, f"{out}/{o}", o) for o in opts}
        D = trs["muon"].D  # same tokens per frame
        plains = {o: plain_step(preset, batch, D, trs[o].cfg) for o in opts}
        fns = {f"arbg {o}": trs[o].train_step for o in opts}
        fns.update({f"plain {o}": plains[o][0] for o in opts})
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                times[name].append(_time_steps(fn, "cpu", steps, warmup, 1, CLOCK[clock]))
            warmup = 0
        best = {name: min(t) for name, t in times.items()}
    n_plain = plains["adamw"][1]
    for o in opts:
        tr, a, p = trs[o], best[f"arbg {o}"], best[f"plain {o}"]
        print(
            f"plain  {preset:6s} cpu   {o:5s} params={n_plain / 1e6:5.2f}M batch={batch} "
            f"tokens/step={batch * D} {p * 1e3:8.1f} ms/step {batch * D / p:10.0f} tokens/s\n"
            f"arbg   {preset:6s} cpu   {o:5s} params={tr.model.num_params() / 1e6:5.2f}M "
            f"{a * 1e3:8.1f} ms/step {batch * D / a:10.0f} tokens/s  arbg/plain = {p / a:.2f} "
            f"(median over rounds {_median_ratio(times[f'plain {o}'], times[f'arbg {o}']):.2f})",
            flush=True,
        )
    print(f"arbg muon vs plain adamw: {best['plain adamw'] / best['arbg muon']:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--clock", default="wall", choices=sorted(CLOCK), help="--plain: wall or CPU time"
    )
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--plain", action="store_true", help="compare with a plain transformer")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU runs")
    ap.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (the arbg command tunes them)",
    )
    args = ap.parse_args()
    tuned = False if args.no_malloc_tuning else tune_malloc()
    print(f"malloc thresholds tuned as by the arbg command: {tuned}")
    print(f"torch {torch.__version__}")
    if not args.no_cpu:
        # ascending: after set_num_threads(2), a later set_num_threads(1) timed plain's
        # 1-thread step at 334 ms against 435 ms in a fresh process (some kernels kept 2 threads)
        for threads in sorted(args.threads):
            torch.set_num_threads(threads)
            print(f"cpu: {threads} thread(s)")
            for p in args.presets:
                if args.plain:
                    compare_plain(p, args.steps, args.warmup, args.batch, clock=args.clock)
                else:
                    bench(p, "cpu", False, args.steps, args.warmup, args.batch)
    if torch.cuda.is_available():
        print(f"cuda: {torch.cuda.get_device_name()}")
        for p in args.presets:
            for bf16 in (False, True):
                bench(p, "cuda", bf16, max(args.steps, 20), 5, args.batch)


if __name__ == "__main__":
    main()
