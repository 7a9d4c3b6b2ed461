"""Train aldp on a GPU inside a fixed budget (bf16, compiled step): the device check of issue 25.

Three steps; only the middle one needs the GPU, and it needs only torch and numpy (the device
image has no OpenMM):

1. here, with OpenMM: ``python bench/gpu_train.py prepare data/aldp-bias-train data/aldp-bias-s14
   --bond-offsets --to .gpu/aldp`` fits the standardization and binning exactly as ``arbg
   train`` does (gauge frame, default bins; several runs joined; ``--bond-offsets`` and
   ``--local-frames`` as in arbg train, rotor relabelling is not done on the device), encodes
   the train and val frames to bins and writes ``aldp.npz`` (bins, token features, bin floor)
   and ``aldp.json`` (binning, standardization, system name);
2. on the device: ``PYTHONPATH=src python bench/gpu_train.py train .gpu/aldp --minutes 8
   --out "$OUT"`` times a few steps, sizes a cosine schedule to the budget, trains (bf16
   autocast, float32 master weights, ``torch.compile``, chunked cross-entropy, Muon + AdamW,
   EMA), evaluates the val NLL along the way and writes ``model.safetensors`` (the EMA or the
   raw weights, whichever has the lower final val NLL) and ``gpu_train.json`` (the learning
   curve: step, seconds, train loss, val NLL; throughput; the model config);
3. here again: ``python bench/gpu_train.py package OUT --to CKPT`` makes it an arbg
   checkpoint (the system rebuilt from its preset, checksums), which ``arbg sample``
   loads on the CPU.

``--quick`` (train): a CPU smoke test of the code path (tiny preset, a 20-second budget, no
compile), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def prepare(
    data: list[str],
    to: Path,
    n_val: int = 2000,
    bond_offsets: bool = False,
    local_frames: bool = False,
    gauge: str = "central",
) -> None:
    """Encode a dataset (one run, or several joined as ``arbg train RUN1 RUN2`` does) as the
    trainer does, with bond offsets and local frames if asked (``arbg train --bond-offsets
    --local-frames``; needs OpenMM)."""
    if local_frames and not bond_offsets:
        raise SystemExit("prepare: --local-frames needs --bond-offsets")
    from arbg.data.datasets import load_datasets
    from arbg.nn.conditioning import system_features
    from arbg.nn.coordinates import centre_frames, default_n_bins, fit_binning, fit_standardization

    ds = load_datasets(data)
    system = ds.system
    train = centre_frames(np.asarray(ds.split("train"), dtype=np.float64))
    val = centre_frames(np.asarray(ds.split("val"), dtype=np.float64))[:n_val]
    atoms = system.gauge_atoms_at(gauge)
    parents = system.bond_parents(atoms) if bond_offsets else None
    refs = system.frame_refs(atoms) if local_frames else None
    std = fit_standardization(
        train, frame="gauge", gauge_atoms=atoms, parents=parents, frame_refs=refs
    )
    binning = fit_binning(
        std.forward(train), default_n_bins(system.n_atoms), system.n_atoms, standardization=std
    )
    feats = system_features(system, std)
    to.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        to.with_suffix(".npz"),
        train_bins=binning.encode(std.forward(train))[0].astype(np.int16),
        val_bins=binning.encode(std.forward(val))[0].astype(np.int16),
        floor=np.asarray(binning.token_floor(std), dtype=np.int64),
        **{f"feat_{k}": v.numpy() for k, v in feats.tensors().items()},
    )
    meta = {
        "system": system.name,
        "n_atoms": int(system.n_atoms),
        "binning": binning.to_dict(),
        "standardization": std.to_dict(),
        "data": [str(Path(d).resolve()) for d in data],
    }
    to.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {to.with_suffix('.npz')} ({len(train)} train, {len(val)} val frames)")


def _model(prep: dict, preset: str, device: str):
    from arbg.nn.model import ARBG, ModelConfig, TokenFeatures

    n_bins = int(prep["meta"]["binning"]["n_bins"])
    cfg = ModelConfig.preset(
        preset, n_bins, n_atom_types=88, n_residue_types=29, max_atoms=max(256, prep["n_atoms"])
    )
    z = prep["npz"]
    feats = TokenFeatures(
        **{
            k: torch.as_tensor(z[f"feat_{k}"]).long()
            for k in ("axis", "atom_index", "atom_type", "residue_type", "residue_index")
        }  # noqa: E501
    )
    model = ARBG(cfg, default_feats=feats)
    model.set_bin_floor(torch.as_tensor(z["floor"]))
    return model.to(device)


def train(prep_path: Path, out: Path, minutes: float, preset: str, batch: int, quick: bool) -> None:
    """Train within ``minutes`` (the schedule sized to the measured step time)."""
    from arbg.train.optim import build_optimizers, model_flops_per_token, peak_flops

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    z = np.load(prep_path.with_suffix(".npz"))
    meta = json.loads(prep_path.with_suffix(".json").read_text())
    prep = {"npz": z, "meta": meta, "n_atoms": meta["n_atoms"]}
    torch.manual_seed(0)
    model = _model(prep, preset, dev)
    model.chunked_ce = dev == "cuda"
    train_bins = torch.as_tensor(z["train_bins"].astype(np.int64), device=dev)
    val_bins = torch.as_tensor(z["val_bins"].astype(np.int64), device=dev)
    opt_cfg = SimpleNamespace(
        optimizer="muon", lr_adamw=2e-3, lr_muon=2e-2, momentum_muon=0.95, ns_steps=5,
        betas=(0.9, 0.999), weight_decay=0.01,
    )  # fmt: skip
    opts = build_optimizers(model, opt_cfg)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fwd = model if quick or dev != "cuda" else torch.compile(model)
    bf16 = dev == "cuda"
    g = torch.Generator(device=dev).manual_seed(1)

    def step(lr_scale: float) -> float:
        idx = torch.randint(0, len(train_bins), (batch,), device=dev, generator=g)
        b = train_bins[idx]
        with torch.autocast(dev, torch.bfloat16, enabled=bf16):
            _, loss = fwd(model.shift_right(b), targets=b, logits=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            for grp in o.param_groups:
                grp["lr"] = grp["base_lr"] * lr_scale
            o.step()
            o.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def val_nll(state: dict | None = None) -> float:
        saved = None
        if state is not None:
            saved = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(state)
        model.eval()
        tot, n = 0.0, 0
        for s in range(0, len(val_bins), 250):
            b = val_bins[s : s + 250]
            with torch.autocast(dev, torch.bfloat16, enabled=bf16):
                _, loss = model(model.shift_right(b), targets=b, logits=False)
            tot, n = tot + float(loss) * len(b), n + len(b)
        model.train()
        if saved is not None:
            model.load_state_dict(saved)
        return tot / n

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    # probe: compile and warm up, then time steps at the peak rate of the warm-up
    t0 = time.perf_counter()
    for _ in range(3):
        step(0.1)
    sync()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_probe = 5 if quick else 20
    for _ in range(n_probe):
        step(0.1)
    sync()
    s_per_step = (time.perf_counter() - t0) / n_probe
    budget = 60 * minutes - t_compile
    steps = max(20, int(0.9 * budget / s_per_step))  # 10 % for the evaluations
    warm = max(1, steps // 20)
    print(f"{dev}: {s_per_step * 1e3:.1f} ms/step (batch {batch}), compile {t_compile:.0f} s; "
          f"{steps} steps in the budget", flush=True)  # fmt: skip
    curve, t_start = [], time.perf_counter()
    eval_every = max(10, steps // 12)
    for i in range(steps):
        frac = (
            (i + 1) / warm
            if i < warm
            else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))
        )
        loss = step(frac)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(0.999).add_(v.detach(), alpha=0.001)
                else:
                    ema[k].copy_(v)
        if (i + 1) % eval_every == 0 or i + 1 == steps:
            sync()
            rec = {"step": i + 1, "s": time.perf_counter() - t_start, "train_loss": loss,
                   "val_nll": val_nll(), "val_nll_ema": val_nll(ema)}  # fmt: skip
            curve.append(rec)
            print(json.dumps(rec), flush=True)
    T = int(train_bins.shape[1])
    tokens_per_s = batch * T / s_per_step
    peak = peak_flops(torch.device(dev))
    fpt = model_flops_per_token(model, T)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    # the weights with the lower final val NLL: the EMA after a long run, the raw ones after a
    # short one (an EMA of 0.999 needs thousands of steps)
    last = curve[-1]
    use_ema = last["val_nll_ema"] <= last["val_nll"]
    weights = ema if use_ema else model.state_dict()
    save_file({k: v.contiguous().cpu() for k, v in weights.items()}, str(out / "model.safetensors"))
    result = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "preset": preset,
        "batch": batch,
        "steps": steps,
        "ms_per_step": 1e3 * s_per_step,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * fpt / peak if peak else None,
        "compile_s": t_compile,
        "weights": "ema" if use_ema else "raw",
        "minutes": minutes,
        "quick": quick,
        "curve": curve,
        "model_config": model.config.to_dict(),
        "prep": meta,
    }
    (out / "gpu_train.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'model.safetensors'} and {out / 'gpu_train.json'}")


def package(run: Path, to: Path) -> None:
    """An arbg checkpoint from a device run (needs OpenMM: the system is rebuilt)."""
    from safetensors.torch import load_file

    from arbg.chem.systems import build_system
    from arbg.nn.conditioning import system_features
    from arbg.nn.coordinates import Binning, Standardization
    from arbg.nn.model import ARBG, ModelConfig
    from arbg.train.checkpoints import save_checkpoint

    res = json.loads((run / "gpu_train.json").read_text())
    meta = res["prep"]
    system = build_system(meta["system"])
    std = Standardization.from_dict(meta["standardization"])
    binning = Binning.from_dict(meta["binning"])
    model = ARBG(ModelConfig.from_dict(res["model_config"]), system_features(system, std))
    state = load_file(str(run / "model.safetensors"))
    model.load_state_dict(state, strict=False)
    model.set_bin_floor(binning.token_floor(std))
    last = res["curve"][-1]
    nll = last["val_nll_ema"] if res["weights"] == "ema" else last["val_nll"]
    training = {"step": res["steps"], "val_nll": nll, "gpu_train": res}
    save_checkpoint(to, model, binning, std, system, training)
    print(f"wrote checkpoint {to}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("data", nargs="+", help="one arbg md run, or several of one system")
    p.add_argument("--to", required=True, type=Path)
    p.add_argument("--bond-offsets", action="store_true", help="as arbg train --bond-offsets")
    p.add_argument("--local-frames", action="store_true", help="as arbg train --local-frames")
    p.add_argument("--gauge", choices=("central", "start"), default="central", help="as arbg train")
    t = sub.add_parser("train")
    t.add_argument("prep", type=Path)
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--minutes", type=float, default=8.0)
    t.add_argument("--preset", default="small")
    t.add_argument("--batch", type=int, default=512)
    t.add_argument("--quick", action="store_true", help="CPU smoke test: tiny, 20 s")
    k = sub.add_parser("package")
    k.add_argument("run", type=Path)
    k.add_argument("--to", required=True, type=Path)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(
            a.data, a.to, bond_offsets=a.bond_offsets, local_frames=a.local_frames, gauge=a.gauge
        )
    elif a.cmd == "train":
        if a.quick:
            a.preset, a.minutes, a.batch = "tiny", 1 / 3, 32
        train(a.prep, a.out, a.minutes, a.preset, a.batch, a.quick)
    else:
        package(a.run, a.to)


if __name__ == "__main__":
    main()
