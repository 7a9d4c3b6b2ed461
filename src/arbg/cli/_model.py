"""`arbg train`, `train-transferable`, `sample`, `mixture`, `smc`, `finetune`,
`tune-temperature` and `evaluate`: the model's commands, from training to the report of a run."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from arbg import checks
from arbg.cli.configargs import add_config_args, config_from_args
from arbg.cluster import ClusterConfig
from arbg.data.datasets import load_dataset, load_datasets
from arbg.data.loaders import load_corpus
from arbg.eval.evaluate import EvaluateConfig, evaluate_run
from arbg.eval.report import format_metrics, format_run
from arbg.experiments.tuning import TuneConfig, format_tune_rows, tune_temperature
from arbg.files import atomic_write_json, lock_dir
from arbg.nn.conditioning import ConditioningConfig
from arbg.sampling.config import SampleConfig, SMCConfig
from arbg.sampling.finetune import FinetuneConfig, finetune_checkpoint
from arbg.sampling.runs import MixtureParts, run_sampling, run_smc
from arbg.sampling.sampler import resolve_batch_size
from arbg.train.checkpoints import (
    is_mixture,
    load_checkpoint,
    load_mixture,
    sign_checkpoint,
    write_mixture,
)
from arbg.train.config import TrainConfig
from arbg.train.trainer import train
from arbg.train.transferable import train_transferable


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
    data = load_datasets(args.data, topology=args.topology)
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
    if is_mixture(args.checkpoint):  # a mixture of proposals (arbg mixture)
        if args.sequence is not None:
            raise checks.ArgumentError("--sequence is for transferable checkpoints, not a mixture")
        members, weights = load_mixture(args.checkpoint, device=cfg.device)
        if cfg.batch_size == "auto":
            raise checks.ArgumentError("--batch-size auto: give a number for a mixture")
        print(f"mixture of {len(members)} proposals, weights {[round(w, 4) for w in weights]}")
        ck: Any = MixtureParts(members, weights, str(Path(args.checkpoint).resolve()))
    else:
        ck = load_checkpoint(args.checkpoint, device=cfg.device, sequence=args.sequence)
    if cfg.batch_size == "auto":
        n = resolve_batch_size(ck.model, "auto", ck.standardization.n_coords, cfg.device, cfg.dtype)
        cfg = dataclasses.replace(cfg, batch_size=n)
        print(f"batch size (auto, {cfg.dtype} on {cfg.device}): {n}")
    summary = run_sampling(ck, args.out, cfg, progress=not args.quiet, wait=args.wait)
    print(format_run(summary, args.out))
    return 0


def cmd_mixture(args: argparse.Namespace) -> int:
    out = write_mixture(args.out, args.checkpoints, args.weights)
    print(f"mixture of {len(args.checkpoints)} proposals: {out} (sample with: arbg sample {out})")
    return 0


def cmd_smc(args: argparse.Namespace) -> int:
    cfg = config_from_args(SMCConfig, args)
    ck = load_checkpoint(args.checkpoint, device=cfg.device, sequence=args.sequence)
    summary = run_smc(ck, args.out, cfg, wait=args.wait, progress=not args.quiet)
    print(format_run(summary, args.out))
    print(f"summary: {Path(args.out) / 'summary.json'} (all SMC counts)")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    cfg = config_from_args(FinetuneConfig, args)
    data = load_datasets(args.data, topology=args.topology)
    res = finetune_checkpoint(args.checkpoint, data, args.out, cfg, wait=args.wait)
    for r in res["log"]:
        print(
            f"round {r['round']:3d}: ESS {r['ess_unclipped']:8.1f} unclipped of "
            f"{cfg.samples_per_round}, beta {r['beta']:.3f}, median u {r['median_u']:9.2f} kT, "
            f"loss {r['loss_first']:.4f} -> {r['loss_last']:.4f} nats/coordinate"
        )
    print(f"checkpoints: {res['best']} (best ESS), {res['last']} (resume point)")
    return 0


def cmd_sign_checkpoint(args: argparse.Namespace) -> int:
    sums = sign_checkpoint(args.checkpoint)
    print(f"signed {args.checkpoint}: sha256 of {len(sums)} files in checksums.json")
    return 0


def cmd_tune_temperature(args: argparse.Namespace) -> int:
    cfg = config_from_args(TuneConfig, args)
    ck = load_checkpoint(args.checkpoint, device=cfg.device)
    data = load_dataset(args.data, topology=args.topology, system=ck.system)
    result = tune_temperature(
        ck, data.split(args.split), cfg, validation_log_weights=data.split_log_weights(args.split)
    )
    print("\n".join(format_tune_rows(result["rows"])))
    print(f"best tau: {result['best_tau']}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


def add_model_commands(sub: argparse._SubParsersAction) -> None:
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
    s.add_argument(
        "data",
        nargs="+",
        help="dataset (arbg md dir, published layout, array/trajectory); several runs of one "
        "system are joined split by split, each run's weights self-normalised",
    )
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
        "mixture",
        help="a mixture of trained proposals with its exact log q (arbg sample takes it)",
    )
    s.add_argument("checkpoints", nargs="+", help="single-system checkpoints of one system")
    s.add_argument("--out", required=True, help="the mixture directory (new)")
    s.add_argument(
        "--weights", type=float, nargs="+", help="one weight per checkpoint (default: equal)"
    )
    s.set_defaults(func=cmd_mixture)

    s = sub.add_parser(
        "smc",
        help="autoregressive twisted SMC (peptides with residue boundaries, e.g. aaa, ace-aaa-nme)",
    )
    s.add_argument("checkpoint")
    s.add_argument("--out", required=True, help="run directory (new)")
    s.add_argument("--sequence", help="for transferable checkpoints only")
    add_config_args(s, SMCConfig)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(s, ClusterConfig, skip=("connect_timeout_s",))
    s.set_defaults(func=cmd_smc)

    s = sub.add_parser(
        "finetune",
        help="energy-aware fine-tuning on the model's own reweighted samples (resumable)",
    )
    s.add_argument("checkpoint", help="a trained single-system checkpoint")
    s.add_argument(
        "data", nargs="+", help="its MD training data, one run or several (--data-fraction)"
    )
    s.add_argument("--topology", help="PDB for array/trajectory data")
    s.add_argument("--out", required=True, help="directory for best/, last/ and the log")
    add_config_args(s, FinetuneConfig)
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser(
        "sign-checkpoint",
        help="write checksums.json for a checkpoint of your own that has none (loading refuses "
        "unsigned checkpoints)",
    )
    s.add_argument("checkpoint")
    s.set_defaults(func=cmd_sign_checkpoint)

    s = sub.add_parser("tune-temperature", help="sweep tau on the validation block")
    s.add_argument("checkpoint")
    s.add_argument("--data", required=True, help="the training dataset (its val split is used)")
    s.add_argument("--topology")
    s.add_argument("--split", default="val")
    add_config_args(s, TuneConfig)
    s.add_argument("--json")
    s.set_defaults(func=cmd_tune_temperature)
