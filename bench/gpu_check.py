"""One device check of issue 14: every GPU figure in one run (target: under 6 minutes, one GPU).

What it measures (random weights: speed does not depend on them), bf16 matrix work unless said:

* samplers: tiny / small (4096 bins) and large (8192 bins) on aldp, the transferable large model
  (8192 bins, ~103M parameters with its conditioning encoder) on GA / GAVL / GAVLIFPW (2 / 4 / 8
  residues), each as samples/s *with exact log q* (:class:`arbg.nn.decoder.Decoder` on the
  device: static KV cache, CUDA graphs, inverse-CDF draws, log pi from the drawn logits; then
  the float64 de-quantization and the log q offset on the host, as ``generate`` does) and its
  teacher-forced floor at the same batch (``model.log_prob`` under bf16 autocast, the time of
  one likelihood pass over the same tokens); ``fraction`` = sampler / floor;
* ``auto`` batch (:func:`arbg.nn.decoder.auto_batch_size` of the free memory) for the
  transferable large model at 8 residues;
* training tokens/s and MFU (bf16 autocast, fp32 master weights, ``torch.compile``, chunked
  cross-entropy, Muon + AdamW) for small and large at batch 256 on aldp tokens;
* agreement: the float32 decoder with CUDA graphs vs without (same seed: share of identical
  sequences, max |delta log pi| on them), the graph run's log pi against a float32
  teacher-forced pass, and a bf16 graph run's log pi against a teacher-forced bf16 pass over its
  own bins.

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (a table; also printed).

Running it on the device machine (PyTorch, no OpenMM / pdbfixer / mdtraj)
-------------------------------------------------------------------------
The check needs only torch and numpy: it imports ``arbg.nn`` (and ``arbg.train.optim``), never
OpenMM. The atom layouts of the systems (atom / residue types, residue blocks, gauge atoms) come
from ``bench/gpu_check_systems.json``, written once on a machine with OpenMM by
``python bench/gpu_check.py --write-systems`` (committed next to this script), so::

    PYTHONPATH=src python bench/gpu_check.py --out "$OUT"

Where the full package is wanted on such a machine (``arbg sample`` with energies, the tests),
carry the wheels: on a machine with internet, ``pip download openmm pdbfixer mdtraj scipy
--only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 -d wheels/`` (pdbfixer
is a pure-Python sdist on PyPI: ``pip wheel pdbfixer --no-deps -w wheels/``), carry ``wheels/``
in the working tree (or as a carried path), and ``pip install --no-index --find-links wheels
openmm pdbfixer mdtraj scipy`` there before running.

Options: ``--quick`` (smaller batches, for a CPU smoke test), ``--budget-s`` (sections left
when the budget is spent are recorded as skipped), ``--no-compile``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from arbg.nn.conditioning import BoundModel, ConditioningConfig, TransferableARBG, encode_system
from arbg.nn.coordinates import Binning, Standardization
from arbg.nn.decoder import Decoder, auto_batch_size
from arbg.nn.model import ARBG, ModelConfig, token_features_for_system
from arbg.train.optim import build_optimizers, model_flops_per_token, peak_flops

HERE = Path(__file__).resolve().parent
LAYOUTS = HERE / "gpu_check_systems.json"
PEPTIDES = {"GA": 2, "GAVL": 4, "GAVLIFPW": 8}
N_ATOM_TYPES, N_RESIDUE_TYPES = 88, 29  # arbg.chem.residues vocabularies (checked on write)
STD_NM = 0.3
#: model overrides of ``--quick`` (a CPU smoke test of the code paths, not a measurement)
OVERRIDES: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------------
# systems without OpenMM


def write_layouts(path: Path = LAYOUTS) -> None:
    """Atom layouts of aldp and the three peptides (the transferable template); needs OpenMM."""
    from arbg.chem.systems import N_ATOM_TYPES as NA
    from arbg.chem.systems import N_RESIDUE_TYPES as NR
    from arbg.chem.systems import build_system
    from arbg.train.checkpoints import read_config, system_for_sequence

    assert (NA, NR) == (N_ATOM_TYPES, N_RESIDUE_TYPES), (NA, NR)
    ck = HERE.parent / "src" / "arbg" / "assets" / "transferable" / "checkpoint"
    template = read_config(ck)["corpus"]["spec"]
    systems = {"aldp": build_system("aldp", minimize=False)}
    systems.update({s: system_for_sequence(s, template) for s in PEPTIDES})
    out = {}
    for name, s in systems.items():
        out[name] = {
            "n_atoms": int(s.n_atoms),
            "n_residues": int(s.n_residues),
            "atom_type_id": np.asarray(s.atom_type_id).tolist(),
            "residue_type_id": np.asarray(s.residue_type_id).tolist(),
            "residue_index": np.asarray(s.residue_index).tolist(),
            "residue_blocks": [list(map(int, b)) for b in s.residue_blocks],
            "gauge_atoms": list(map(int, s.gauge_atoms)),
        }
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}: " + ", ".join(f"{k} ({v['n_atoms']} atoms)" for k, v in out.items()))


def load_layouts(path: Path = LAYOUTS) -> dict[str, SimpleNamespace]:
    """name -> an object with the attributes :func:`encode_system` and the features read."""
    raw = json.loads(path.read_text())
    out = {}
    for name, d in raw.items():
        ns = SimpleNamespace(
            **{k: np.asarray(v) if isinstance(v, list) else v for k, v in d.items()}
        )
        ns.residue_blocks = [tuple(b) for b in d["residue_blocks"]]
        ns.gauge_atoms = tuple(d["gauge_atoms"])
        ns.name = name
        out[name] = ns
    return out


# --------------------------------------------------------------------------------------------------
# models


def single_model(preset: str, n_bins: int, lay: SimpleNamespace, dev: str) -> tuple[Any, ...]:
    """Random-weight single-system ARBG in the gauge frame: (model, standardization, binning)."""
    std = Standardization(STD_NM, lay.n_atoms, "gauge", lay.gauge_atoms)
    binning = Binning(n_bins, -4.0, 4.0)
    feats = token_features_for_system(
        lay.atom_type_id, lay.residue_type_id, lay.residue_index, coord_index=std.coord_index
    )
    cfg = ModelConfig.preset(
        preset,
        n_bins,
        max_atoms=64,
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
        **OVERRIDES,
    )
    torch.manual_seed(0)
    model = ARBG(cfg, default_feats=feats)
    _perturb(model)
    model.set_bin_floor(binning.token_floor(std))
    return model.to(dev).eval(), std, binning


def transferable_model(lay: SimpleNamespace, dev: str, net: Any = None) -> tuple[Any, ...]:
    """The transferable large model (8192 bins) bound to ``lay``: (bound, std, binning, net)."""
    binning = Binning(8192, -4.0, 4.0)
    if net is None:
        cfg = ModelConfig.preset(
            "large",
            8192,
            max_atoms=160,
            n_atom_types=N_ATOM_TYPES,
            n_residue_types=N_RESIDUE_TYPES,
            **OVERRIDES,
        )
        torch.manual_seed(0)
        net = TransferableARBG(cfg, ConditioningConfig())
        _perturb(net)
        net = net.to(dev).eval()
    enc = encode_system(lay, STD_NM, binning)
    return BoundModel(net, enc).eval(), enc.standardization, binning, net


def _perturb(model: torch.nn.Module) -> None:
    """Non-trivial conditionals (the init is uniform over bins, identity blocks)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))


# --------------------------------------------------------------------------------------------------
# timing


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_sampler(model, std, binning, batch: int, dtype, repeats: int = 2) -> dict[str, Any]:
    """samples/s with exact log q (device decode + host de-quantization and log q offset)."""
    dev = next(model.parameters()).device
    dec = Decoder(model, batch, dtype=dtype)
    g = torch.Generator(device=dev).manual_seed(0)
    g_off = torch.Generator().manual_seed(1)
    t_warm = time.perf_counter()
    dec.run(g)  # captures the graphs
    _sync()
    t_warm = time.perf_counter() - t_warm
    best, bins = math.inf, None
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        bins, log_pi, _ = dec.run(g)
        bins, log_pi = bins.cpu(), log_pi.cpu()  # waits for the device
        z = binning.decode(bins, g_off)
        log_q = log_pi.numpy() - std.n_coords * math.log(binning.width) + std.log_det(z.numpy())
        best = min(best, time.perf_counter() - t0)
    assert np.isfinite(log_q).all()
    return {"batch": batch, "samples_per_s": batch / best, "warmup_s": t_warm, "bins": bins}


@torch.no_grad()
def time_teacher_forced(model, bins: torch.Tensor, dtype, repeats: int = 2) -> float:
    """samples/s of one teacher-forced likelihood pass over ``bins`` (chunked to fit)."""
    dev = next(model.parameters()).device
    T, L = bins.shape[1], model.config.n_bins
    chunk = max(1, min(bins.shape[0], int(8e9 // (T * L * 12))))  # ~8 GB of logits work
    b = bins.to(dev)
    best = math.inf
    for _ in range(repeats + 1):  # first pass: warm-up
        _sync()
        t0 = time.perf_counter()
        for s in range(0, b.shape[0], chunk):
            with torch.autocast(dev.type, torch.bfloat16, enabled=dtype == torch.bfloat16):
                model.log_prob(b[s : s + chunk])
        _sync()
        best = min(best, time.perf_counter() - t0)
    return bins.shape[0] / best


def sampler_row(name: str, model, std, binning, batch: int, dtype) -> dict[str, Any]:
    r = time_sampler(model, std, binning, batch, dtype)
    tf = time_teacher_forced(model, r.pop("bins"), dtype)
    row = {
        "workload": name,
        "tokens": std.n_coords,
        **r,
        "teacher_forced_per_s": tf,
        "fraction_of_floor": r["samples_per_s"] / tf,
    }
    print(
        f"  {name:28s} batch {batch:6d}: {row['samples_per_s']:10.1f} samples/s, floor "
        f"{tf:10.1f}/s ({row['fraction_of_floor']:.0%}), capture {row['warmup_s']:.1f} s",
        flush=True,
    )
    return row


# --------------------------------------------------------------------------------------------------
# agreement


@torch.no_grad()
def agreement(model, dev: str) -> dict[str, Any]:
    """float32 decode with graphs vs without, and vs the teacher-forced pass; bf16 decode log pi
    vs a bf16 teacher-forced pass over its own bins."""
    n = 512
    graphs = dev.startswith("cuda")
    bs, ls, _ = Decoder(model, n, graphs=graphs).run(torch.Generator(device=dev).manual_seed(3))
    be, le, _ = Decoder(model, n, graphs=False).run(torch.Generator(device=dev).manual_seed(3))
    same = (bs == be).all(dim=1)
    d32 = (ls[same] - le[same]).abs().max().item() if same.any() else float("nan")
    tf32 = model.log_prob(bs).cpu()
    b16, l16, _ = Decoder(model, n, dtype=torch.bfloat16).run(
        torch.Generator(device=dev).manual_seed(4)
    )
    with torch.autocast("cuda", torch.bfloat16, enabled=graphs):
        tf16 = model.log_prob(b16).cpu()
    d16 = (l16.cpu() - tf16).abs()
    out = {
        "fp32_graphs_identical_sequences": float(same.float().mean()),
        "fp32_graphs_max_abs_dlog_pi": d32,
        "fp32_vs_teacher_forced_max_abs": float((ls.cpu() - tf32).abs().max()),
        "bf16_vs_teacher_forced_mean_abs": float(d16.mean()),
        "bf16_vs_teacher_forced_max_abs": float(d16.max()),
        "mean_abs_log_pi": float(l16.abs().mean()),
    }
    print(f"  agreement: {out}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# training


def train_row(preset: str, lay, dev: str, batch: int, steps: int, compile_: bool) -> dict:
    """tokens/s and MFU of the training step (bf16 autocast, compile, chunked CE, Muon)."""
    model, std, binning = single_model(preset, 4096 if preset != "large" else 8192, lay, dev)
    model.train()
    model.chunked_ce = True
    cfg = SimpleNamespace(
        optimizer="muon",
        lr_adamw=1e-4,
        lr_muon=1e-3,
        momentum_muon=0.95,
        ns_steps=5,
        betas=(0.9, 0.999),
        weight_decay=0.01,
    )
    opts = build_optimizers(model, cfg)
    fwd = torch.compile(model) if compile_ else model
    state = {"fwd": fwd, "compile_error": None}
    T = std.n_coords
    g = torch.Generator(device=dev).manual_seed(0)
    data = torch.randint(0, binning.n_bins, (4096, T), device=dev, generator=g)
    data = torch.maximum(data, model.bin_floor)  # valid targets respect the gauge floors

    def loss_of(bins: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.split(":")[0], torch.bfloat16, enabled=dev.startswith("cuda")):
            return state["fwd"](model.shift_right(bins), None, bins, logits=False)[1]

    def step() -> None:
        bins = data[torch.randint(0, len(data), (batch,), device=dev, generator=g)]
        try:
            loss = loss_of(bins)
        except Exception as err:  # noqa: BLE001  (a compiler failure: measure eagerly)
            if state["fwd"] is model:
                raise
            state["fwd"], state["compile_error"] = model, repr(err)[:300]
            loss = loss_of(bins)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    _sync()
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    dt = (time.perf_counter() - t0) / steps
    tps = batch * T / dt
    fpt = model_flops_per_token(model, T)
    peak = peak_flops(torch.device(dev))
    row = {
        "preset": preset,
        "params": model.num_params(),
        "batch": batch,
        "tokens_per_step": batch * T,
        "ms_per_step": dt * 1e3,
        "tokens_per_s": tps,
        "model_flops_per_token": fpt,
        "mfu": tps * fpt / peak if peak else None,
        "compile": compile_ and state["fwd"] is not model,
        "compile_error": state["compile_error"],
        "warmup_s": t_warm,
    }
    mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
    print(f"  train {preset:6s}: {tps:10.0f} tokens/s, MFU {mfu}, warm-up {t_warm:.1f} s")
    return row


# --------------------------------------------------------------------------------------------------
# main


def _table(res: dict[str, Any]) -> str:
    lines = [
        f"# gpu_check ({res['device']}, torch {res['torch']})",
        "",
        "| workload | batch | samples/s (exact log q) | teacher-forced floor /s | fraction |",
        "|---|---|---|---|---|",
    ]
    for r in res["samplers"]:
        lines.append(
            f"| {r['workload']} | {r['batch']} | {r['samples_per_s']:,.0f} | "
            f"{r['teacher_forced_per_s']:,.0f} | {r['fraction_of_floor']:.0%} |"
        )
    lines += ["", "| training | batch | tokens/s | MFU |", "|---|---|---|---|"]
    for r in res["training"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['preset']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {mfu} |")
    lines += ["", f"agreement: `{json.dumps(res.get('agreement'))}`"]
    lines += [f"skipped: {res['skipped']}", f"wall: {res['wall_s']:.0f} s"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--write-systems", action="store_true", help="write the layouts (OpenMM)")
    ap.add_argument("--quick", action="store_true", help="small batches (CPU smoke test)")
    ap.add_argument("--budget-s", type=float, default=330.0)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.write_systems:
        write_layouts()
        return 0
    t_start = time.perf_counter()
    dev, bf16 = args.device, torch.bfloat16
    lay = load_layouts()
    q = args.quick
    if q:
        OVERRIDES["n_layer"] = 2
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "samplers": [],
        "training": [],
        "skipped": [],
    }

    def over(name: str) -> bool:
        if time.perf_counter() - t_start > args.budget_s:
            res["skipped"].append(name)
            print(f"  (budget spent: {name} skipped)", flush=True)
            return True
        return False

    print(f"gpu_check on {res['device']}", flush=True)
    for preset, n_bins, batches in (
        ("tiny", 4096, [1024, 16384]),
        ("small", 4096, [1024]),
        ("large", 8192, [1024]),
    ):
        model, std, binning = single_model(preset, n_bins, lay["aldp"], dev)
        for b in [16] if q else batches:
            if not over(f"aldp {preset} {b}"):
                res["samplers"].append(
                    sampler_row(f"aldp {preset} ({n_bins} bins)", model, std, binning, b, bf16)
                )
        if preset == "small" and not over("agreement"):
            res["agreement"] = agreement(model, dev)
        del model
    net = None
    for seq, n_res in PEPTIDES.items():
        bound, std, binning, net = transferable_model(lay[seq], dev, net)
        batches = [4] if q else [256, 2048]
        if n_res == 8:
            free = None if dev.startswith("cuda") else 2 << 30
            auto = auto_batch_size(net.config, std.n_coords, dev, bf16, free_bytes=free)
            res["auto_batch_8_residues"] = auto
            batches = batches + [min(auto, 8) if q else auto]
            print(f"  auto batch (8 residues, {std.n_coords} tokens): {auto}", flush=True)
        for b in batches:
            if not over(f"transferable {seq} {b}"):
                name = f"transferable large {seq} ({n_res} res)"
                res["samplers"].append(sampler_row(name, bound, std, binning, b, bf16))
        del bound
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    del net
    for preset in ("small", "large"):
        if not over(f"train {preset}"):
            steps, batch = (2, 16) if q else (20, 256)
            res["training"].append(
                train_row(preset, lay["aldp"], dev, batch, steps, not args.no_compile)
            )
    res["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1) + "\n")
    table = _table(res)
    (out / "gpu_check.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
