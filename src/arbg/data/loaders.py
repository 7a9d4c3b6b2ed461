"""Loaders of MD corpora (transferable ARBG).

Loaders: :func:`load_corpus` reads a corpus directory, :func:`load_many_peptides` the published
ManyPeptidesMD layout (webdataset tar shards of ``{SEQ}_{frame}.bin`` members, raw float32
[atoms, 3] nm, with topologies ``pdbs/{split}/{SEQ}.pdb``) and :func:`load_many_peptides_eval`
its evaluation files (``{SEQ}_subsampled.npz``). Both give :class:`Corpus` objects whose
per-sequence :class:`arbg.data.datasets.Dataset` hold frames in canonical atom order.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from arbg.chem.systems import (
    PeptideSystem,
    SystemSpec,
    build_system,
    system_from_pdb,
    validate_sequence,
)
from arbg.data.datasets import Dataset, check_frames, match_atoms
from arbg.data.sequences import FORMAT, parse_sequences

log = logging.getLogger(__name__)
# ----------------------------------------------------------------------------- loaders


class Corpus:
    """Sequences of a corpus by split, each loadable as a :class:`arbg.data.datasets.Dataset`.

    Datasets are loaded on demand (one sequence at a time); each holds the frames of one
    sequence in canonical atom order (float32 nm), its PeptideSystem, zero log-weights for
    equilibrium data, and ``splits = {split: [0, frames]}`` (the whole run is in the
    sequence's split).

    Attributes
    ----------
    splits : split name -> sorted list of sequences (loadable ones only).
    metadata : the manifest, or a description of the source.
    root : the directory read.
    """

    def __init__(
        self,
        splits: dict[str, list[str]],
        loader: Callable[[str, str], Dataset],
        metadata: dict | None = None,
        root: Path | None = None,
    ):
        self.splits = {k: sorted(v) for k, v in splits.items()}
        self.metadata = metadata or {}
        self.root = root
        self._loader = loader
        self._split_of = {s: name for name, members in self.splits.items() for s in members}

    @property
    def sequences(self) -> list[str]:
        """All loadable sequences (sorted)."""
        return sorted(self._split_of)

    def split_of(self, sequence: str) -> str:
        """The split of `sequence`."""
        if sequence not in self._split_of:
            raise KeyError(f"sequence {sequence!r} is not in this corpus")
        return self._split_of[sequence]

    def dataset(self, sequence: str) -> Dataset:
        """The frames of one sequence (a Dataset, canonical order)."""
        return self._loader(sequence, self.split_of(sequence))

    def iter_datasets(self, split: str) -> Iterator[Dataset]:
        """The datasets of the sequences of `split`, one at a time."""
        if split not in self.splits:
            raise KeyError(f"no split {split!r}; available: {', '.join(self.splits)}")
        for seq in self.splits[split]:
            yield self.dataset(seq)

    def datasets(self, split: str) -> list[Dataset]:
        """The datasets of all sequences of `split`."""
        return list(self.iter_datasets(split))

    def items(self, split: str) -> list[tuple[PeptideSystem, np.ndarray, np.ndarray]]:
        """(system, positions [F, n, 3] float32 nm, log_weights [F] float64) per sequence."""
        return [(d.system, d.positions, d.log_weights) for d in self.iter_datasets(split)]

    def __len__(self) -> int:
        return len(self._split_of)

    def __contains__(self, sequence: object) -> bool:
        return sequence in self._split_of

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        return f"Corpus({self.root}, {len(self)} sequences: {sizes})"


def load_corpus(path: str | Path) -> Corpus:
    """Read a corpus directory written by :func:`run_corpus` (finished sequences only).

    Unfinished sequences are left out with a warning. Each sequence's system is rebuilt from
    the recorded spec (not minimised: the dataset's frames are what matter) and its stored PDB
    is matched to the canonical order (:func:`arbg.data.datasets.match_atoms`).
    """
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{root}: no manifest.json (not an arbg corpus directory)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not an arbg corpus manifest")
    splits: dict[str, list[str]] = {}
    missing = []
    for name, members in manifest["splits"].items():
        splits[name] = []
        for seq in members:
            if (root / "sequences" / f"{seq}.json").exists():
                splits[name].append(seq)
            else:
                missing.append(seq)
    if missing:
        log.warning(
            "%s: %d sequence(s) not finished, left out (%s%s)",
            root,
            len(missing),
            ", ".join(missing[:5]),
            " ..." if len(missing) > 5 else "",
        )

    def loader(seq: str, split: str) -> Dataset:
        return _load_corpus_sequence(root, seq, split)

    return Corpus(splits, loader, manifest, root)


def _load_corpus_sequence(root: Path, seq: str, split: str) -> Dataset:
    import mdtraj

    meta = json.loads((root / "sequences" / f"{seq}.json").read_text())
    system = build_system(SystemSpec.from_dict(meta["system"]), minimize=False)
    npz = root / "sequences" / f"{seq}.npz"
    with np.load(npz) as z:
        positions = z["positions"]
        log_w = z["log_weights"] if "log_weights" in z.files else None
    pdb = root / "sequences" / f"{seq}.pdb"
    idx = match_atoms(mdtraj.load_topology(str(pdb)), system, str(pdb))
    frames = check_frames(positions, system.n_atoms, str(npz))[:, idx]
    return Dataset(frames, system, {split: [0, len(frames)]}, meta, log_w)


# -- the published ManyPeptidesMD layout

_WDS_KEY = re.compile(r"^([A-Za-z]+)_(\d+)$")


def iter_wds_frames(
    shard: str | Path, sequences: set[str] | None = None
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Frames of one webdataset tar shard of ManyPeptidesMD: (sequence, frame index, x).

    Members ``{SEQ}_{frame}.bin`` hold raw little-endian float32 coordinates, [atoms, 3] nm,
    in the atom order of ``pdbs/{split}/{SEQ}.pdb``; ``x`` is returned flat ([3 * atoms]).
    Other members are ignored. `sequences` keeps only those sequences.
    """
    with tarfile.open(shard) as tf:
        for member in tf:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")  # webdataset: key up to the first dot
            m = _WDS_KEY.match(key)
            if ext != "bin" or m is None:
                continue
            seq = m.group(1).upper()
            if sequences is not None and seq not in sequences:
                continue
            data = tf.extractfile(member).read()
            if len(data) % 12:
                raise ValueError(
                    f"{shard}: member {member.name} has {len(data)} bytes, not a "
                    "float32 (atoms, 3) array"
                )
            yield seq, int(m.group(2)), np.frombuffer(data, dtype="<f4")


def _find_shards(root: Path) -> list[Path]:
    for d in (root / "webdatasets" / "single_frames", root / "webdatasets", root):
        shards = sorted(d.glob("*.tar")) if d.is_dir() else []
        if shards:
            return shards
    raise FileNotFoundError(f"{root}: no webdataset shards (webdatasets/single_frames/*.tar)")


def _pdb_index(root: Path, split: str | None) -> dict[str, tuple[str, Path]]:
    pdb_root = root / "pdbs"
    if not pdb_root.is_dir():
        raise FileNotFoundError(f"{root}: no pdbs/ directory (pdbs/{{split}}/{{SEQ}}.pdb)")
    out: dict[str, tuple[str, Path]] = {}
    for d in sorted(p for p in pdb_root.iterdir() if p.is_dir()):
        if split is not None and d.name != split:
            continue
        for pdb in sorted(d.glob("*.pdb")):
            out[pdb.name.split(".")[0].upper()] = (d.name, pdb)
    return out


def _read_shards(
    root: Path,
    shards: list[Path],
    wanted: set[str] | None,
    pdbs: dict[str, tuple[str, Path]],
    max_frames: int | None,
    split: str | None,
) -> dict[str, dict[int, np.ndarray]]:
    """``{sequence: {frame index: flat coordinates}}`` of the shards: sequences with a PDB
    only, the first copy of a frame, at most ``max_frames`` per sequence."""
    raw: dict[str, dict[int, np.ndarray]] = {}
    duplicates = no_pdb = 0
    for shard in shards:
        for seq, frame, x in iter_wds_frames(shard, wanted):
            if seq not in pdbs:
                no_pdb += 1
                continue
            frames = raw.setdefault(seq, {})
            if frame in frames:
                duplicates += 1
                continue
            if max_frames is None or len(frames) < max_frames:
                frames[frame] = x
    if duplicates:
        log.warning("%s: %d duplicate frame member(s) ignored", root, duplicates)
    if no_pdb:
        log.warning(
            "%s: %d frame(s) of sequences without a PDB%s ignored",
            root,
            no_pdb,
            f" in pdbs/{split}" if split else "",
        )
    return raw


def load_many_peptides(
    root: str | Path,
    *,
    split: str | None = None,
    sequences: Iterable[str] | None = None,
    shards: Iterable[str | Path] | None = None,
    max_frames: int | None = None,
    **spec_overrides,
) -> Corpus:
    """Read ManyPeptidesMD training frames (webdataset tar shards) into a :class:`Corpus`.

    Parameters
    ----------
    root : the dataset directory: ``pdbs/{split}/{SEQ}.pdb`` and (unless `shards` is given)
        ``webdatasets/single_frames/*.tar``.
    split : only sequences whose PDB is in ``pdbs/{split}/`` (None: any split directory).
    sequences : only these sequences (all in the shards if None).
    shards : tar files to read (default: every shard found under `root`). All frames of the
        kept sequences are read into memory; restrict `sequences` or `shards` for big data.
    max_frames : keep at most this many frames per sequence (the first found).
    spec_overrides : passed to :func:`arbg.chem.systems.make_spec` for the systems (default: the
        published convention, amber14-all + implicit/obc1, CutoffNonPeriodic 2 nm, 310 K).

    Returns
    -------
    Corpus whose datasets hold [F, n, 3] float32 nm frames in canonical order, sorted by frame
    index, split as the PDB directories say.
    """
    root = Path(root)
    wanted = None if sequences is None else set(parse_sequences(sequences))
    pdbs = _pdb_index(root, split)
    shard_list = [Path(s) for s in shards] if shards is not None else _find_shards(root)
    raw = _read_shards(root, shard_list, wanted, pdbs, max_frames, split)
    if wanted is not None and wanted - set(raw):
        raise ValueError(
            f"{root}: no frames for sequence(s) {', '.join(sorted(wanted - set(raw)))}"
        )
    splits: dict[str, list[str]] = {}
    for seq in raw:
        splits.setdefault(pdbs[seq][0], []).append(seq)

    def loader(seq: str, split_name: str) -> Dataset:
        import mdtraj

        pdb = pdbs[seq][1]
        system = system_from_pdb(pdb, **spec_overrides)
        top = mdtraj.load_topology(str(pdb))
        idx = match_atoms(top, system, str(pdb))
        order = sorted(raw[seq])
        flat = np.stack([raw[seq][i] for i in order])
        if flat.shape[1] != 3 * top.n_atoms:
            raise ValueError(
                f"{seq}: frames hold {flat.shape[1] // 3} atoms, {pdb} has {top.n_atoms}"
            )
        frames = check_frames(flat.reshape(len(flat), top.n_atoms, 3), top.n_atoms, seq)
        frames = np.ascontiguousarray(frames[:, idx])
        meta = {
            "source": str(root),
            "format": "ManyPeptidesMD",
            "sequence": seq,
            "split": split_name,
            "pdb": str(pdb),
            "frame_indices": order,
        }
        return Dataset(frames, system, {split_name: [0, len(frames)]}, meta)

    return Corpus(
        splits,
        loader,
        {"source": str(root), "format": "ManyPeptidesMD", "shards": [str(s) for s in shard_list]},
        root,
    )


def load_many_peptides_eval(
    root: str | Path, sequence: str, split: str | None = None, **spec_overrides
) -> Dataset:
    """Read a ManyPeptidesMD evaluation file ``{SEQ}_subsampled.npz`` (key ``positions``).

    Looks for ``trajectories_subsampled/{split}/{len}AA/{SEQ}_subsampled.npz`` (split: the given
    one, else test, then val; else anywhere under `root`) and ``pdbs/{split}/{SEQ}.pdb``.
    Returns a Dataset of the frames in canonical order (float32 nm), ``splits = {split: all}``;
    its metadata holds the published TICA model (``tica_projection``, ``tica_mean``,
    ``tica_dim``) when present.
    """
    import mdtraj

    root = Path(root)
    seq = validate_sequence(sequence)
    npz = pdb = None
    for sp in [split] if split else ["test", "val", "train"]:
        cand = root / "trajectories_subsampled" / sp / f"{len(seq)}AA" / f"{seq}_subsampled.npz"
        if cand.exists():
            npz, split = cand, sp
            break
    if npz is None:
        found = sorted(root.rglob(f"{seq}_subsampled.npz"))
        if not found:
            raise FileNotFoundError(f"{root}: no {seq}_subsampled.npz")
        npz = found[0]
    pdb_index = _pdb_index(root, split)
    if seq not in pdb_index:
        raise FileNotFoundError(f"{root}: no pdbs/{split or '*'}/{seq}.pdb")
    split, pdb = pdb_index[seq]
    system = system_from_pdb(pdb, **spec_overrides)
    top = mdtraj.load_topology(str(pdb))
    idx = match_atoms(top, system, str(pdb))
    with np.load(npz) as z:
        if "positions" not in z.files:
            raise ValueError(f"{npz}: no 'positions' array (keys: {', '.join(z.files)})")
        positions = z["positions"]
        tica = {k: z[k] for k in ("tica_projection", "tica_mean", "tica_dim") if k in z.files}
    frames = np.ascontiguousarray(check_frames(positions, top.n_atoms, str(npz))[:, idx])
    meta = {
        "source": str(npz),
        "format": "ManyPeptidesMD",
        "sequence": seq,
        "split": split,
        "pdb": str(pdb),
        "tica": tica,
    }
    return Dataset(frames, system, {split: [0, len(frames)]}, meta)
