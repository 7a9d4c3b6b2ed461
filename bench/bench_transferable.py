"""Sampling throughput of the transferable ARBG sampler (ROBIN) for peptides of 2, 4 and 8 residues.

For each preset one :class:`arbg.nn.conditioning.TransferableARBG` with random weights (speed does
not depend on them) is built, sized for the longest peptide benchmarked, and bound to each
sequence the way ``arbg sample CHECKPOINT --sequence SEQ`` does it: the peptide is built with the
transferable corpus convention (:meth:`arbg.data.corpora.CorpusConfig.spec`, not minimised), encoded
(:func:`arbg.nn.conditioning.encode_system`, one global std and one symmetric binning) and bound
(:class:`arbg.nn.conditioning.BoundModel`, which runs the conditioning encoder once). Reported per
preset and sequence:

* ``bind ms``: the one-time cost of binding (system encoding + conditioning encoder), best of
  ``--repeats``;
* ``samples/s``: ``--batch`` divided by the best time of :func:`arbg.sampling.sampler.generate`
with the KV
  cache, as ``arbg sample`` runs it (bins, de-quantization, exact log q, chirality check
  ``"zero"``);
* atoms, tokens (decoder steps per sample: ``3 * atoms - 6``, the gauge frame drops the six
  fixed coordinates of the N, CA, C gauge atoms) and parameter count (decoder + conditioning
  encoder).

Default sequences are the first 2, 4 and 8 letters of ``GAVLIFPW`` (deterministic; override
with ``--lengths`` or with explicit ``--sequences``).

Reference: the paper's Table A.2 reports 260, 87 and 29 samples/s for 2, 4 and 8 residues
(averaged over 30 systems) with ROBIN, the 132M-parameter transferable model (16 layers, 768
channels, 8192 bins, Table A.5) on a GPU; ``--presets large --n-bins 8192`` is the closest
setting here (103M parameters with the conditioning encoder: the same depth, width and heads;
the paper's count is larger). On a CPU use ``tiny`` / ``small``: ``large`` runs there, but only
at tiny batches (about 1 sample/s for ``GA`` on one thread).

Usage: ``python bench/bench_transferable.py [--presets tiny small] [--lengths 2 4 8]
[--sequences GA GAVL ...] [--batch 256] [--n-bins 4096] [--device cuda] [--threads N]
[--repeats 2] [--json PATH]``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_sample import _timed, device_label  # bench/ is on sys.path when this script runs

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES, PeptideSystem, build_system
from arbg.data.corpora import CorpusConfig
from arbg.data.sequences import parse_sequences
from arbg.files import atomic_write_json
from arbg.nn.conditioning import BoundModel, ConditioningConfig, TransferableARBG, encode_system
from arbg.nn.coordinates import Binning, Standardization
from arbg.nn.model import ModelConfig
from arbg.sampling.sampler import generate

DEFAULT_MOTIF = "GAVLIFPW"
STD_NM = 0.35  # the paper's transferable std (Table A.5); any value works with random weights
MARGIN = 1.2  # bin range: margin times the largest gauge coordinate of the reference structures


def default_sequence(length: int) -> str:
    """The first ``length`` letters of :data:`DEFAULT_MOTIF`, repeated if needed."""
    if length < 1:
        raise ValueError(f"a peptide needs at least 1 residue, got {length}")
    reps = -(-length // len(DEFAULT_MOTIF))
    return (DEFAULT_MOTIF * reps)[:length]


def build_peptide(sequence: str) -> PeptideSystem:
    """The peptide with the transferable corpus's force field and termini (not minimised)."""
    return build_system(CorpusConfig().spec(sequence), minimize=False)


def shared_binning(systems: list[PeptideSystem], n_bins: int) -> Binning:
    """One symmetric binning over the gauge coordinates of all reference structures."""
    r = 0.0
    for s in systems:
        std = Standardization(STD_NM, s.n_atoms, "gauge", s.gauge_atoms)
        r = max(r, std.atom_radius(std.forward(s.positions[None])))
    return Binning(int(n_bins), -MARGIN * r, MARGIN * r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--presets",
        nargs="+",
        default=["tiny", "small"],
        help="model presets (tiny, small, medium, large = the paper's size)",
    )
    ap.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=[2, 4, 8],
        help=f"peptide lengths (residues); sequences are prefixes of {DEFAULT_MOTIF}",
    )
    ap.add_argument(
        "--sequences",
        nargs="+",
        default=None,
        help="explicit one-letter sequences (override --lengths)",
    )
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n-bins", type=int, default=4096)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    seqs = (
        parse_sequences(args.sequences)
        if args.sequences
        else [default_sequence(k) for k in args.lengths]
    )
    systems = [build_peptide(s) for s in seqs]
    binning = shared_binning(systems, args.n_bins)
    dev = args.device
    name = device_label(dev)
    print(
        f"transferable sampler: sequences {', '.join(seqs)}, {args.n_bins} bins, "
        f"batch {args.batch}, device {name}, torch {torch.__version__}"
    )
    print(
        f"{'preset':8s} {'params':>8s} {'sequence':>10s} {'res':>4s} {'atoms':>6s} "
        f"{'tokens':>7s} {'bind ms':>9s} {'samples/s':>10s}"
    )
    rows: list[dict] = []
    for preset in args.presets:
        rows += _bench_preset(preset, args, systems, binning, dev)
    if args.json:
        atomic_write_json(
            args.json,
            {
                "device": name,
                "torch": torch.__version__,
                "n_bins": args.n_bins,
                "batch": args.batch,
                "repeats": args.repeats,
                "std_nm": STD_NM,
                "binning": binning.to_dict(),
                "rows": rows,
            },
        )
        print(f"wrote {args.json}")


def _bench_preset(
    preset: str, args: argparse.Namespace, systems: list[PeptideSystem], binning: Binning, dev: str
) -> list[dict]:
    max_res = max(s.n_residues for s in systems)
    cfg = ModelConfig.preset(
        preset,
        n_bins=args.n_bins,
        max_atoms=max(s.n_atoms for s in systems),
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
    )
    cond = ConditioningConfig(max_residues=max(ConditioningConfig.max_residues, max_res))
    torch.manual_seed(0)
    net = TransferableARBG(cfg, cond).to(dev).eval()
    n_params = net.num_params()
    b = args.batch
    rows = []
    for system in systems:

        def bind(system: PeptideSystem = system) -> BoundModel:
            return BoundModel(net, encode_system(system, STD_NM, binning)).eval()

        bind()  # warm-up
        t_bind, bound = _timed(bind, dev, args.repeats)
        std = encode_system(system, STD_NM, binning).standardization
        D = std.n_coords
        chir = np.asarray(system.chirality_atoms)

        def run(
            n: int, bound: object = bound, std: Standardization = std, chir: np.ndarray = chir
        ) -> object:
            return generate(
                bound,
                binning,
                std,
                n,
                1.0,
                seed=0,
                chirality_atoms=chir,
                chirality="zero",
                batch_size=n,
                device=dev,
            )

        run(min(8, b))  # warm-up
        t, _ = _timed(lambda run=run: run(b), dev, args.repeats)
        seq = system.spec.sequence
        row = {
            "preset": preset,
            "params": n_params,
            "sequence": seq,
            "n_residues": system.n_residues,
            "n_atoms": system.n_atoms,
            "n_tokens": D,
            "batch": b,
            "bind_ms": 1e3 * t_bind,
            "sample_s": t,
            "samples_per_s": b / t,
        }
        rows.append(row)
        print(
            f"{preset:8s} {n_params / 1e6:7.2f}M {seq:>10s} {system.n_residues:4d} "
            f"{system.n_atoms:6d} {D:7d} {1e3 * t_bind:9.2f} "
            f"{b / t:10.1f}",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
