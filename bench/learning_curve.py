"""Learning curve of a proposal: what a checkpoint's samples are worth, against its training time.

For each checkpoint given (e.g. snapshots of one training run, or fine-tuned ones) and each of
``--seeds`` proposal seeds: ``arbg sample`` (``--n`` proposals, SNIS with the published 0.2 %
clipping) and ``arbg evaluate`` against ``--reference`` (W2 on ``--n-eval`` resampled
conformations); then per checkpoint the mean +- sd over the seeds of

* the clipped and the unclipped relative Kish ESS, the Pareto k of the raw weights;
* the reweighted E-W2 (kT) and T-W2 (rad), and the MD-vs-MD floor of the reference;
* P(phi > 0) of the first residue from the unclipped weights, beside the reference's value
  (the rare alpha-L basin: a proposal that loses it cannot be reweighted back);

with the training record of the checkpoint (step, val NLL) and its training time in
CPU-minutes (from ``train_log.jsonl`` beside the checkpoint when there is one: the wall clock of
a one-thread run; ``--cpu-minutes`` overrides, e.g. for a fine-tuned checkpoint: ``NAME=MIN``).
Prints a Markdown table and writes ``OUT/learning_curve.json`` and ``OUT/learning_curve.md``.

Usage::

    python bench/learning_curve.py runs/snap-3000 runs/snap-5000 runs/aldp/last \\
        --reference src/arbg/assets/aldp/reference.npz --n 10000 --seeds 0 1 2 --out runs/lc

A mixture directory (`arbg mixture`) is a checkpoint here too (its CPU-minutes from
``--cpu-minutes``). ``--taus 0.9 1.0`` adds a row per sampling temperature (``name@tau0.9``);
log q is that of the tempered proposal, so SNIS stays exact.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from arbg.chem.geometry import dihedrals
from arbg.data.datasets import load_dataset
from arbg.eval.evaluate import EvaluateConfig, evaluate_run
from arbg.experiments.stages import stats
from arbg.files import atomic_write_json, atomic_write_text
from arbg.reweight import normalize_log_weights
from arbg.sampling.config import SampleConfig
from arbg.sampling.runs import run_sampling
from arbg.train.checkpoints import is_mixture, load_checkpoint


def training_minutes(checkpoint: Path, step: int) -> float | None:
    """Wall-clock minutes of training up to ``step`` from ``train_log.jsonl`` of the training
    directory above ``checkpoint`` (invocations of a resumed run added up)."""
    log = checkpoint.parent / "train_log.jsonl"
    if not log.exists():
        return None
    total, last = 0.0, 0.0
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") != "train" or "wall_s" not in rec:
            continue
        w = float(rec["wall_s"])
        if w < last:  # a new invocation (resume): its clock starts again
            total += last
        last = w
        if int(rec["step"]) >= step:
            break
    return (total + last) / 60.0


def p_phi_positive(run: Path, phi_indices: np.ndarray) -> float:
    """P(phi_1 > 0) of a run's samples under their unclipped weights."""
    with np.load(run / "samples.npz") as f:
        x, lw = f["coords"].astype(np.float64), f["log_w_raw"]
    w = np.exp(normalize_log_weights(lw))
    phi = dihedrals(x, phi_indices[:1])[:, 0]
    return float(w[phi > 0].sum())


def fmt(s: dict[str, float], digits: int = 3) -> str:
    return f"{s['mean']:.{digits}g} ± {s['std']:.{digits}g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--n", type=int, default=10_000, help="proposals per seed")
    ap.add_argument("--n-eval", type=int, default=2000, help="W2 sample size")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cpu-minutes", nargs="*", default=[], help="NAME=MINUTES overrides")
    ap.add_argument(
        "--taus", type=float, nargs="+", default=[1.0], help="sampling temperatures (a row each)"
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    ref = load_dataset(args.reference)
    overrides = dict(x.split("=", 1) for x in args.cpu_minutes)
    phi = np.asarray(ref.system.phi_indices)
    w_ref = np.exp(normalize_log_weights(ref.log_weights))
    p_ref = float(w_ref[dihedrals(ref.positions.astype(np.float64), phi[:1])[:, 0] > 0].sum())
    rows = []
    for ckpt, tau in ((c, t) for c in map(Path, args.checkpoints) for t in args.taus):
        mixture = is_mixture(ckpt)  # a mixture of proposals (arbg mixture): sampled by path
        ck = ckpt if mixture else load_checkpoint(ckpt)
        name = ckpt.name if ckpt.name not in ("last", "best") else f"{ckpt.parent.name}/{ckpt.name}"
        if tau != 1.0:
            name += f"@tau{tau:g}"
        tr = {} if mixture else ck.training
        step = int(tr.get("step", 0))
        minutes = overrides.get(name.split("@")[0])
        if minutes is not None:
            minutes = float(minutes)
        elif not mixture:
            minutes = training_minutes(ckpt, step)
        per: dict[str, list[float]] = {}
        for seed in args.seeds:
            run = out / name.replace("/", "-") / f"seed{seed}"
            cfg = SampleConfig(n=args.n, seed=seed, batch_size=512, tau=tau)
            if not (run / "samples.npz").exists():
                run_sampling(ck, run, cfg)
            m = evaluate_run(run, ref, EvaluateConfig(n_eval=args.n_eval, report=False))
            check = m["weight_check"]
            values = {
                "ess_clipped": check["relative_ess_clipped"],
                "ess_unclipped": check["relative_ess_unclipped"],
                "pareto_k": check["pareto_k"] if check["pareto_k"] is not None else math.nan,
                "e_w2": m["metrics"]["reweighted_resampled"]["e_w2"]["mean"],
                "t_w2": m["metrics"]["reweighted_resampled"]["t_w2"]["mean"],
                "e_w2_floor": m["metrics"]["md_floor"]["e_w2"]["mean"],
                "t_w2_floor": m["metrics"]["md_floor"]["t_w2"]["mean"],
                "p_phi_pos": p_phi_positive(run, phi),
            }
            for k, v in values.items():
                per.setdefault(k, []).append(float(v))
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        rows.append(
            {
                "checkpoint": str(ckpt),
                "name": name,
                "step": step,
                "val_nll": tr.get("val_nll"),
                "train_minutes": minutes,
                "finetune": tr.get("finetune"),
                **{k: stats(v) for k, v in per.items()},
            }
        )
    head = (
        "| checkpoint | step | CPU-min | val NLL | rel. ESS clipped | rel. ESS unclipped | "
        "Pareto k | E-W2 (kT) | T-W2 (rad) | P(phi>0) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        mins = "-" if r["train_minutes"] is None else f"{r['train_minutes']:.0f}"
        nll = "-" if r["val_nll"] is None else f"{r['val_nll']:.3f}"
        lines.append(
            f"| {r['name']} | {r['step']} | {mins} | {nll} | "
            f"{100 * r['ess_clipped']['mean']:.2f} ± {100 * r['ess_clipped']['std']:.2f} % | "
            f"{100 * r['ess_unclipped']['mean']:.2f} ± {100 * r['ess_unclipped']['std']:.2f} % | "
            f"{fmt(r['pareto_k'], 2)} | {fmt(r['e_w2'])} | {fmt(r['t_w2'])} | "
            f"{fmt(r['p_phi_pos'], 2)} |"
        )
    floor = rows[0]["e_w2_floor"]["mean"], rows[0]["t_w2_floor"]["mean"]
    lines += [
        "",
        f"{args.n} proposals x seeds {args.seeds} per checkpoint, mean ± sd over the seeds; W2 on "
        f"{args.n_eval} resampled conformations against {args.reference} (MD floor E-W2 "
        f"{floor[0]:.3f} kT, T-W2 {floor[1]:.3f} rad); reference P(phi>0) = {p_ref:.4f}.",
    ]
    text = "\n".join(lines)
    print(text)
    atomic_write_json(out / "learning_curve.json", {"rows": rows, "p_phi_pos_reference": p_ref})
    atomic_write_text(out / "learning_curve.md", text + "\n")


if __name__ == "__main__":
    main()
