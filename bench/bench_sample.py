"""Sampling throughput: the decoder (sampling with exact log q) vs one teacher-forced pass.

For each preset, a model with random weights (speed does not depend on them) is built for ``aldp``
(22 atoms, 63 tokens). Reported per preset:

* ``sampled``: samples/s of :func:`arbg.sampling.sampler.generate` (the one decode loop,
  :class:`arbg.nn.decoder.Decoder`: bins, de-quantization and exact log q);
* ``teacher-forced``: samples/s of one teacher-forced pass (``model.log_prob``) over the same
  tokens, the floor an autoregressive sampler can approach.

``passes`` is the cost of sampling with exact log q in teacher-forced passes (time of
``generate`` / time of one teacher-forced pass); issue 14 bounds it by 2 on the CPU (tiny and
small, batch 256, 1 and 2 threads): ``python bench/bench_sample.py --threads 1 2``.

Usage: ``python bench/bench_sample.py [--presets tiny small] [--batch 256] [--device cuda]
[--threads 1 2]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES, build_system
from arbg.nn.coordinates import fit_binning, fit_standardization
from arbg.nn.model import ARBG, ModelConfig, token_features_for_system
from arbg.runtime import tune_malloc
from arbg.sampling.sampler import generate, teacher_forced_log_pi


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_label(device: str) -> str:
    """The GPU's name, or ``cpu (N threads)``."""
    return (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else (f"cpu ({torch.get_num_threads()} threads)")
    )


#: the clock of :func:`_timed`: wall time, or this process's CPU seconds (``--clock cpu``: on a
#: shared machine other processes' load does not count)
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _timed(fn, device: str, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t0 = _clock()
        out = fn()
        _sync(device)
        best = min(best, _clock() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n-bins", type=int, default=4096)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, nargs="+", default=[None], help="torch CPU threads")
    ap.add_argument("--clock", default="wall", choices=sorted(CLOCK), help="wall or CPU time")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (the arbg command tunes them)",
    )
    args = ap.parse_args()
    tuned = False if args.no_malloc_tuning else tune_malloc()
    print(f"malloc thresholds tuned as by the arbg command: {tuned}")
    global _clock
    _clock = CLOCK[args.clock]

    system = build_system("aldp")
    rng = np.random.default_rng(0)
    frames = system.positions[None] + 0.02 * rng.standard_normal((64, system.n_atoms, 3))
    std = fit_standardization(frames)
    binning = fit_binning(std.forward(frames), n_bins=args.n_bins, n_atoms=system.n_atoms)
    feats = token_features_for_system(
        system.atom_type_id, system.residue_type_id, system.residue_index
    )
    T = std.n_coords
    dev = args.device
    for threads in sorted(args.threads, key=lambda t: t or 0):  # ascending, as bench_train
        if threads:
            torch.set_num_threads(threads)
        name = device_label(dev)
        print(
            f"aldp: {system.n_atoms} atoms, {T} tokens, {args.n_bins} bins, device {name}, "
            f"torch {torch.__version__}, clock {args.clock}"
        )
        print(
            f"{'preset':8s} {'params':>8s} {'batch':>6s} {'sampled/s':>10s} "
            f"{'teacher-forced/s':>17s} {'sampled/TF':>10s} {'passes':>7s}"
        )
        for preset in args.presets:
            _bench_preset(preset, args, feats, binning, std, dev)


def _bench_preset(preset: str, args: argparse.Namespace, feats, binning, std, dev: str) -> None:
    cfg = ModelConfig.preset(
        preset,
        n_bins=args.n_bins,
        max_atoms=64,
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
    )
    torch.manual_seed(0)
    model = ARBG(cfg, default_feats=feats).to(dev).eval()
    b = args.batch

    def run(n: int) -> object:
        return generate(
            model,
            binning,
            std,
            n,
            1.0,
            seed=0,
            chirality="none",
            batch_size=n,
            device=dev,
        )

    run(min(8, b))  # warm-up
    t_c, batch = _timed(lambda: run(b), dev, args.repeats)
    bins = torch.as_tensor(batch.bins)  # type: ignore[attr-defined]
    t_tf, _ = _timed(
        lambda: teacher_forced_log_pi(model, bins, 1.0, batch_size=b), dev, args.repeats
    )
    print(
        f"{preset:8s} {model.num_params() / 1e6:7.2f}M {b:6d} {b / t_c:10.1f} "
        f"{b / t_tf:17.1f} {t_tf / t_c:10.3f} {t_c / t_tf:7.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
