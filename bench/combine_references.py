"""Join independent weighted MD runs into one reference file (``.npz`` + ``.pdb``).

Usage: python bench/combine_references.py OUT.npz RUN [RUN ...]

RUN is an ``arbg md`` directory or an ``.npz`` with ``positions`` and ``log_weights`` (for
example an earlier combined or shipped reference, with its PDB of the same name beside it).

The runs are joined by :func:`arbg.data.datasets.join_datasets`: ``arbg md`` runs at their target
temperature (plain or under a frozen bias) are pooled by MBAR, every frame scored under every
run's bias; other inputs (an ``.npz`` whose bias is unknown) are each self-normalised and mixed
in proportion to their Kish ESS. Frames are concatenated in run order, so with two runs of equal
length the first and second halves of the file are the two runs: the evaluation's half-vs-half
floor is then a floor between independent seeds.

Writes OUT.npz (``positions`` [F, atoms, 3] float32 nm, ``log_weights`` [F] float64, ``runs``
[F] int run index) and OUT.pdb (the first run's topology), and prints per-run and combined
frame counts, Kish ESS and P(phi > 0) of every residue with a phi.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from arbg.chem.geometry import dihedrals
from arbg.chem.systems import build_system
from arbg.data.datasets import join_datasets, load_dataset
from arbg.files import atomic_save_npz_compressed
from arbg.reweight import kish_ess, normalize_log_weights


def _p_phi_positive(positions: np.ndarray, lw: np.ndarray, phi_idx: np.ndarray) -> list[float]:
    w = np.exp(lw - lw.max())
    w /= w.sum()
    phi = dihedrals(positions, phi_idx)  # [F, n_phi] rad
    return [float(w @ (phi[:, k] > 0)) for k in range(phi.shape[1])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="OUT.npz")
    ap.add_argument("runs", type=Path, nargs="+", help="arbg md run directories")
    args = ap.parse_args()

    dirs = [r for r in args.runs if r.is_dir()]
    names = {json.loads((r / "metadata.json").read_text())["system"]["name"] for r in dirs}
    if len(names) != 1:
        raise SystemExit(f"need >= 1 arbg md directory, all of one system; got {sorted(names)}")
    system = build_system(names.pop())
    parts = []
    for run in args.runs:
        d = load_dataset(run, system=system)
        p = _p_phi_positive(d.positions, d.log_weights, system.phi_indices)
        print(f"{run}: {len(d)} frames, Kish ESS {d.kish_ess():.0f}, P(phi>0) {np.round(p, 4)}")
        parts.append(replace(d, splits={"all": [0, len(d)]}))  # keep the run order
    joined = join_datasets(parts)
    positions, lw = joined.positions, normalize_log_weights(joined.log_weights)
    p = _p_phi_positive(positions, lw, system.phi_indices)
    print(
        f"combined ({joined.metadata['joined_weights']}): {len(positions)} frames, Kish ESS "
        f"{kish_ess(lw):.0f}, P(phi>0) {np.round(p, 4).tolist()}"
    )
    runs = np.repeat(np.arange(len(parts)), [len(d) for d in parts])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz_compressed(
        args.out, positions=positions.astype(np.float32), log_weights=lw, runs=runs
    )
    shutil.copyfile(dirs[0] / "topology.pdb", args.out.with_suffix(".pdb"))
    print(f"wrote {args.out} and {args.out.with_suffix('.pdb')}")


if __name__ == "__main__":
    main()
