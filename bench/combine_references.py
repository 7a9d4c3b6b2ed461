"""Join independent weighted MD runs into one reference file (``.npz`` + ``.pdb``).

Usage: python bench/combine_references.py OUT.npz RUN [RUN ...]

RUN is an ``arbg md`` directory or an ``.npz`` with ``positions`` and ``log_weights`` (for
example an earlier combined or shipped reference, with its PDB of the same name beside it).

Each ``arbg md`` run carries exact but unnormalised frame log-weights (``+V/kT`` under its own
frozen bias, see :mod:`arbg.chem.bias`). Two runs with two different biases have different
normalising constants, so their raw weights cannot simply be concatenated. Each run is
self-normalised on its own (each one is then a consistent estimator of the target ensemble) and
the runs are mixed in proportion to their Kish ESS, the minimum-variance combination of
independent estimators. Frames are concatenated in run order, so with two runs of equal length
the first and second halves of the file are the two runs: the evaluation's half-vs-half floor
is then a floor between independent seeds.

Writes OUT.npz (``positions`` [F, atoms, 3] float32 nm, ``log_weights`` [F] float64, ``runs``
[F] int run index) and OUT.pdb (the first run's topology), and prints per-run and combined
frame counts, Kish ESS and P(phi > 0) of every residue with a phi.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from arbg.chem.geometry import dihedrals
from arbg.chem.md import load_md_frames, load_md_log_weights
from arbg.chem.systems import build_system
from arbg.data.datasets import load_dataset
from arbg.files import atomic_save_npz_compressed
from arbg.reweight import kish_ess


def _normalised(lw: np.ndarray) -> np.ndarray:
    m = lw.max()
    return lw - (m + np.log(np.exp(lw - m).sum()))


def _p_phi_positive(positions: np.ndarray, lw: np.ndarray, phi_idx: np.ndarray) -> list[float]:
    w = np.exp(lw - lw.max())
    w /= w.sum()
    phi = dihedrals(positions, phi_idx)  # [F, n_phi] rad
    return [float(w @ (phi[:, k] > 0)) for k in range(phi.shape[1])]


def _load_npz(path: Path, system) -> tuple[np.ndarray, np.ndarray]:
    """Frames and log-weights of a reference .npz, checked against `system` (canonical order)."""
    ds = load_dataset(path, system=system)
    return ds.positions, ds.log_weights


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
    pos, lws, idx = [], [], []
    for i, run in enumerate(args.runs):
        if run.is_dir():
            x, lw = load_md_frames(run), load_md_log_weights(run)
        else:
            x, lw = _load_npz(run, system)
        lw = _normalised(lw)
        ess = kish_ess(lw)
        p = _p_phi_positive(x, lw, system.phi_indices)
        print(f"{run}: {len(x)} frames, Kish ESS {ess:.0f}, P(phi>0) {np.round(p, 4).tolist()}")
        pos.append(x.astype(np.float32))
        lws.append(lw + np.log(ess))
        idx.append(np.full(len(x), i))
    positions, lw = np.concatenate(pos), np.concatenate(lws)
    lw = _normalised(lw)
    p = _p_phi_positive(positions, lw, system.phi_indices)
    print(
        f"combined: {len(positions)} frames, Kish ESS {kish_ess(lw):.0f}, "
        f"P(phi>0) {np.round(p, 4).tolist()}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz_compressed(
        args.out, positions=positions, log_weights=lw, runs=np.concatenate(idx)
    )
    shutil.copyfile(dirs[0] / "topology.pdb", args.out.with_suffix(".pdb"))
    print(f"wrote {args.out} and {args.out.with_suffix('.pdb')}")


if __name__ == "__main__":
    main()
