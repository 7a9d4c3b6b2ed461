"""`arbg demo`, `ablate bins|temperature`, `benchmark` and `zero-shot`: the end-to-end jobs of
:mod:`arbg.experiments`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from arbg.cli._common import command_line
from arbg.cli.configargs import add_config_args, config_from_args
from arbg.experiments.ablations import (
    AblateTemperatureConfig,
    ablate_bins,
    ablate_temperature,
    format_bins_rows,
    format_temperature_rows,
)
from arbg.experiments.benchmark import BenchmarkConfig, run_benchmark
from arbg.experiments.demo import DemoConfig, DemoNotTrained, format_summary, run_demo
from arbg.experiments.stages import BudgetConfig
from arbg.experiments.zeroshot import ZeroShotConfig, evaluate_zero_shot, zero_shot_summary
from arbg.files import lock_dir


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


def _print_result(lines: list[str], res: dict) -> None:
    """An experiment's table (``lines``), then the files it wrote."""
    print("\n".join(lines))
    for key, path in res["paths"].items():
        print(f"{key}: {path}")


def cmd_ablate_bins(args: argparse.Namespace) -> int:
    res = ablate_bins(
        args.data,
        args.out,
        args.bins,
        config_from_args(BudgetConfig, args),
        reference=args.reference,
        topology=args.topology,
        bound_frames=args.bound_frames,
        command=command_line(args),
    )
    _print_result(format_bins_rows(res["rows"]), res)
    return 0


def cmd_ablate_temperature(args: argparse.Namespace) -> int:
    res = ablate_temperature(
        args.checkpoint,
        args.reference,
        args.out,
        config_from_args(AblateTemperatureConfig, args),
        topology=args.topology,
        command=command_line(args),
    )
    _print_result([*format_temperature_rows(res["rows"]), f"best tau: {res['best_tau']}"], res)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    cfg = config_from_args(BenchmarkConfig, args)
    res = run_benchmark(
        args.data,
        args.reference,
        args.out,
        cfg,
        topology=args.topology,
        command=command_line(args),
    )
    _print_result([Path(res["paths"]["table_md"]).read_text()], res)
    return 0


def cmd_zero_shot(args: argparse.Namespace) -> int:
    result = evaluate_zero_shot(
        args.checkpoint, args.corpus, args.out, config_from_args(ZeroShotConfig, args)
    )
    print((Path(args.out) / "table.md").read_text())
    print(zero_shot_summary(result))
    print(f"table: {Path(args.out) / 'table.md'}")
    return 0


def add_budget_args(
    p: argparse.ArgumentParser, cls: type = BudgetConfig, skip: tuple[str, ...] = ()
) -> None:
    """Output, topology and the budget flags (from ``cls``) of `benchmark` and `ablate bins`."""
    p.add_argument("--topology", help="PDB for array/trajectory data and reference")
    p.add_argument("--out", required=True, help="output directory (re-running resumes)")
    add_config_args(p, cls, skip=("model_overrides", "train_overrides", *skip))


def _add_ablate_commands(sub: argparse._SubParsersAction) -> None:
    """`arbg ablate bins|temperature` (see arbg.experiments.ablations)."""
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
    a.add_argument("--reference", required=True, help="reference MD")
    a.add_argument("--topology", help="PDB for an array/trajectory reference")
    a.add_argument("--out", required=True)
    add_config_args(a, AblateTemperatureConfig)
    a.set_defaults(func=cmd_ablate_temperature)


def add_experiment_commands(sub: argparse._SubParsersAction) -> None:
    """`arbg demo`, `ablate`, `benchmark` and `zero-shot`."""
    s = sub.add_parser("demo", help="the end-to-end demo on alanine dipeptide")
    s.add_argument("--out", help="output directory (default runs/demo or runs/demo-quick)")
    add_config_args(s, DemoConfig, skip=("progress",))
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo)

    _add_ablate_commands(sub)
    s = sub.add_parser(
        "benchmark",
        help="train, tune, sample and evaluate every head with one "
        "budget; Table-1-style table.md / table.html",
    )
    s.add_argument("data", help="training MD (its val split tunes tau)")
    s.add_argument("--reference", required=True, help="independent reference MD")
    add_budget_args(s, BenchmarkConfig)
    s.set_defaults(func=cmd_benchmark)

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
