"""The ``arbg`` command. Each subcommand parses arguments and calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("arbg")


def default_cache_dir() -> Path:
    """Where bulk data goes unless the user says otherwise ($ARBG_CACHE or ~/.cache/arbg)."""
    return Path(os.environ.get("ARBG_CACHE", Path.home() / ".cache" / "arbg"))


def add_system_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("system", nargs="?", default=None,
                       help="preset name (aldp, ace-aaa-nme, aaa, aaaaaa, chignolin)")
    p.add_argument("--sequence", help="one-letter sequence (20 standard amino acids)")
    p.add_argument("--pdb", help="a PDB file with one peptide chain")
    p.add_argument("--capped", action=argparse.BooleanOptionalAction, default=None,
                   help="ACE/NME caps (default: zwitterionic for sequences)")
    p.add_argument("--forcefield", nargs="+", default=None,
                   help="OpenMM force-field XML files (e.g. amber14-all.xml implicit/obc1.xml)")
    p.add_argument("--nonbonded", choices=["NoCutoff", "CutoffNonPeriodic"], default=None)
    p.add_argument("--cutoff-nm", type=float, default=None)
    p.add_argument("--temperature-k", type=float, default=None,
                   help="physical temperature of the target in K (not the sampling --tau)")
    p.add_argument("--fast-implicit", action="store_true",
                   help="amber99sbildn + amber99_obc, NoCutoff, 310 K (fast on CPUs)")
    p.add_argument("--histidine", choices=["HIE", "HID", "HIP"], default=None)


def system_from_args(args: argparse.Namespace, n_workers: int = 1):
    from arbg.systems import build_system, make_spec

    system = getattr(args, "system", None)
    if system is None and args.sequence is None and args.pdb is None:
        system = "aldp"
    spec = make_spec(system, sequence=args.sequence, pdb=args.pdb, capped=args.capped,
                     forcefield=tuple(args.forcefield) if args.forcefield else None,
                     nonbonded=args.nonbonded, cutoff_nm=args.cutoff_nm,
                     temperature_k=args.temperature_k, fast_implicit=args.fast_implicit,
                     histidine=args.histidine)
    return build_system(spec, minimize=args.pdb is None, n_workers=n_workers)


def cmd_md(args: argparse.Namespace) -> int:
    from arbg.bias import BiasConfig
    from arbg.md import MDConfig, run_md

    system = system_from_args(args)
    out = Path(args.out or default_cache_dir() / "md" / f"{system.name}-seed{args.seed}")
    bias = None
    if args.bias == "dihedrals":
        bias = BiasConfig(variables="phi-psi" if args.bias_psi else "phi",
                          residues=None if args.bias_residues is None else tuple(
                              r - 1 for r in args.bias_residues),
                          build_ns=args.bias_build_ns, bias_factor=args.bias_factor,
                          height_kt=args.bias_height_kt, width_deg=args.bias_width_deg,
                          deposit_ps=args.bias_deposit_ps, grid_points=args.bias_grid)
    elif any(getattr(args, k) for k in ("bias_psi", "bias_residues")):
        raise ValueError("--bias-psi / --bias-residues need --bias dihedrals")
    cfg = MDConfig(ns=args.ns, step_fs=args.step_fs, friction_per_ps=args.friction,
                   frame_interval_ps=args.frame_interval_ps, warmup_ps=args.warmup_ps,
                   seed=args.seed, temperature_k=args.md_temperature_k, bias=bias)
    run_md(system, out, cfg, progress=not args.quiet)
    print(f"wrote {cfg.n_frames} frames of {system.name} to {out}")
    if bias is not None or cfg.temperature_k not in (None, system.temperature_k):
        import numpy as np

        from arbg.dataset import load_dataset
        from arbg.reweight import kish_ess

        data = load_dataset(out, system=system)
        phi = _phi_of(data)
        w = np.exp(data.log_weights - data.log_weights.max())
        print(f"weighted frames: sampled at {cfg.temperature_k or system.temperature_k:g} K "
              f"for {system.temperature_k:g} K{' under a dihedral bias' if bias else ''}; "
              f"Kish ESS {kish_ess(data.log_weights):.1f} of {len(data)}; "
              f"log-weights in {out / 'log_weights.npy'} (unnormalised)")
        if phi is not None:
            print(f"P(phi1 > 0): raw {np.mean(phi > 0):.4f}, reweighted "
                  f"{np.sum(w * (phi > 0)) / np.sum(w):.4f}")
    return 0


def _phi_of(data):
    from arbg.metrics import dihedrals

    if not len(data.system.phi_indices):
        return None
    return dihedrals(data.positions, data.system.phi_indices[:1])[:, 0]


def cmd_system(args: argparse.Namespace) -> int:
    system = system_from_args(args)
    info = system.describe()
    info["boundaries"] = system.boundaries
    info["reduced_energy_kT"] = float(system.reduced_energy(system.positions)[0])
    if args.out:
        system.save_pdb(args.out)
        info["pdb"] = args.out
    print(json.dumps(info, indent=2))
    return 0


def cmd_bound(args: argparse.Namespace) -> int:
    import numpy as np

    from arbg.binning import quantization_bound
    from arbg.dataset import load_dataset
    from arbg.standardize import fit_standardization

    data = load_dataset(args.data, topology=args.topology)
    frames = data.split("train")
    if args.frames and len(frames) > args.frames:
        frames = frames[:: len(frames) // args.frames][: args.frames]
    rows = quantization_bound(frames, fit_standardization(data.split("train")), args.bins,
                              data.system.reduced_energy, np.random.default_rng(args.seed))
    print(f"{'bins':>6s} {'width (pm)':>11s} {'E-W2 (kT)':>10s} {'clipped':>8s}")
    for r in rows:
        print(f"{r['n_bins']:6d} {r['bin_width_pm']:11.3f} {r['e_w2']:10.3f} {r['n_clipped']:8d}")
    if args.json:
        from arbg.io import atomic_write_json

        atomic_write_json(args.json, rows)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from arbg.evaluate import evaluate_run

    metrics = evaluate_run(args.run_dir, args.reference, out_dir=args.out, n_eval=args.n_eval,
                           seed=args.seed, repeats=args.repeats, tica_lag=args.tica_lag,
                           topology=args.topology, report=not args.no_report,
                           reference_weights=args.reference_weights)
    print(format_metrics(metrics))
    out = Path(args.out) if args.out else Path(args.run_dir) / "report"
    print(f"metrics: {out / 'metrics.json'}")
    if not args.no_report:
        print(f"report: {out / 'report.html'}")
    return 0


def format_metrics(metrics: dict) -> str:
    """A plain-text table of E-W2 / T-W2 / TICA-W2 per ensemble."""
    rows = [f"{'ensemble':24s} {'E-W2':>14s} {'T-W2':>14s} {'TICA-W2':>14s}"]
    for name, vals in metrics.get("metrics", {}).items():
        cells = []
        for key in ("e_w2", "t_w2", "tica_w2"):
            v = vals.get(key)
            if v is None:
                cells.append(f"{'-':>14s}")
            elif v.get("std") and len(v.get("values", [])) > 1:
                cells.append(f"{v['mean']:7.3f}+-{v['std']:<5.3f}")
            else:
                cells.append(f"{v['mean']:14.3f}")
        rows.append(f"{name:24s} " + " ".join(cells))
    for key in ("ess", "unique_resampled", "n_eval"):
        if key in metrics:
            rows.append(f"{key}: {metrics[key]}")
    if metrics.get("reference_weighted"):
        rows.append(f"reference: weighted ({metrics.get('reference_weight_mode')}), Kish ESS "
                    f"{metrics.get('reference_ess', float('nan')):.1f} of "
                    f"{metrics.get('n_reference_frames')} frames")
    if metrics.get("basin_table"):
        rows.append(f"{'residue':8s} {'basin':16s} {'reference MD':>16s} {'proposal':>9s} "
                    f"{'reweighted':>16s}")
        for r in metrics["basin_table"]:
            rows.append(f"{r['residue']:8s} {r['basin']:16s} {r['reference']:8.4f}+-"
                        f"{r['reference_se']:<6.4f} {r['proposal']:9.4f} "
                        f"{r['reweighted']:8.4f}+-{r['reweighted_se']:<6.4f}")
    return "\n".join(rows)


def cmd_train(args: argparse.Namespace) -> int:
    from arbg.dataset import load_dataset
    from arbg.train import TrainConfig, train

    data = load_dataset(args.data, topology=args.topology)
    cfg = TrainConfig(preset=args.preset, seed=args.seed, device=args.device,
                      optimizer=args.optimizer, ema=args.ema,
                      augment_rotations=not args.no_rotations, bf16=args.bf16,
                      frame=args.frame,
                      max_minutes=args.max_minutes)
    for key in ("steps", "batch_size", "n_bins", "lr_adamw", "lr_muon", "eval_every"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)
    cfg.model_overrides["head"] = args.head
    if args.head != "bins":
        cfg.model_overrides["head_kwargs"] = {"n_mixtures": args.n_mixtures}
    final = train(data, args.out, cfg, progress=not args.quiet)
    print(f"checkpoint: {final}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from arbg.checkpoint import load_checkpoint
    from arbg.runs import run_sampling

    ck = load_checkpoint(args.checkpoint, device=args.device)
    if args.sequence:
        raise ValueError("--sequence needs a transferable checkpoint; this checkpoint was "
                         f"trained on the single system {ck.system.name!r}")
    summary = run_sampling(ck, args.out, n=args.n, tau=args.tau, seed=args.seed,
                           device=args.device, energy=ck.system, clip_fraction=args.clip,
                           clip_mode=None if args.clip_mode == "off" else args.clip_mode,
                           chirality=args.chirality, ensemble_size=args.ensemble_size,
                           batch_size=args.batch_size, progress=not args.quiet)
    print(f"{summary['n_samples']} samples in {args.out}: ESS {summary['ess']:.1f} "
          f"({summary['relative_ess']:.2%}), {summary['n_chirality_wrong']} wrong chirality, "
          f"{summary['n_nonfinite_energy']} non-finite energies")
    return 0


def cmd_smc(args: argparse.Namespace) -> int:
    from arbg.checkpoint import load_checkpoint
    from arbg.runs import run_smc

    ck = load_checkpoint(args.checkpoint, device=args.device)
    summary = run_smc(ck, args.out, n_particles=args.particles, tau=args.tau, seed=args.seed,
                      repeats=args.repeats,
                      resample=None if args.resample == "off" else args.resample,
                      ess_threshold=args.ess_threshold, early_reject_kt=args.early_reject_kt,
                      device=args.device, ensemble_size=args.ensemble_size)
    print(json.dumps({k: summary[k] for k in ("n_samples", "ess", "energy_evaluations")
                      if k in summary}))
    print(f"run: {args.out} (summary.json has the SMC counts)")
    return 0


def cmd_tune_temperature(args: argparse.Namespace) -> int:
    from arbg.checkpoint import load_checkpoint
    from arbg.dataset import load_dataset
    from arbg.io import atomic_write_json
    from arbg.tune import tune_temperature

    ck = load_checkpoint(args.checkpoint, device=args.device)
    data = load_dataset(args.data, topology=args.topology, system=ck.system)
    result = tune_temperature(ck, data.split(args.split), args.taus, n=args.n,
                              n_eval=args.n_eval, seed=args.seed, device=args.device,
                              validation_log_weights=data.split_log_weights(args.split))
    print(f"{'tau':>6s} {'E-W2':>8s} {'T-W2':>8s} {'sum':>8s} {'ESS':>8s}")
    for r in result["rows"]:
        print(f"{r['tau']:6.3f} {r['e_w2']:8.3f} {r['t_w2']:8.3f} {r['score']:8.3f} "
              f"{r['ess']:8.1f}")
    print(f"best tau: {result['best_tau']}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from arbg.demo import DemoConfig, run_demo

    cfg = DemoConfig(quick=args.quick, seed=args.seed, progress=not args.quiet)
    if args.train_minutes is not None:
        cfg.train_minutes = args.train_minutes
    out = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    report = run_demo(out, cfg)
    print(f"report: {report.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arbg", description="Autoregressive Boltzmann Generators")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("system", help="build a peptide system and print its description")
    add_system_args(s)
    s.add_argument("--out", help="write the built peptide (canonical order) to this PDB")
    s.set_defaults(func=cmd_system)

    s = sub.add_parser("md", help="reference MD with OpenMM (resumable)")
    add_system_args(s)
    s.add_argument("--ns", type=float, default=1.0, help="production length in ns")
    s.add_argument("--out", help="output directory (default: cache dir)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--step-fs", type=float, default=1.0)
    s.add_argument("--friction", type=float, default=0.3, help="Langevin friction in 1/ps")
    s.add_argument("--frame-interval-ps", type=float, default=1.0)
    s.add_argument("--warmup-ps", type=float, default=50.0)
    s.add_argument("--md-temperature-k", "--sampling-temperature-k", type=float, default=None,
                   dest="md_temperature_k",
                   help="sampling temperature of the MD data (heated data; default: the "
                   "system's). --temperature-k stays the target's temperature; frames get "
                   "log-weights -(1/kT_target - 1/kT_sampling) E")
    b = s.add_argument_group("enhanced sampling (weighted data; see README)")
    b.add_argument("--bias", choices=["none", "dihedrals"], default="none",
                   help="dihedrals: well-tempered metadynamics on backbone phi (OpenMM's "
                   "Metadynamics) for --bias-build-ns, then production under the frozen bias; "
                   "frames get log-weights +V/kT")
    b.add_argument("--bias-psi", action="store_true", help="bias psi as well as phi")
    b.add_argument("--bias-residues", type=int, nargs="+",
                   help="residues (1-based) whose dihedrals are biased (default: the central "
                   "one; at most 3 biased dihedrals in all)")
    b.add_argument("--bias-build-ns", type=float, default=1.0,
                   help="metadynamics build time in ns (before production)")
    b.add_argument("--bias-factor", type=float, default=10.0, help="well-tempered bias factor")
    b.add_argument("--bias-height-kt", type=float, default=0.5,
                   help="initial Gaussian height in kT")
    b.add_argument("--bias-width-deg", type=float, default=20.0, help="Gaussian width, degrees")
    b.add_argument("--bias-deposit-ps", type=float, default=0.5,
                   help="Gaussian deposition interval, ps")
    b.add_argument("--bias-grid", type=int, help="grid points per dihedral (default 5*360/width)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_md)

    s = sub.add_parser("bound", help="discretization bound: E-W2 of de-quantized training data "
                                     "for a list of bin counts (how many bins a system needs)")
    s.add_argument("data", help="dataset (arbg md dir, published layout, array/trajectory)")
    s.add_argument("--topology", help="PDB for array/trajectory data")
    s.add_argument("--bins", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    s.add_argument("--frames", type=int, default=5000, help="frames used (stride-subsampled)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", help="also write the rows to this JSON file")
    s.set_defaults(func=cmd_bound)

    s = sub.add_parser("evaluate", help="metrics and report of a sampling run against MD")
    s.add_argument("run_dir")
    s.add_argument("--reference", required=True, help="reference MD (not the training data)")
    s.add_argument("--topology", help="PDB for array/trajectory references")
    s.add_argument("--out", help="output directory (default RUN_DIR/report)")
    s.add_argument("--n-eval", type=int, default=10_000)
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--tica-lag", type=int, default=100, help="TICA lag in reference frames")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-report", action="store_true", help="metrics.json only")
    s.add_argument("--reference-weights", choices=["transport", "resample", "ignore"],
                   default="transport",
                   help="a weighted reference (biased/heated MD): transport its frame weights "
                   "into the W2 problems, resample it by weight (seeded), or ignore them")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("train", help="train an ARBG model on MD data (resumable)")
    s.add_argument("data", help="dataset (arbg md dir, published layout, array/trajectory)")
    s.add_argument("--topology", help="PDB for array/trajectory data")
    s.add_argument("--out", required=True, help="training directory (checkpoints, logs)")
    s.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"])
    s.add_argument("--steps", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--n-bins", type=int)
    s.add_argument("--optimizer", default="muon", choices=["muon", "adamw"])
    s.add_argument("--lr-adamw", type=float)
    s.add_argument("--lr-muon", type=float)
    s.add_argument("--eval-every", type=int)
    s.add_argument("--ema", action="store_true")
    s.add_argument("--no-rotations", action="store_true", help="no rotation augmentation")
    s.add_argument("--frame", choices=["gauge", "centroid"], default="gauge",
                   help="gauge: rotation and translation fixed by three backbone atoms (arbg, "
                   "default); centroid: the published centring + rotation augmentation")
    s.add_argument("--head", default="bins", choices=["bins", "mol", "gmm", "givt"],
                   help="output head: bins (categorical, ARBG), mol / gmm (discretized mixture "
                   "of logistics / Gaussians, PixelCNN++ baselines), givt (continuous Gaussian "
                   "mixture)")
    s.add_argument("--n-mixtures", type=int, default=10,
                   help="mixture components K of the mol/gmm/givt heads")
    s.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU only)")
    s.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample with exact log q and reweight (SNIS)")
    s.add_argument("checkpoint")
    s.add_argument("--out", required=True, help="run directory (extended if it exists)")
    s.add_argument("--n", type=int, default=10_000)
    s.add_argument("--tau", type=float, default=1.0, help="sampling temperature (logits/tau)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sequence", help="for transferable checkpoints only")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--batch-size", type=int, default=1024)
    s.add_argument("--clip", type=float, default=0.002, help="fraction of log-weights clipped")
    s.add_argument("--clip-mode", default="drop", choices=["drop", "cap", "off"])
    s.add_argument("--chirality", default="zero", choices=["zero", "mirror"])
    s.add_argument("--ensemble-size", type=int, help="size of ensemble.dcd (default: N)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("smc", help="autoregressive twisted SMC (peptides with residue "
                                   "boundaries, e.g. aaa, ace-aaa-nme)")
    s.add_argument("checkpoint")
    s.add_argument("--out", required=True, help="run directory (new)")
    s.add_argument("--particles", type=int, default=1000, help="particles per population")
    s.add_argument("--repeats", type=int, default=1,
                   help="independent populations, combined through their evidence")
    s.add_argument("--tau", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resample", default="systematic",
                   choices=["systematic", "multinomial", "off"])
    s.add_argument("--ess-threshold", type=float,
                   help="resample only when ESS/M falls below this (default: always)")
    s.add_argument("--early-reject-kt", type=float, default=100.0,
                   help="kill particles above min(u_k) + this at a boundary")
    s.add_argument("--ensemble-size", type=int)
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.set_defaults(func=cmd_smc)

    s = sub.add_parser("tune-temperature", help="sweep tau on the validation block")
    s.add_argument("checkpoint")
    s.add_argument("--data", required=True, help="the training dataset (its val split is used)")
    s.add_argument("--topology")
    s.add_argument("--split", default="val")
    s.add_argument("--taus", type=float, nargs="+",
                   default=[0.9, 0.95, 1.0, 1.03, 1.06, 1.1])
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--n-eval", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--json")
    s.set_defaults(func=cmd_tune_temperature)

    s = sub.add_parser("demo", help="the end-to-end demo on alanine dipeptide")
    s.add_argument("--quick", action="store_true",
                   help="use the shipped checkpoint and reference (under 3 minutes)")
    s.add_argument("--out", help="output directory (default runs/demo or runs/demo-quick)")
    s.add_argument("--train-minutes", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"arbg {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
