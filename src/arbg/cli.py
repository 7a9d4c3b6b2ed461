"""The ``arbg`` command. Each subcommand parses arguments and calls one library function."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from arbg import checks
from arbg.chem.bias import BiasConfig
from arbg.chem.md import MDConfig, SimulationError, run_md
from arbg.chem.spec import SystemOptions
from arbg.chem.systems import build_system
from arbg.cliflags import add_wait_args, apply_arg_checks
from arbg.cluster import ClusterConfig, open_engine, use_engine
from arbg.configargs import add_config_args, config_from_args
from arbg.data.corpora import CorpusConfig, kmer_sequences, load_corpus, parse_sequences, run_corpus
from arbg.data.datasets import load_dataset
from arbg.eval.evaluate import EvaluateConfig, evaluate_run
from arbg.eval.metrics import dihedrals
from arbg.eval.report_tables import format_metrics
from arbg.experiments.ablations import ablate_bins, ablate_temperature
from arbg.experiments.benchmark import BenchmarkConfig, run_benchmark
from arbg.experiments.demo import DemoConfig, run_demo
from arbg.experiments.demo_checks import DemoNotTrained, format_summary
from arbg.experiments.stages import BudgetConfig
from arbg.experiments.tuning import TuneConfig, tune_temperature
from arbg.experiments.zeroshot import ZeroShotConfig, evaluate_zero_shot, zero_shot_summary
from arbg.io import atomic_write_json, lock_dir
from arbg.nn.binning import quantization_bound
from arbg.nn.conditioning import ConditioningConfig
from arbg.nn.standardize import fit_standardization
from arbg.reweight import kish_ess
from arbg.sampling.config import SampleConfig, SMCConfig
from arbg.sampling.runs import run_sampling
from arbg.sampling.sampler import resolve_batch_size
from arbg.sampling.smc_runs import run_smc
from arbg.train.checkpoints import load_checkpoint
from arbg.train.trainer import TrainConfig, train
from arbg.train.transferable import train_transferable

log = logging.getLogger("arbg")


def default_cache_dir() -> Path:
    """Where bulk data goes unless the user says otherwise ($ARBG_CACHE or ~/.cache/arbg)."""
    return Path(os.environ.get("ARBG_CACHE", Path.home() / ".cache" / "arbg"))


def add_system_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "system", nargs="?", help="preset name (aldp, ace-aaa-nme, aaa, aaaaaa, chignolin)"
    )
    add_config_args(p, SystemOptions)


@contextlib.contextmanager
def cluster_engine(args: argparse.Namespace):
    """The Dask engine of ``--workers`` / ``--scheduler`` (:class:`ClusterConfig`), active for
    the block (energies find it through :func:`arbg.cluster.active_engine`), then closed."""
    engine = open_engine(config_from_args(ClusterConfig, args))
    try:
        if engine.distributed:
            print(f"Dask: {engine.description}, {engine.n_workers} worker thread(s)")
            if engine.dashboard_link:
                print(f"Dask dashboard: {engine.dashboard_link}")
        with use_engine(engine):
            yield engine
    finally:
        engine.close()


def system_from_args(args: argparse.Namespace):
    spec = config_from_args(SystemOptions, args).spec(args.system)
    return build_system(spec, minimize=args.pdb is None)


def cmd_md(args: argparse.Namespace) -> int:
    system = system_from_args(args)
    out = Path(args.out or default_cache_dir() / "md" / f"{system.name}-seed{args.seed}")
    bias = None
    if args.bias == "dihedrals":
        residues = None if args.bias_residues is None else tuple(r - 1 for r in args.bias_residues)
        variables = "phi-psi" if args.bias_psi else "phi"
        bias = config_from_args(
            BiasConfig, args, prefix="bias-", variables=variables, residues=residues
        )
    elif any(getattr(args, k) for k in ("bias_psi", "bias_residues")):
        raise ValueError("--bias-psi / --bias-residues need --bias dihedrals")
    cfg = config_from_args(MDConfig, args, bias=bias)
    run_md(system, out, cfg, progress=not args.quiet, wait=args.wait)
    print(f"wrote {cfg.n_frames} frames of {system.name} to {out}")
    if bias is not None or cfg.temperature_k not in (None, system.temperature_k):
        import numpy as np

        data = load_dataset(out, system=system)
        phi = _phi_of(data)
        w = np.exp(data.log_weights - data.log_weights.max())
        print(
            f"weighted frames: sampled at {cfg.temperature_k or system.temperature_k:g} K "
            f"for {system.temperature_k:g} K{' under a dihedral bias' if bias else ''}; "
            f"Kish ESS {kish_ess(data.log_weights):.1f} of {len(data)}; "
            f"log-weights in {out / 'log_weights.npy'} (unnormalised)"
        )
        if phi is not None:
            print(
                f"P(phi1 > 0): raw {np.mean(phi > 0):.4f}, reweighted "
                f"{np.sum(w * (phi > 0)) / np.sum(w):.4f}"
            )
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.sequences is not None and args.length is not None:
        raise ValueError("give --sequences or --length, not both")
    if args.sample is not None and args.length is None:
        raise ValueError("--sample needs --length")
    if args.sequences is None and args.length is None:  # resume a corpus from its manifest
        if args.out is None or not (Path(args.out) / "manifest.json").exists():
            raise ValueError(
                "give --sequences AA,AG,... or --length L (or --out DIR of an "
                "existing corpus to resume it)"
            )
        seqs, cfg = None, None
    else:
        if args.sequences is not None:
            seqs = parse_sequences(args.sequences)
        else:
            seqs = kmer_sequences(args.length, args.sample, args.seed)
        cfg = config_from_args(CorpusConfig, args)
    if args.out is not None:
        out = Path(args.out)
    elif args.length is not None:
        out = (
            default_cache_dir()
            / "corpus"
            / (f"{args.length}mers-{args.sample or 'all'}-seed{args.seed}-{args.force_field}")
        )
    else:
        import hashlib

        tag = hashlib.sha256(",".join(sorted(seqs)).encode()).hexdigest()[:8]
        out = default_cache_dir() / "corpus" / f"seqs-{tag}-seed{args.seed}-{args.force_field}"

    with lock_dir(out, wait=args.wait):
        manifest = run_corpus(
            out,
            seqs,
            cfg,
            engine=args.engine,  # opened by main() from --workers / --scheduler
            progress=not args.quiet,
            max_sequences=args.max_sequences,
        )
    t = manifest["totals"]
    sizes = ", ".join(f"{k} {len(v)}" for k, v in manifest["splits"].items())
    print(
        f"corpus {out}: {t['done']}/{t['sequences']} sequences done ({sizes}), "
        f"{t['ns_done']:.3f}/{t['ns_total']:.3f} ns, {t['frames']} frames"
        + (f"; {t['failed']} failed (re-run to retry)" if t["failed"] else "")
    )
    return 1 if t["failed"] else 0


def _phi_of(data):

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

    data = load_dataset(args.data, topology=args.topology)
    frames = data.split("train")
    if args.frames and len(frames) > args.frames:
        frames = frames[:: len(frames) // args.frames][: args.frames]
    rows = quantization_bound(
        frames,
        fit_standardization(data.split("train")),
        args.bins,
        data.system.reduced_energy,
        np.random.default_rng(args.seed),
    )
    print(f"{'bins':>6s} {'width (pm)':>11s} {'E-W2 (kT)':>10s} {'clipped':>8s}")
    for r in rows:
        print(f"{r['n_bins']:6d} {r['bin_width_pm']:11.3f} {r['e_w2']:10.3f} {r['n_clipped']:8d}")
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    checks.existing_dir("run_dir", args.run_dir)
    cfg = config_from_args(EvaluateConfig, args)
    out = Path(args.out) if args.out else Path(args.run_dir) / "report"
    with lock_dir(out, wait=args.wait):
        metrics = evaluate_run(
            args.run_dir, args.reference, cfg, out_dir=args.out, topology=args.topology
        )
    print(format_metrics(metrics))
    print(f"metrics: {out / 'metrics.json'}")
    if cfg.report:
        print(f"report: {out / 'report.html'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    data = load_dataset(args.data, topology=args.topology)
    cfg = config_from_args(TrainConfig, args)
    cfg.model_overrides["head"] = args.head
    if args.head != "bins":
        cfg.model_overrides["head_kwargs"] = {"n_mixtures": args.n_mixtures}
    final = train(data, args.out, cfg, progress=not args.quiet, wait=args.wait)
    print(f"checkpoint: {final}")
    return 0


def cmd_train_transferable(args: argparse.Namespace) -> int:
    corpus = load_corpus(args.corpus)
    cfg = config_from_args(TrainConfig, args)
    cond = ConditioningConfig(n_layer=args.cond_layers, n_head=args.cond_heads)
    final = train_transferable(corpus, args.out, cfg, cond, progress=not args.quiet, wait=args.wait)
    print(f"checkpoint: {final} (sample with: arbg sample {final} --sequence SEQ --out DIR)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    cfg = config_from_args(SampleConfig, args)
    # a transferable checkpoint is bound to --sequence; a single-system one refuses it
    ck = load_checkpoint(args.checkpoint, device=cfg.device, sequence=args.sequence)
    if cfg.batch_size == "auto":
        n = resolve_batch_size(ck.model, "auto", ck.standardization.n_coords, cfg.device, cfg.dtype)
        cfg = dataclasses.replace(cfg, batch_size=n)
        print(f"batch size (auto, {cfg.dtype} on {cfg.device}): {n}")
    summary = run_sampling(ck, args.out, cfg, progress=not args.quiet, wait=args.wait)
    print(
        f"{summary['n_samples']} samples in {args.out}: ESS {summary['ess']:.1f} "
        f"({summary['relative_ess']:.2%}), {summary['n_chirality_wrong']} wrong chirality, "
        f"{summary['n_nonfinite_energy']} non-finite energies"
    )
    return 0


def cmd_smc(args: argparse.Namespace) -> int:
    cfg = config_from_args(SMCConfig, args)
    ck = load_checkpoint(args.checkpoint, device=cfg.device, sequence=args.sequence)
    summary = run_smc(ck, args.out, cfg, wait=args.wait)
    keys = ("n_samples", "ess", "energy_evaluations")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))
    print(f"run: {args.out} (summary.json has the SMC counts)")
    return 0


def cmd_tune_temperature(args: argparse.Namespace) -> int:
    cfg = config_from_args(TuneConfig, args)
    ck = load_checkpoint(args.checkpoint, device=cfg.device)
    data = load_dataset(args.data, topology=args.topology, system=ck.system)
    result = tune_temperature(
        ck, data.split(args.split), cfg, validation_log_weights=data.split_log_weights(args.split)
    )
    print(f"{'tau':>6s} {'E-W2':>8s} {'T-W2':>8s} {'sum':>8s} {'ESS':>8s}")
    for r in result["rows"]:
        print(
            f"{r['tau']:6.3f} {r['e_w2']:8.3f} {r['t_w2']:8.3f} {r['score']:8.3f} {r['ess']:8.1f}"
        )
    print(f"best tau: {result['best_tau']}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:

    cfg = config_from_args(DemoConfig, args, progress=not args.quiet)
    out = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    try:
        with lock_dir(out, wait=args.wait):
            report = run_demo(out, cfg)
    except DemoNotTrained as e:
        print(f"arbg demo: {e}", file=sys.stderr)
        return 3
    summary = json.loads((report.parent / "demo_summary.json").read_text())
    print("\n".join(["", "summary:", *format_summary(summary)]))
    print(f"report: {report.resolve()}")
    if summary["flags"]:
        print(
            "arbg demo: WARNING: the result failed a check (see the summary above)", file=sys.stderr
        )
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command line as typed (``main`` keeps its argv on ``args.argv``)."""
    import shlex

    argv = getattr(args, "argv", None)
    return "arbg " + shlex.join(sys.argv[1:] if argv is None else argv)


def add_budget_args(
    p: argparse.ArgumentParser, cls: type = BudgetConfig, skip: tuple[str, ...] = ()
) -> None:
    """Output, topology and the budget flags (from ``cls``) of `benchmark` and `ablate bins`."""
    p.add_argument("--topology", help="PDB for array/trajectory data and reference")
    p.add_argument("--out", required=True, help="output directory (re-running resumes)")
    add_config_args(p, cls, skip=("model_overrides", "train_overrides", *skip))


def cmd_ablate_bins(args: argparse.Namespace) -> int:

    res = ablate_bins(
        args.data,
        args.out,
        args.bins,
        config_from_args(BudgetConfig, args),
        reference=args.reference,
        topology=args.topology,
        bound_frames=args.bound_frames,
        command=_command_line(args),
    )
    print(f"{'bins':>6s} {'E-W2':>16s} {'T-W2':>16s} {'bound E-W2':>11s}")
    for r in res["rows"]:
        print(
            f"{r['n_bins']:6d} {r['e_w2']['mean']:8.3f}+-{r['e_w2']['std']:<6.3f} "
            f"{r['t_w2']['mean']:8.3f}+-{r['t_w2']['std']:<6.3f} {r['bound_e_w2']:11.4f}"
        )
    for key, path in res["paths"].items():
        print(f"{key}: {path}")
    return 0


def cmd_ablate_temperature(args: argparse.Namespace) -> int:

    res = ablate_temperature(
        args.checkpoint,
        args.reference,
        args.out,
        args.taus,
        n_samples=args.n_samples,
        n_eval=args.n_eval,
        seeds=args.seeds,
        device=args.device,
        topology=args.topology,
        command=_command_line(args),
    )
    print(f"{'tau':>6s} {'E-W2':>16s} {'T-W2':>16s} {'rel. ESS':>9s}")
    for r in res["rows"]:
        print(
            f"{r['tau']:6.3f} {r['e_w2']['mean']:8.3f}+-{r['e_w2']['std']:<6.3f} "
            f"{r['t_w2']['mean']:8.3f}+-{r['t_w2']['std']:<6.3f} "
            f"{r['relative_ess']['mean']:9.4f}"
        )
    print(f"best tau: {res['best_tau']}")
    for key, path in res["paths"].items():
        print(f"{key}: {path}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:

    cfg = config_from_args(BenchmarkConfig, args)
    res = run_benchmark(
        args.data,
        args.reference,
        args.out,
        cfg,
        topology=args.topology,
        command=_command_line(args),
    )
    print(Path(res["paths"]["table_md"]).read_text())
    for key, path in res["paths"].items():
        print(f"{key}: {path}")
    return 0


def add_benchmark_parsers(sub: argparse._SubParsersAction) -> None:
    """`arbg ablate bins|temperature` and `arbg benchmark` (see arbg.experiments.ablations,
    arbg.experiments.benchmark)."""
    s = sub.add_parser(
        "ablate", help="ablations: bin count (train per L) or sampling temperature (one checkpoint)"
    )
    asub = s.add_subparsers(dest="ablation", required=True)
    a = asub.add_parser(
        "bins", help="train, sample and evaluate per bin count L, beside the discretization bound"
    )
    a.add_argument("data", help="training MD (arbg md dir, published layout, array/trajectory)")
    a.add_argument("--bins", type=int, nargs="+", required=True, help="bin counts L")
    a.add_argument("--reference", help="independent reference MD (default: the test block of DATA)")
    a.add_argument(
        "--bound-frames", type=int, default=5000, help="training frames in the quantization bound"
    )
    add_budget_args(a, skip=("n_bins",))
    a.set_defaults(func=cmd_ablate_bins)
    a = asub.add_parser("temperature", help="E-W2, T-W2 and ESS after reweighting against tau")
    a.add_argument("checkpoint")
    a.add_argument("--taus", type=float, nargs="+", default=[0.9, 0.95, 1.0, 1.03, 1.06, 1.1])
    a.add_argument("--reference", required=True, help="reference MD")
    a.add_argument("--topology", help="PDB for an array/trajectory reference")
    a.add_argument("--out", required=True)
    a.add_argument("--n-samples", type=int, default=2000, help="proposals per tau")
    a.add_argument("--n-eval", type=int, default=1000, help="resampled conformations per W2")
    a.add_argument("--seeds", type=int, nargs="+", default=[0])
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a.set_defaults(func=cmd_ablate_temperature)

    s = sub.add_parser(
        "benchmark",
        help="train, tune, sample and evaluate every head with one "
        "budget; Table-1-style table.md / table.html",
    )
    s.add_argument("data", help="training MD (its val split tunes tau)")
    s.add_argument("--reference", required=True, help="independent reference MD")
    add_budget_args(s, BenchmarkConfig)
    s.set_defaults(func=cmd_benchmark)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arbg", description="Autoregressive Boltzmann Generators")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    _add_data_commands(sub)
    _add_model_commands(sub)
    _add_experiment_commands(sub)
    add_wait_args(sub)
    apply_arg_checks(p)
    return p


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """`arbg system`, `md`, `corpus` and `bound`."""
    s = sub.add_parser("system", help="build a peptide system and print its description")
    add_system_args(s)
    s.add_argument("--out", help="write the built peptide (canonical order) to this PDB")
    s.set_defaults(func=cmd_system)

    s = sub.add_parser("md", help="reference MD with OpenMM (resumable)")
    add_system_args(s)
    s.add_argument("--out", help="output directory (default: cache dir)")
    add_config_args(s, MDConfig, skip=("bias",))
    b = s.add_argument_group("enhanced sampling (weighted data; see README)")
    b.add_argument(
        "--bias",
        choices=["none", "dihedrals"],
        default="none",
        help="dihedrals: well-tempered metadynamics on backbone phi (OpenMM's "
        "Metadynamics) for --bias-build-ns, then production under the frozen bias; "
        "frames get log-weights +V/kT",
    )
    b.add_argument("--bias-psi", action="store_true", help="bias psi as well as phi")
    b.add_argument(
        "--bias-residues",
        type=int,
        nargs="+",
        help="residues (1-based) whose dihedrals are biased (default: the central "
        "one; at most 3 biased dihedrals in all)",
    )
    add_config_args(b, BiasConfig, skip=("variables", "residues"), prefix="bias-")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_md)

    s = sub.add_parser(
        "corpus",
        help="MD corpus over many sequences (transferable ARBG; "
        "resumable, parallel, split by sequence)",
    )
    g = s.add_mutually_exclusive_group()
    g.add_argument("--sequences", help="comma-separated one-letter sequences, e.g. AA,AG,GYD")
    g.add_argument(
        "--length",
        type=int,
        help="all sequences of this many residues over the "
        "20 standard amino acids (or --sample K of them)",
    )
    s.add_argument("--sample", type=int, help="with --length: a random sample of K sequences")
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sample, the split and (hashed per sequence) the MD",
    )
    add_config_args(s, ClusterConfig, skip=("connect_timeout_s",))
    add_config_args(s, CorpusConfig, skip=("seed",))
    s.add_argument(
        "--max-sequences", type=int, help="stop after running this many sequences (resumable)"
    )
    s.add_argument("--out", help="corpus directory (default: cache dir); re-run to resume")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_corpus)

    s = sub.add_parser(
        "bound",
        help="discretization bound: E-W2 of de-quantized training data "
        "for a list of bin counts (how many bins a system needs)",
    )
    s.add_argument("data", help="dataset (arbg md dir, published layout, array/trajectory)")
    s.add_argument("--topology", help="PDB for array/trajectory data")
    s.add_argument("--bins", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    s.add_argument("--frames", type=int, default=5000, help="frames used (stride-subsampled)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", help="also write the rows to this JSON file")
    s.set_defaults(func=cmd_bound)


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    """`arbg evaluate`, `train`, `train-transferable`, `sample`, `smc`, `tune-temperature`."""
    s = sub.add_parser("evaluate", help="metrics and report of a sampling run against MD")
    s.add_argument("run_dir")
    s.add_argument("--reference", required=True, help="reference MD (not the training data)")
    s.add_argument("--topology", help="PDB for array/trajectory references")
    s.add_argument("--out", help="output directory (default RUN_DIR/report)")
    add_config_args(s, EvaluateConfig)
    add_config_args(s, ClusterConfig, skip=("connect_timeout_s",))
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("train", help="train an ARBG model on MD data (resumable)")
    s.add_argument("data", help="dataset (arbg md dir, published layout, array/trajectory)")
    s.add_argument("--topology", help="PDB for array/trajectory data")
    s.add_argument("--out", required=True, help="training directory (checkpoints, logs)")
    add_config_args(s, TrainConfig, skip=("model_overrides",))
    s.add_argument(
        "--head",
        default="bins",
        choices=["bins", "mol", "gmm", "givt"],
        help="output head: bins (categorical, ARBG), mol / gmm (discretized mixture "
        "of logistics / Gaussians, PixelCNN++ baselines), givt (continuous Gaussian "
        "mixture)",
    )
    s.add_argument(
        "--n-mixtures", type=int, default=10, help="mixture components K of the mol/gmm/givt heads"
    )
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "train-transferable",
        help="train a transferable model on an `arbg corpus` directory (resumable)",
    )
    s.add_argument("corpus", help="corpus directory (train split; val split for val NLL)")
    s.add_argument("--out", required=True, help="training directory (checkpoints, logs)")
    add_config_args(s, TrainConfig, skip=("model_overrides", "frame", "augment_rotations"))
    s.add_argument("--cond-layers", type=int, default=2, help="conditioning encoder depth")
    s.add_argument("--cond-heads", type=int, default=4, help="conditioning encoder heads")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train_transferable)

    s = sub.add_parser("sample", help="sample with exact log q and reweight (SNIS)")
    s.add_argument("checkpoint")
    s.add_argument("--out", required=True, help="run directory (extended if it exists)")
    s.add_argument("--sequence", help="for transferable checkpoints only")
    add_config_args(s, SampleConfig)
    s.add_argument("--quiet", action="store_true")
    add_config_args(s, ClusterConfig, skip=("connect_timeout_s",))
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser(
        "smc",
        help="autoregressive twisted SMC (peptides with residue boundaries, e.g. aaa, ace-aaa-nme)",
    )
    s.add_argument("checkpoint")
    s.add_argument("--out", required=True, help="run directory (new)")
    s.add_argument("--sequence", help="for transferable checkpoints only")
    add_config_args(s, SMCConfig, skip=("chirality",))
    add_config_args(s, ClusterConfig, skip=("connect_timeout_s",))
    s.set_defaults(func=cmd_smc)

    s = sub.add_parser("tune-temperature", help="sweep tau on the validation block")
    s.add_argument("checkpoint")
    s.add_argument("--data", required=True, help="the training dataset (its val split is used)")
    s.add_argument("--topology")
    s.add_argument("--split", default="val")
    add_config_args(s, TuneConfig)
    s.add_argument("--json")
    s.set_defaults(func=cmd_tune_temperature)


def _add_experiment_commands(sub: argparse._SubParsersAction) -> None:
    """`arbg demo`, `ablate`, `benchmark` and `zero-shot`."""
    s = sub.add_parser("demo", help="the end-to-end demo on alanine dipeptide")
    s.add_argument("--out", help="output directory (default runs/demo or runs/demo-quick)")
    add_config_args(s, DemoConfig, skip=("progress",))
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo)
    add_benchmark_parsers(sub)

    s = sub.add_parser(
        "zero-shot",
        help="evaluate a transferable checkpoint on held-out "
        "sequences of a corpus (sample, reweight, vs MD)",
    )
    s.add_argument("checkpoint", help="transferable checkpoint directory")
    s.add_argument("--corpus", required=True, help="arbg corpus directory with their MD")
    s.add_argument("--out", required=True, help="output directory (resumable)")
    add_config_args(s, ZeroShotConfig)
    s.set_defaults(func=cmd_zero_shot)


def cmd_zero_shot(args: argparse.Namespace) -> int:
    result = evaluate_zero_shot(
        args.checkpoint, args.corpus, args.out, config_from_args(ZeroShotConfig, args)
    )
    print((Path(args.out) / "table.md").read_text())
    print(f"{zero_shot_summary(result)}; table in {args.out}/table.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if not hasattr(args, "scheduler"):
            return int(args.func(args) or 0)
        with cluster_engine(args) as engine:  # --workers / --scheduler: Dask for the command
            args.engine = engine
            return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError) as e:  # bad input, file or file-system problem
        if args.verbose:
            log.exception("details")
        print(f"arbg {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except SimulationError as e:
        print(f"arbg {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"arbg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, the traceback with -v
        if args.verbose:
            raise
        print(
            f"arbg {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
            "(run with -v for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (OSError: strerror and file name)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.strerror}: {e.filename!r}"
    elif isinstance(e, KeyError):
        text = f"missing key {e}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
