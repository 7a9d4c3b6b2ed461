"""Loading conformation datasets from disk into canonical atom order.

Readable inputs (:func:`load_dataset`):

- an ``arbg md`` output directory (see :mod:`arbg.chem.md`);
- the published single-system layout: a directory ``{name}_{T}K/`` with
  ``{name}_{T}K_{train,val,test}.npy`` ([frames, atoms, 3], nm) and ``{name}_{T}K.pdb``
  (``docs/references.md``, "Published data layouts");
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

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from arbg import checks
from arbg.chem.geometry import dihedrals
from arbg.chem.md import contiguous_splits, load_md_frames, load_md_log_weights, md_bias_kt
from arbg.chem.systems import PeptideSystem, SystemSpec, build_system, make_spec, system_from_pdb
from arbg.files import ascii_path
from arbg.reweight import kish_ess, mixture_log_weights, normalize_log_weights

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
        source = str(self.metadata.get("source", "dataset")) if self.metadata else "dataset"
        checks.coordinates_in_nm(source, self.positions, bonds=_bonds(self.system))

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

    def identity(self) -> dict:
        """What identifies these frames (recorded by training, compared on resume): the source
        path (resolved; informative), the frame count and a sha256 of the first and last frames,
        the splits and the system's atom names."""
        h = hashlib.sha256()
        x = np.ascontiguousarray(self.positions, dtype=np.float32)
        h.update(repr((x.shape, sorted(self.splits.items()))).encode())
        if len(x):
            h.update(x[0].tobytes())
            h.update(x[-1].tobytes())
        h.update(" ".join(getattr(self.system, "atom_names", [])).encode())
        source = (self.metadata or {}).get("source")
        if isinstance(source, list):  # joined runs (join_datasets)
            source = " + ".join(str(Path(x).resolve()) for x in source)
        elif source:
            source = str(Path(source).resolve())
        return {
            "source": source or None,
            "n_frames": int(len(x)),
            "sha256": h.hexdigest(),
        }


def _bonds(system) -> np.ndarray | None:
    """[k, 2] bonded atom pairs of ``system`` (None when it has no topology)."""
    top = getattr(system, "topology", None)
    if top is None or not hasattr(top, "bonds"):
        return None
    pairs = [(a.index, b.index) for a, b in top.bonds]
    return np.asarray(pairs, dtype=np.int64) if pairs else None


def _load_topology(path: Path):
    import mdtraj

    try:
        return mdtraj.load_topology(str(path))
    except Exception as e:  # mdtraj raises many types for a file that is not a topology
        raise checks.ArgumentError(
            f"topology {str(path)!r} is not a readable PDB/topology: {e}"
        ) from e


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
    topology : PDB (or other mdtraj topology) for array and trajectory files; default: the PDB
        with the same name beside the file (``reference.npz`` -> ``reference.pdb``).
    system : a PeptideSystem or preset name giving the force field; default: the one recorded
        by ``arbg md``, else built from the PDB with default settings.
    """
    import mdtraj

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_dir() and (path / "metadata.json").exists():
        return _load_md_dir(path, system)
    if path.is_dir():
        return _load_published(path, system)
    if topology is None and path.with_suffix(".pdb").exists() and path.suffix != ".pdb":
        topology = path.with_suffix(".pdb")  # e.g. reference.npz + reference.pdb
        log.info("%s: topology from %s", path, topology)
    if topology is None:
        raise ValueError(
            f"{path}: a topology (PDB) is needed to read this file (--topology, or a "
            f"{path.with_suffix('.pdb').name} beside it)"
        )
    top_path = Path(topology)
    if not top_path.exists():
        raise FileNotFoundError(f"topology not found: {top_path}")
    sys_ = _system_for_pdb(top_path, system)
    top = _load_topology(top_path)
    idx = match_atoms(top, sys_, str(top_path))
    log_w = None
    if path.suffix == ".npy":
        frames = check_frames(checks.load_npy(path, "frames"), top.n_atoms, str(path))
    elif path.suffix == ".npz":
        arr, log_w = _load_npz_frames(path)
        frames = check_frames(arr, top.n_atoms, str(path))
    else:
        try:
            with (
                ascii_path(path, str(path)) as name,
                ascii_path(top_path, str(top_path)) as top_name,
            ):
                frames = mdtraj.load(name, top=top_name).xyz
        except Exception as e:  # mdtraj raises many types for an unreadable trajectory
            raise checks.ArgumentError(f"trajectory {str(path)!r} is not readable: {e}") from e
    frames = check_frames(frames[:, idx], sys_.n_atoms, str(path))
    return Dataset(frames, sys_, contiguous_splits(len(frames)), {"source": str(path)}, log_w)


def join_datasets(parts: list[Dataset]) -> Dataset:
    """Several runs of one system as one dataset, split by split.

    Each run keeps its own time-block splits: the joined ``train`` is the train blocks of the
    runs one after the other, then ``val``, then ``test``, so no frame changes split and the
    validation frames stay as independent of the training frames as in each run alone.

    Log-weights: when every run is an ``arbg md`` run sampled at its target temperature
    (plain or under a frozen dihedral bias), the frames are pooled (MBAR,
    :func:`arbg.reweight.mixture_log_weights`): each frame is scored under every run's bias
    (:func:`arbg.chem.md.md_bias_kt`), so plain MD adds flat weights where it samples and the
    biased runs keep the basins that plain MD misses. Otherwise (heated runs, array files
    whose bias is unknown) each run is self-normalised on its own and the runs are mixed in
    proportion to their Kish ESS (the minimum-variance mix of independent estimators), which
    assumes that every run reached every basin. Raises ``ValueError`` naming the run whose
    system or split names differ.
    """
    if not parts:
        raise ValueError("join_datasets: no datasets given")
    first = parts[0]
    names = list(first.splits)
    for i, d in enumerate(parts[1:], start=1):
        if d.system.spec != first.system.spec:
            raise ValueError(
                f"cannot join {d.metadata.get('source', f'run {i}')}: its system "
                f"({d.system.spec.name}) differs from {first.metadata.get('source', 'run 0')}'s "
                f"({first.system.spec.name}); join runs of one system and force field"
            )
        if list(d.splits) != names:
            raise ValueError(
                f"cannot join {d.metadata.get('source', f'run {i}')}: splits "
                f"{list(d.splits)} differ from {names}"
            )
    pieces, splits, start = [], {}, 0  # pieces: (run, first frame, stop) in joined order
    for name in names:
        for k, d in enumerate(parts):
            pieces.append((k, *d.splits[name]))
        stop = start + sum(d.splits[name][1] - d.splits[name][0] for d in parts)
        splits[name] = [start, stop]
        start = stop
    x = np.concatenate([parts[k].positions[a:b] for k, a, b in pieces])
    runs = np.concatenate([np.full(b - a, k) for k, a, b in pieces])
    meta = {
        "source": [str(d.metadata.get("source", f"run {i}")) for i, d in enumerate(parts)],
        "joined_frames": [len(d) for d in parts],
    }
    if all(_pooled_md_run(d) for d in parts):
        bias = np.stack([md_bias_kt(d.metadata["source"], x) for d in parts])  # [K, F] kT
        weights, f = mixture_log_weights(bias, np.bincount(runs, minlength=len(parts)))
        meta.update(joined_weights="mbar", joined_free_energies_kt=f.tolist())
        if len(first.system.phi_indices):
            meta["joined_phi_check"] = _check_pooled_runs(
                dihedrals(x, first.system.phi_indices), runs, bias, weights, meta["source"]
            )
    else:
        log.info(
            "joined runs mixed by their Kish ESS (not all are arbg md runs at their target "
            "temperature, so their frames cannot be pooled)"
        )
        mixed = [normalize_log_weights(d.log_weights) + np.log(d.kish_ess()) for d in parts]
        weights = np.concatenate([mixed[k][a:b] for k, a, b in pieces])
        meta["joined_weights"] = "kish-mix"
    return Dataset(x, first.system, splits, meta, weights)


def _check_pooled_runs(
    phi: np.ndarray,
    runs: np.ndarray,
    bias: np.ndarray,
    log_w: np.ndarray,
    sources: list[str],
) -> list[dict]:
    """Does each pooled run hold as many frames with some phi > 0 as its own ensemble should?

    Pooling assumes that every run sampled its own ensemble. A plain run too short to cross
    the phi barrier breaks that: the pooled weights then under-weight the basins it missed (by
    about its frame count times their population, over the biased runs' frames there). Run
    ``k``'s expected fraction is ``E_pk[g] = sum_n w_n exp(-b_k(x_n)) g(x_n) / sum_n w_n
    exp(-b_k(x_n))`` with ``g = any phi > 0``; a run whose fraction is below half of that
    (with at least 10 frames expected) is logged as a warning.

    Parameters
    ----------
    phi : [F, n_phi] rad. runs : [F] run index of each frame. bias : [K, F] kT. log_w : [F]
        normalised pooled log-weights. sources : [K] names for the messages.

    Returns
    -------
    one ``{"source", "frames", "observed", "expected"}`` dict per run.
    """
    g = (phi > 0).any(axis=1)
    out = []
    for k, source in enumerate(sources):
        n_k = int((runs == k).sum())
        observed = float(g[runs == k].mean())
        p_k = np.exp(log_w - bias[k] - logsumexp(log_w - bias[k]))  # frame weights towards p_k
        expected = float(p_k @ g)
        out.append({"source": source, "frames": n_k, "observed": observed, "expected": expected})
        if expected * n_k >= 10 and observed < 0.5 * expected:
            log.warning(
                "%s: %.1f %% of its frames have some phi > 0 where its own ensemble has %.1f %%: "
                "the run did not sample its ensemble (too short to cross the barrier?), so the "
                "pooled weights under-weight phi > 0 (by about %.0f of the %.0f frames there)",
                *(source, 100 * observed, 100 * expected, n_k * (expected - observed)),
                float(g.sum()),
            )
    return out


def _pooled_md_run(d: Dataset) -> bool:
    """Whether ``d`` is an ``arbg md`` run sampled at its target temperature (plain or under a
    frozen bias), whose sampling density :func:`join_datasets` can evaluate at any frame."""
    m = d.metadata
    return (
        m.get("format") == "arbg-md"
        and Path(str(m.get("source", ""))).is_dir()
        and m.get("sampling_temperature_k") == m.get("target_temperature_k")
    )


def load_datasets(
    paths: str | Path | list[str | Path],
    topology: str | Path | None = None,
    system: PeptideSystem | str | None = None,
) -> Dataset:
    """:func:`load_dataset` of one path, or :func:`join_datasets` of several runs of one system
    (``arbg train RUN1 RUN2 ...``)."""
    if isinstance(paths, (str, Path)):
        return load_dataset(paths, topology=topology, system=system)
    if len(paths) == 1:
        return load_dataset(paths[0], topology=topology, system=system)
    parts = [load_dataset(p, topology=topology, system=system) for p in paths]
    joined = join_datasets(parts)
    log.info(
        "joined %d runs: %s frames, Kish ESS %.1f",
        len(parts),
        " + ".join(str(len(d)) for d in parts),
        joined.kish_ess(),
    )
    return joined


def weighting_summary(
    data: Dataset, sampling_temperature_k: float, biased: bool, out_dir: str | Path
) -> list[str]:
    """What the weights of a weighted ``arbg md`` run amount to, as lines of text.

    The temperatures, the Kish ESS and where the log-weights are; when the system has a phi
    dihedral, P(phi1 > 0) of the frames as sampled and after reweighting.
    """
    target = data.system.temperature_k
    lines = [
        f"weighted frames: sampled at {sampling_temperature_k:g} K for {target:g} K"
        f"{' under a dihedral bias' if biased else ''}; Kish ESS {kish_ess(data.log_weights):.1f}"
        f" of {len(data)}; log-weights in {Path(out_dir) / 'log_weights.npy'} (unnormalised)"
    ]
    if len(data.system.phi_indices):
        phi = dihedrals(data.positions, data.system.phi_indices[:1])[:, 0]
        w = np.exp(data.log_weights - data.log_weights.max())
        lines.append(
            f"P(phi1 > 0): raw {np.mean(phi > 0):.4f}, reweighted "
            f"{np.sum(w * (phi > 0)) / np.sum(w):.4f}"
        )
    return lines


def _load_md_dir(path: Path, system: PeptideSystem | str | None) -> Dataset:
    """An ``arbg md`` directory: its frames, splits, metadata and log-weights."""
    meta = checks.read_json(path / "metadata.json", "MD metadata")
    if isinstance(system, PeptideSystem):
        sys_ = system
    else:
        sys_ = build_system(SystemSpec.from_dict(meta["system"]))
    frames = check_frames(load_md_frames(path), sys_.n_atoms, str(path))
    splits = contiguous_splits(len(frames), _fractions(meta.get("splits"), meta))
    ds = Dataset(frames, sys_, splits, {**meta, "source": str(path)}, load_md_log_weights(path))
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


def _load_published(path: Path, system: PeptideSystem | str | None) -> Dataset:
    """The published layout: ``{stem}_{train,val,test}.npy`` beside ``{stem}.pdb``."""
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
    idx = match_atoms(_load_topology(pdb), sys_, str(pdb))
    parts, splits, start = [], {}, 0
    for name in ("train", "val", "test"):
        f = path / f"{stem}_{name}.npy"
        if f.exists():
            arr = check_frames(checks.load_npy(f, "frames"), sys_.n_atoms, str(f))[:, idx]
            parts.append(arr)
            splits[name] = [start, start + len(arr)]
            start += len(arr)
    return Dataset(np.concatenate(parts), sys_, splits, {"source": str(path)})


def _load_npz_frames(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions (``positions`` or the first array) and optional ``log_weights`` of a .npz."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"PK":
            raise checks.ArgumentError(f"{str(path)!r} is not a .npz archive (no zip header)")
    try:
        with np.load(path, allow_pickle=False) as f:
            names = [k for k in f.files if k != "log_weights"]
            if not names:
                raise checks.ArgumentError(f"{str(path)!r} holds no positions array")
            arr = f["positions" if "positions" in f.files else names[0]]
            log_w = f["log_weights"] if "log_weights" in f.files else None
    except checks.ArgumentError:
        raise
    except Exception as e:  # zipfile/numpy raise many types for a corrupt archive
        raise checks.ArgumentError(f"{str(path)!r} is not a readable .npz archive: {e}") from e
    return arr, log_w


def _fractions(splits: dict | None, meta: dict) -> dict[str, float] | None:
    if not splits:
        return None
    total = meta.get("n_frames") or max(b for _, b in splits.values())
    return {k: (b - a) / total for k, (a, b) in splits.items()}
