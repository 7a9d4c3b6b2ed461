"""Loading conformation datasets from disk into canonical atom order.

Readable inputs (:func:`load_dataset`):

- an ``arbg md`` output directory (see :mod:`arbg.chem.md`);
- the published single-system layout: a directory ``{name}_{T}K/`` with
  ``{name}_{T}K_{train,val,test}.npy`` ([frames, atoms, 3], nm) and ``{name}_{T}K.pdb``
  (``../shared/reference.md``, "Published data layouts");
- a ``.npy`` / ``.npz`` array [frames, atoms, 3] in nm plus a PDB topology;
- any trajectory mdtraj reads (.dcd, .h5, .nc, ...) plus a topology.

Atoms are matched to the system's canonical order by residue (in chain order) and atom name,
with a clear error naming what cannot be matched. Splits are contiguous time blocks.

Every dataset carries per-frame log-weights (:attr:`Dataset.log_weights`, unnormalised): zeros
for equilibrium data; for biased or heated ``arbg md`` runs the exact log-weights towards the
target ensemble (:func:`arbg.chem.md.load_md_log_weights`); for a ``.npz`` with a ``log_weights``
array, that array. Weights follow their frames through the splits.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arbg.chem.md import contiguous_splits, load_md_frames, load_md_log_weights
from arbg.chem.systems import PeptideSystem, SystemSpec, build_system, make_spec, system_from_pdb
from arbg.reweight import kish_ess

log = logging.getLogger(__name__)

_NAME_ALIASES = {
    "HN": "H",
    "1H": "H1",
    "2H": "H2",
    "3H": "H3",
    "OT1": "O",
    "OT2": "OXT",
    "O1": "O",
    "O2": "OXT",
}
_CAP_ALIASES = {
    "ACE": {"H1": "HH31", "H2": "HH32", "H3": "HH33", "C1": "CH3", "CA": "CH3"},
    "NME": {"C": "CH3", "CA": "CH3", "H1": "HH31", "H2": "HH32", "H3": "HH33", "HN": "H"},
}


@dataclass
class Dataset:
    """Frames of one system in canonical order.

    Attributes
    ----------
    positions : [F, n_atoms, 3] float32, nm, canonical order.
    system : the PeptideSystem (force field, descriptors, energies).
    splits : name -> [start, stop) frame ranges (contiguous time blocks).
    metadata : what the source recorded (dict).
    log_weights : [F] float64 unnormalised frame log-weights towards the target ensemble
        (zeros = equilibrium frames; None given = zeros).
    """

    positions: np.ndarray
    system: PeptideSystem
    splits: dict[str, list[int]]
    metadata: dict = field(default_factory=dict)
    log_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.log_weights is None:
            self.log_weights = np.zeros(len(self.positions))
        self.log_weights = np.asarray(self.log_weights, dtype=np.float64).reshape(-1)
        if len(self.log_weights) != len(self.positions):
            raise ValueError(
                f"{len(self.log_weights)} log-weights for {len(self.positions)} frames"
            )
        if np.isnan(self.log_weights).any() or np.isposinf(self.log_weights).any():
            raise ValueError("log-weights must not be NaN or +inf")

    @property
    def weighted(self) -> bool:
        """Whether the frames carry non-uniform weights."""
        lw = self.log_weights
        return bool(len(lw)) and bool(np.any(lw != lw[0]))

    def split(self, name: str) -> np.ndarray:
        """Frames [f, n_atoms, 3] (nm) of split `name`, a contiguous time block."""
        a, b = self._range(name)
        return self.positions[a:b]

    def split_log_weights(self, name: str) -> np.ndarray:
        """Log-weights [f] of the frames of split `name` (aligned with :meth:`split`)."""
        a, b = self._range(name)
        return self.log_weights[a:b]

    def kish_ess(self, name: str | None = None) -> float:
        """Kish effective sample size of the frame weights (of one split, or all frames)."""

        return kish_ess(self.log_weights if name is None else self.split_log_weights(name))

    def _range(self, name: str) -> tuple[int, int]:
        if name not in self.splits:
            raise KeyError(f"no split {name!r}; available: {', '.join(self.splits)}")
        a, b = self.splits[name]
        return a, b

    def __len__(self) -> int:
        return len(self.positions)


def check_frames(frames: np.ndarray, n_atoms: int, source: str = "data") -> np.ndarray:
    """Validate a [F, n_atoms, 3] frame array (shape, finiteness); returns float32."""
    frames = np.asarray(frames)
    if frames.ndim == 2 and frames.shape[1] == 3 * n_atoms:
        frames = frames.reshape(len(frames), n_atoms, 3)
    if frames.ndim != 3 or frames.shape[1:] != (n_atoms, 3):
        raise ValueError(
            f"{source}: frames have shape {list(frames.shape)}, the topology has "
            f"{n_atoms} atoms: expected [frames, {n_atoms}, 3] (nm)"
        )
    bad = ~np.isfinite(frames).all(axis=(1, 2))
    if bad.any():
        raise ValueError(
            f"{source}: {int(bad.sum())} frame(s) contain NaN/inf coordinates "
            f"(first: frame {int(np.argmax(bad))})"
        )
    return frames.astype(np.float32, copy=False)


def match_atoms(topology, system: PeptideSystem, source: str = "topology") -> np.ndarray:
    """Index array `idx` with canonical = data[:, idx] for data in `topology`'s atom order.

    `topology` is an mdtraj Topology. Residues are matched in chain order (caps included),
    atoms by name (common aliases such as HN -> H are accepted).
    """
    data_res = [r for r in topology.residues if r.name not in ("HOH", "WAT", "SOL")]
    sys_res = list(system.omm_topology.residues())
    if len(data_res) != len(sys_res):
        raise ValueError(
            f"{source}: {len(data_res)} residues, the system {system.name!r} has "
            f"{len(sys_res)} ({' '.join(r.name for r in sys_res)})"
        )
    lookup: dict[tuple[int, str], int] = {}
    for ri, res in enumerate(data_res):
        aliases = _CAP_ALIASES.get(res.name, _NAME_ALIASES)
        # mdtraj's standard names turn an N-terminal H1 into H; H2 and H3 beside it mean H1
        names = {a.name for a in res.atoms}
        n_term_h = {"H", "H2", "H3"} <= names and "H1" not in names
        for a in res.atoms:
            name = (
                "H1"
                if n_term_h and a.name == "H"
                else aliases.get(a.name, _NAME_ALIASES.get(a.name, a.name))
            )
            lookup[(ri, name)] = a.index
    idx = np.empty(system.n_atoms, dtype=np.int64)
    missing = []
    res_pos = {r.index: i for i, r in enumerate(sys_res)}
    for i, a in enumerate(system.omm_topology.atoms()):
        key = (res_pos[a.residue.index], a.name)
        if key not in lookup:
            missing.append(f"{a.residue.name}{key[0] + 1}:{a.name}")
        else:
            idx[i] = lookup[key]
    if missing:
        raise ValueError(
            f"{source}: cannot match atom(s) {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''} to the system {system.name!r}"
        )
    if topology.n_atoms != system.n_atoms:
        raise ValueError(f"{source}: {topology.n_atoms} atoms, the system has {system.n_atoms}")
    return idx


def _system_for_pdb(pdb: Path, system: PeptideSystem | str | None) -> PeptideSystem:
    if isinstance(system, PeptideSystem):
        return system
    if isinstance(system, str):
        return build_system(make_spec(system))
    return system_from_pdb(pdb)


def load_dataset(
    path: str | Path, topology: str | Path | None = None, system: PeptideSystem | str | None = None
) -> Dataset:
    """Load frames from any supported source (module docstring) into canonical order.

    Parameters
    ----------
    path : an ``arbg md`` directory, a published-layout directory, a .npy/.npz file or a
        trajectory file.
    topology : PDB (or other mdtraj topology) for array and trajectory files.
    system : a PeptideSystem or preset name giving the force field; default: the one recorded
        by ``arbg md``, else built from the PDB with default settings.
    """
    import mdtraj

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_dir() and (path / "metadata.json").exists():
        meta = json.loads((path / "metadata.json").read_text())
        if isinstance(system, PeptideSystem):
            sys_ = system
        else:
            sys_ = build_system(SystemSpec.from_dict(meta["system"]))
        frames = check_frames(load_md_frames(path), sys_.n_atoms, str(path))
        splits = contiguous_splits(len(frames), _fractions(meta.get("splits"), meta))
        ds = Dataset(frames, sys_, splits, meta, load_md_log_weights(path))
        if meta.get("log_weights"):
            log.info(
                "%s: weighted frames (sampled at %s K for %s K%s), Kish ESS %.1f of %d",
                path,
                meta.get("sampling_temperature_k"),
                meta.get("target_temperature_k"),
                ", biased" if meta.get("bias") else "",
                ds.kish_ess(),
                len(ds),
            )
        return ds
    if path.is_dir():
        pdbs = sorted(path.glob("*.pdb"))
        trains = sorted(path.glob("*_train.npy"))
        if not pdbs or not trains:
            raise ValueError(
                f"{path}: not an arbg md directory (no metadata.json) and not the "
                "published layout ({name}_{T}K_{train,val,test}.npy + .pdb)"
            )
        stem = re.sub(r"_train\.npy$", "", trains[0].name)
        pdb = path / f"{stem}.pdb" if (path / f"{stem}.pdb").exists() else pdbs[0]
        sys_ = _system_for_pdb(pdb, system)
        idx = match_atoms(mdtraj.load_topology(str(pdb)), sys_, str(pdb))
        parts, splits, start = [], {}, 0
        for name in ("train", "val", "test"):
            f = path / f"{stem}_{name}.npy"
            if f.exists():
                arr = check_frames(np.load(f), sys_.n_atoms, str(f))[:, idx]
                parts.append(arr)
                splits[name] = [start, start + len(arr)]
                start += len(arr)
        return Dataset(np.concatenate(parts), sys_, splits, {"source": str(path)})
    if topology is None:
        raise ValueError(f"{path}: a topology (PDB) is needed to read this file (--topology)")
    top_path = Path(topology)
    if not top_path.exists():
        raise FileNotFoundError(f"topology not found: {top_path}")
    sys_ = _system_for_pdb(top_path, system)
    top = mdtraj.load_topology(str(top_path))
    idx = match_atoms(top, sys_, str(top_path))
    log_w = None
    if path.suffix in (".npy", ".npz"):
        arr = np.load(path)
        if path.suffix == ".npz":
            if "log_weights" in arr.files:
                log_w = arr["log_weights"]
            key = (
                "positions"
                if "positions" in arr.files
                else next(k for k in arr.files if k != "log_weights")
            )
            arr = arr[key]
        frames = check_frames(arr, top.n_atoms, str(path))
    else:
        frames = mdtraj.load(str(path), top=str(top_path)).xyz
    frames = check_frames(frames[:, idx], sys_.n_atoms, str(path))
    return Dataset(frames, sys_, contiguous_splits(len(frames)), {"source": str(path)}, log_w)


def _fractions(splits: dict | None, meta: dict) -> dict[str, float] | None:
    if not splits:
        return None
    total = meta.get("n_frames") or max(b for _, b in splits.values())
    return {k: (b - a) / total for k, (a, b) in splits.items()}
