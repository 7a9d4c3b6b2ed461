"""`arbg system`, `md`, `corpus` and `bound`: building systems, reference MD and its data."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from arbg.chem.bias import BiasConfig
from arbg.chem.md import MDConfig, run_md
from arbg.cli._common import add_system_args, default_cache_dir, system_from_args
from arbg.cli.configargs import add_config_args, config_from_args
from arbg.cluster import ClusterConfig
from arbg.data.corpora import CorpusConfig, run_corpus
from arbg.data.datasets import load_dataset, weighting_summary
from arbg.data.sequences import kmer_sequences, parse_sequences
from arbg.files import atomic_write_json, lock_dir
from arbg.nn.coordinates import fit_standardization, format_bound_rows, quantization_bound


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
        data = load_dataset(out, system=system)
        sampling_k = cfg.temperature_k or system.temperature_k
        print("\n".join(weighting_summary(data, sampling_k, bias is not None, out)))
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
    print("\n".join(format_bound_rows(rows)))
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


def add_data_commands(sub: argparse._SubParsersAction) -> None:
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
