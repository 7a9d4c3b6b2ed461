"""Proposal, SNIS and twisted SMC at equal energy evaluations, beside MD at the same cost.

Usage:
  python bench/equal_cost_table.py CHECKPOINT --reference REF --md-data MD_DIR --out DIR \
      [--budget 20000] [--seeds 0 1 2] [--n-eval 5000] [--tau 1.0] [--early-reject-kt X]

For each seed it runs the normal commands (``arbg sample``, ``arbg smc``, ``arbg evaluate``) in
subprocesses, so the table measures exactly what a user gets:

- **SNIS**: ``arbg sample --n BUDGET``; one proposal costs one energy evaluation. The
  *proposal* row is the same run before reweighting.
- **twisted SMC**: ``arbg smc`` with ``BUDGET // (boundaries + 1)`` particles, so that its
  partial (fragment) energy evaluations at the residue boundaries plus the final ones add up to
  at most BUDGET; the evaluations actually spent are reported (killed particles are not
  evaluated again).
- **MD at matched cost**: one MD step costs one force evaluation, so seed *i* takes the *i*-th
  block of ``BUDGET / steps_per_frame`` consecutive production frames of MD_DIR with their exact
  frame weights (biased MD), scored against REF by the same E-W2 / T-W2 (no TICA-W2: too few
  frames).

Every run is scored by ``arbg evaluate --n-eval N --seed SEED``: E-W2, T-W2 and TICA-W2 of
``N`` conformations resampled by weight (the published recipe, clipped weights) against REF,
and per residue P(phi > 0) from the unbiased weights. Runs and evaluations are reused when
their files exist (re-running resumes). Writes DIR/table.md and DIR/table.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ARBG = [sys.executable, "-m", "arbg.cli"]


def _run(cmd: list[str], log: Path) -> float:
    """Run one arbg command (output to `log`); return its wall time in s."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def _evaluate(run: Path, args, seed: int, log: Path) -> dict:
    metrics = run / "report" / "metrics.json"
    if not metrics.exists():
        cmd = ARBG + ["evaluate", str(run), "--reference", str(args.reference)]
        cmd += ["--n-eval", str(args.n_eval), "--seed", str(seed), "--no-report"]
        _run(cmd, log)
    return json.loads(metrics.read_text())


def _reused(run: Path, key: str, want: int) -> bool:
    """True if `run` is finished with summary[key] == want; an error if it has another size."""
    js = run / "summary.json"
    if not js.exists():
        return False
    have = json.loads(js.read_text()).get(key)
    if have != want:
        raise SystemExit(f"{run} holds a run with {key}={have}, not {want}: use another --out")
    return True


def _snis(args, seed: int, log: Path) -> tuple[Path, float]:
    run = args.out / f"snis-seed{seed}"
    wall = 0.0
    if not _reused(run, "n_samples", args.budget):
        cmd = ARBG + ["sample", str(args.checkpoint), "--n", str(args.budget)]
        cmd += ["--tau", str(args.tau), "--seed", str(seed), "--out", str(run), "--quiet"]
        wall = _run(cmd, log)
    return run, wall


def _n_boundaries(args) -> int:
    from arbg.data.datasets import load_dataset

    return len(list(load_dataset(args.reference).system.boundaries))


def _smc(args, seed: int, particles: int, log: Path) -> tuple[Path, float]:
    run = args.out / f"smc-seed{seed}"
    wall = 0.0
    if not _reused(run, "n_particles", particles):
        cmd = ARBG + ["smc", str(args.checkpoint), "--particles", str(particles)]
        cmd += ["--tau", str(args.tau), "--seed", str(seed), "--out", str(run)]
        if args.early_reject_kt is not None:
            cmd += ["--early-reject-kt", str(args.early_reject_kt)]
        wall = _run(cmd, log)
    return run, wall


def _md_matched(args, seed: int) -> dict:
    """E-W2 / T-W2 of the seed-th block of BUDGET MD steps (exact frame weights)."""
    from arbg.chem.md import load_md_frames, load_md_log_weights
    from arbg.data.datasets import load_dataset
    from arbg.eval.ensembles import Ensemble, backbone_torsions, score, strided_reference
    from arbg.eval.evaluate import reference_energies, reference_log_weights
    from arbg.reweight import weights_from_log

    meta = json.loads((args.md_data / "metadata.json").read_text())
    steps_per_frame = round(meta["frame_interval_ps"] * 1000 / meta["step_fs"])
    k = args.budget // steps_per_frame
    frames, lw = load_md_frames(args.md_data), load_md_log_weights(args.md_data)
    lo = seed * k
    if k < 2 or lo + k > len(frames):
        return {"e_w2": None, "t_w2": None, "n_frames": 0}
    ref_ds = load_dataset(args.reference)
    system = ref_ds.system
    phi, psi = system.phi_indices, system.psi_indices
    ref = strided_reference(
        reference_energies(ref_ds, system),
        backbone_torsions(ref_ds.positions, phi, psi),
        args.n_eval,
        reference_log_weights(ref_ds),
    )
    x = frames[lo : lo + k]
    md = Ensemble(
        system.reduced_energy(x),
        backbone_torsions(x, phi, psi),
        None,
        weights_from_log(np.asarray(lw[lo : lo + k], np.float64)),
    )
    return {**score(md, ref), "n_frames": int(k), "steps_per_frame": steps_per_frame}


def _alpha_l(metrics: dict, key: str) -> list[float]:
    """Per residue P(phi > 0) (basin alphaL_C7ax) from an evaluate metrics.json."""
    return [r[key] for r in metrics["basin_table"] if r["basin"] == "alphaL_C7ax"]


def _m(metrics: dict, section: str, name: str) -> float:
    return metrics["metrics"][section][name]["mean"]


def _row_of(metrics: dict, section: str, pop: str, evals: float, extra: dict) -> dict:
    return {
        "energy_evals": evals,
        "e_w2": _m(metrics, section, "e_w2"),
        "t_w2": _m(metrics, section, "t_w2"),
        "tica_w2": _m(metrics, section, "tica_w2"),
        "p_phi_pos": _alpha_l(metrics, pop),
        **extra,
    }


def run_seed(args, seed: int, particles: int, log: Path) -> dict:
    snis, snis_wall = _snis(args, seed, log)
    smc, smc_wall = _smc(args, seed, particles, log)
    ms, mt = _evaluate(snis, args, seed, log), _evaluate(smc, args, seed, log)
    smc_summary = json.loads((smc / "summary.json").read_text())
    ess_snis = ms.get("ess_unbiased", ms["ess"])
    return {
        "proposal": _row_of(ms, "proposal", "proposal", args.budget, {}),
        "snis": _row_of(ms, "reweighted_resampled", "reweighted", args.budget, {"ess": ess_snis}),
        "smc": _row_of(
            mt,
            "reweighted_resampled",
            "reweighted",
            smc_summary["energy_evaluations"],
            {
                "ess": smc_summary["ess"],
                "early_killed_fraction": smc_summary["n_killed_early"] / particles,
                "resampling_events": smc_summary["n_resampling_events"],
                "unique_ancestors": float(np.mean(smc_summary["n_unique_ancestors"])),
                "partial_evals": smc_summary["partial_energy_evaluations"],
            },
        ),
        "md": _md_matched(args, seed),
        "floor": {k: _m(ms, "md_floor", k) for k in ("e_w2", "t_w2", "tica_w2")},
        "reference_p_phi_pos": _alpha_l(ms, "reference"),
        "reference_p_phi_pos_se": _alpha_l(ms, "reference_se"),
        "wall_s": {"snis": snis_wall, "smc": smc_wall},
    }


def _fmt(values: list, digits: int = 3) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "-"
    if abs(v.mean()) >= 1e4:  # clashing proposals: E-W2 of 1e17 kT
        return f"{v.mean():.2e} ± {v.std():.2e}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def _table(rows: list[dict], n_phi: int) -> str:
    head = ["Method", "energy evals", "E-W2 (kT)", "T-W2 (rad)", "TICA-W2"]
    head += [f"P(phi{i + 1} > 0)" for i in range(n_phi)] + ["ESS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = {"proposal": "proposal", "snis": "SNIS", "smc": "twisted SMC", "md": "MD"}
    for key, name in names.items():
        r = [s[key] for s in rows]
        cells = [name, _fmt([x.get("energy_evals", None) for x in r], 0)]
        if key == "md":
            cells[1] = f"{rows[0]['md'].get('n_frames', 0)} frames"
        cells += [_fmt([x.get(m) for x in r]) for m in ("e_w2", "t_w2", "tica_w2")]
        cells += [
            _fmt([x["p_phi_pos"][i] for x in r], 4) if "p_phi_pos" in r[0] else "-"
            for i in range(n_phi)
        ]
        cells.append(_fmt([x.get("ess") for x in r], 1))
        lines.append("| " + " | ".join(cells) + " |")
    ref = rows[0]
    cells = ["MD floor (reference halves)", "-"]
    cells += [_fmt([s["floor"][m] for s in rows]) for m in ("e_w2", "t_w2", "tica_w2")]
    cells += [
        f"{ref['reference_p_phi_pos'][i]:.4f} ± {ref['reference_p_phi_pos_se'][i]:.4f}"
        for i in range(n_phi)
    ]
    lines.append("| " + " | ".join(cells + ["-"]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--md-data", type=Path, required=True, help="arbg md dir for the MD row")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=int, default=20_000, help="energy evaluations per method")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-eval", type=int, default=5000)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--early-reject-kt", type=float, default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "commands.log"
    n_b = _n_boundaries(args)
    particles = args.budget // (n_b + 1)
    print(f"{n_b} residue boundaries: {particles} SMC particles per seed", flush=True)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(args, seed, particles, log))
        print(f"seed {seed}: {json.dumps(rows[-1])}", flush=True)
    n_phi = len(rows[0]["reference_p_phi_pos"])
    table = _table(rows, n_phi)
    smc = [r["smc"] for r in rows]
    notes = (
        f"\nBudget {args.budget:,} energy evaluations per method and seed; seeds {args.seeds}; "
        f"{particles} SMC particles ({n_b} boundaries); n_eval {args.n_eval}; tau {args.tau}.\n"
        f"SMC: early-killed fraction {_fmt([s['early_killed_fraction'] for s in smc])}, "
        f"resampling events {_fmt([s['resampling_events'] for s in smc], 1)}, unique ancestors "
        f"{_fmt([s['unique_ancestors'] for s in smc], 1)}, partial evaluations "
        f"{_fmt([s['partial_evals'] for s in smc], 0)}.\n"
    )
    (args.out / "table.md").write_text(table + "\n" + notes)
    (args.out / "table.json").write_text(
        json.dumps({"args": vars(args), "rows": rows}, default=str, indent=1)
    )
    print(table + "\n" + notes)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
