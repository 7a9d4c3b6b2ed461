"""MD corpora over many peptide sequences (transferable ARBG), and loaders for corpora.

:func:`run_corpus` runs reference MD (:func:`arbg.chem.md.run_md`, the same conventions as
``arbg md``: Langevin middle integrator, 1 fs, friction 0.3/ps, no constraints, minimisation,
50 ps warm-up, one frame per ps) for every sequence of a list, in parallel worker processes, and
consolidates each finished run into one compressed array file. Sequences are built by
:func:`arbg.chem.systems.build_system` exactly as ``arbg system --sequence`` builds them:
zwitterionic
termini (NH3+ on the first residue, COO- on the last) unless ``capped`` asks for ACE/NME caps,
histidine as HIE, canonical atom order. The default force field of a corpus is ``fast-implicit``
(amber99sbildn + amber99_obc, NoCutoff, 310 K; fast on CPUs); ``amber14-obc1`` is the published
transferable convention (amber14-all + implicit/obc1, CutoffNonPeriodic 2 nm, 310 K).

Splits are by sequence (never by frames): the sorted sequences are permuted with the corpus seed
and cut into train/val/test by the fractions (largest-remainder rounding), so no sequence is in
two splits. Test sequences can get longer runs (``test_ns``).

Layout of a corpus directory::

    manifest.json          format, config (ns, test_ns, split fractions, seed, force field, MD
                           settings), the splits (sequence lists), and per sequence: split,
                           status (pending / partial / done / failed), frames, ns, atoms, seed,
                           files; totals. Written atomically, updated as sequences finish.
    sequences/{SEQ}.npz    "positions": float32 [frames, atoms, 3] nm, canonical atom order
                           (np.savez_compressed: zip deflate, lossless)
    sequences/{SEQ}.pdb    the peptide in canonical atom order (its start conformation)
    sequences/{SEQ}.json   the ``arbg md`` metadata of the run plus split, frames, ns, files;
                           written last: its presence marks the sequence as done
    work/{SEQ}/            the ``arbg md`` directory of a sequence under way (chunks, OpenMM
                           checkpoint); removed once the sequence is consolidated
    locks/                 lock files (one run per corpus, one worker per sequence)

Resuming: re-running the same command skips finished sequences, continues a sequence under way
from its last complete chunk (:func:`arbg.chem.md.run_md`) and runs the rest; nothing is lost or
duplicated. The state on disk (``sequences/*.json``, ``work/*/progress.json``) is authoritative;
the manifest is rebuilt from it on every start.

Loaders: :func:`load_corpus` reads a corpus directory, :func:`load_many_peptides` the published
ManyPeptidesMD layout (webdataset tar shards of ``{SEQ}_{frame}.bin`` members, raw float32
[atoms, 3] nm, with topologies ``pdbs/{split}/{SEQ}.pdb``) and :func:`load_many_peptides_eval`
its evaluation files (``{SEQ}_subsampled.npz``). Both give :class:`Corpus` objects whose
per-sequence :class:`arbg.data.datasets.Dataset` hold frames in canonical atom order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import arbg
from arbg.chem.md import MDConfig, load_md_frames, run_md
from arbg.chem.systems import (
    AMBER14_OBC1,
    FAST_IMPLICIT,
    PeptideSystem,
    SystemSpec,
    build_system,
    make_spec,
    system_from_pdb,
    validate_sequence,
)
from arbg.cluster import ClusterConfig, Engine, open_engine
from arbg.data.datasets import Dataset, check_frames, match_atoms
from arbg.io import atomic_save_npz_compressed, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "arbg-corpus"
FORMAT_VERSION = 1
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard amino acids, one-letter codes
SPLITS = ("train", "val", "test")
FORCE_FIELDS: dict[str, dict] = {
    "fast-implicit": dict(FAST_IMPLICIT),
    "amber14-obc1": dict(
        forcefield=AMBER14_OBC1, nonbonded="CutoffNonPeriodic", cutoff_nm=2.0, temperature_k=310.0
    ),
}
LOCK_POLL_S = 2.0  # how often a waiting task retries a sequence lock
WORKER_LOCK_WAIT_S = 24 * 3600.0  # a Dask task waits this long for a run of its sequence
MAX_ENUMERATED = 1_000_000  # all k-mers are listed only up to this many (20**4 = 160,000)


# ----------------------------------------------------------------------------- sequences


def parse_sequences(sequences: str | Iterable[str]) -> list[str]:
    """Validate a list of one-letter sequences (or a comma/space separated string).

    Returns the upper-cased sequences in the given order without duplicates. Raises ValueError
    for an empty list or a letter outside the 20 standard amino acids.
    """
    if isinstance(sequences, str):
        items = [s for s in re.split(r"[,\s]+", sequences) if s]
    else:
        items = list(sequences)
    if not items:
        raise ValueError(
            "empty sequence list: give one or more one-letter sequences (e.g. AA,AG) or --length L"
        )
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        seq = validate_sequence(item)
        if seq in seen:
            log.warning("sequence %s given more than once; using it once", seq)
            continue
        seen.add(seq)
        out.append(seq)
    return out


def kmer_sequences(length: int, sample: int | None = None, seed: int = 0) -> list[str]:
    """All sequences of `length` residues over the 20 standard amino acids, or a random sample.

    Parameters
    ----------
    length : residues per sequence (>= 1).
    sample : draw this many distinct sequences uniformly without replacement (None: all
        20**length of them, at most ``MAX_ENUMERATED``).
    seed : seed of the sample.

    Returns
    -------
    Sorted list of sequences.
    """
    if length < 1:
        raise ValueError(f"sequence length must be >= 1, got {length}")
    total = len(AMINO_ACIDS) ** length
    if sample is None:
        if total > MAX_ENUMERATED:
            raise ValueError(
                f"{total} sequences of length {length}: too many to list; "
                "draw a sample (--sample K)"
            )
        return ["".join(p) for p in itertools.product(AMINO_ACIDS, repeat=length)]
    if not 1 <= sample <= total:
        raise ValueError(
            f"--sample must be between 1 and {total} for length {length}, got {sample}"
        )
    rng = np.random.default_rng(seed)
    if total <= MAX_ENUMERATED:
        idx = rng.choice(total, size=sample, replace=False)
        seqs = {_decode_kmer(int(i), length) for i in idx}
    else:
        seqs = set()
        while len(seqs) < sample:
            letters = rng.integers(0, len(AMINO_ACIDS), size=length)
            seqs.add("".join(AMINO_ACIDS[i] for i in letters))
    return sorted(seqs)


def _decode_kmer(index: int, length: int) -> str:
    letters = []
    for _ in range(length):
        index, r = divmod(index, len(AMINO_ACIDS))
        letters.append(AMINO_ACIDS[r])
    return "".join(reversed(letters))


def validate_fractions(fractions: Iterable[float]) -> tuple[float, float, float]:
    """Check train/val/test fractions: three finite numbers >= 0 that sum to 1."""
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError) as e:
        raise ValueError(f"split fractions must be three numbers, got {fractions!r}") from e
    if len(fr) != 3:
        raise ValueError(f"give three split fractions (train val test), got {len(fr)}: {fr}")
    if not all(math.isfinite(f) and f >= 0 for f in fr):
        raise ValueError(f"split fractions must be finite and >= 0, got {fr}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fr} (sum {sum(fr):g})")
    return fr  # type: ignore[return-value]


def split_sequences(
    sequences: Iterable[str], fractions: Iterable[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Split sequences (not frames) into train/val/test, deterministically from `seed`.

    The sorted sequences are permuted by ``numpy.random.default_rng(seed)`` and cut into blocks
    of sizes from the fractions by largest-remainder rounding (ties go to the earlier split).
    Every sequence lands in exactly one split; each split's list is sorted.
    """
    fr = validate_fractions(fractions)
    seqs = sorted(set(sequences))
    n = len(seqs)
    raw = [n * f for f in fr]
    counts = [int(math.floor(r + 1e-9)) for r in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, count in zip(SPLITS, counts, strict=True):
        out[name] = sorted(seqs[i] for i in perm[start : start + count])
        start += count
    for name, f in zip(SPLITS, fr, strict=True):
        if f > 0 and not out[name] and n:
            log.warning(
                "split %s is empty: %d sequence(s) are too few for a fraction of %g", name, n, f
            )
    return out


def sequence_seed(seed: int, sequence: str) -> int:
    """The MD seed of one sequence: a hash of the corpus seed and the sequence (< 2**31 - 8)."""
    digest = hashlib.sha256(f"{seed}:{sequence}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2**31 - 8)


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CorpusConfig:
    """Settings of a corpus (fixed for the life of a corpus directory).

    Attributes
    ----------
    ns : production MD per train/val sequence, in ns.
    test_ns : production MD per test sequence, in ns (None: ``ns``).
    fractions : train/val/test fractions of the sequences (sum 1).
    seed : seed of the split and (hashed with each sequence) of its MD.
    force_field : fast-implicit (amber99sbildn + amber99_obc, NoCutoff, 310 K) or amber14-obc1
        (amber14-all + implicit/obc1, CutoffNonPeriodic 2 nm, 310 K; the published transferable
        convention).
    capped : ACE/NME caps instead of zwitterionic termini.
    temperature_k : physical temperature in K (None: the force-field convention's, 310 K).
    histidine : protonation variant of every histidine.
    step_fs, friction_per_ps, frame_interval_ps, warmup_ps, chunk_frames : as
        :class:`arbg.chem.md.MDConfig`.
    """

    ns: float = 1.0
    test_ns: float | None = None
    fractions: tuple[float, float, float] = field(
        default=(0.8, 0.1, 0.1),
        metadata={"flag": "--split", "nargs": 3, "metavar": ("TRAIN", "VAL", "TEST")},
    )
    seed: int = 0
    force_field: str = field(
        default="fast-implicit", metadata={"choices": ("fast-implicit", "amber14-obc1")}
    )
    capped: bool = False
    temperature_k: float | None = None
    histidine: str = field(default="HIE", metadata={"choices": ("HIE", "HID", "HIP")})
    step_fs: float = 1.0
    friction_per_ps: float = field(default=0.3, metadata={"flag": "--friction"})
    frame_interval_ps: float = 1.0
    warmup_ps: float = 50.0
    chunk_frames: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", validate_fractions(self.fractions))
        if self.force_field not in FORCE_FIELDS:
            raise ValueError(
                f"unknown force field {self.force_field!r}; use one of {', '.join(FORCE_FIELDS)}"
            )
        for key in ("ns", "test_ns"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive number of ns, got {value}")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        for name in SPLITS:
            if self.md_config(name).n_frames < 1:
                raise ValueError(
                    f"{self.ns_for(name)} ns gives no frame at one frame per "
                    f"{self.frame_interval_ps} ps"
                )

    def ns_for(self, split: str) -> float:
        """Production length (ns) of a sequence in `split`."""
        return self.test_ns if split == "test" and self.test_ns is not None else self.ns

    def spec(self, sequence: str) -> SystemSpec:
        """The system spec of `sequence` under this corpus's force field and termini."""
        ff = FORCE_FIELDS[self.force_field]
        return make_spec(
            sequence=sequence,
            capped=self.capped,
            forcefield=ff["forcefield"],
            nonbonded=ff["nonbonded"],
            cutoff_nm=ff.get("cutoff_nm"),
            temperature_k=self.temperature_k or ff["temperature_k"],
            histidine=self.histidine,
        )

    def md_config(self, split: str, sequence: str = "") -> MDConfig:
        """The MD settings of `sequence` in `split`."""
        return MDConfig(
            ns=self.ns_for(split),
            step_fs=self.step_fs,
            friction_per_ps=self.friction_per_ps,
            frame_interval_ps=self.frame_interval_ps,
            warmup_ps=self.warmup_ps,
            seed=sequence_seed(self.seed, sequence),
            chunk_frames=self.chunk_frames,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CorpusConfig:
        d = dict(d)
        d["fractions"] = tuple(d["fractions"])
        return cls(**d)


# ----------------------------------------------------------------------------- running


@contextlib.contextmanager
def _file_lock(path: Path, what: str, wait_s: float = 0.0):
    """An exclusive lock on `path` (POSIX flock; released when the process ends).

    Raises ValueError when another process holds it for more than `wait_s` seconds.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise ValueError(f"{what} is being run by another process (lock {path})") from e
                time.sleep(min(LOCK_POLL_S, max(deadline - time.monotonic(), 0.01)))
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_sequence(
    out_dir: str | Path,
    sequence: str,
    split: str,
    config: CorpusConfig,
    progress: bool = False,
    lock_wait_s: float = 0.0,
) -> dict:
    """Run (or resume) the MD of one sequence of a corpus and consolidate it.

    The run goes to ``work/{SEQ}/`` (a resumable ``arbg md`` directory); once complete its
    frames are written to ``sequences/{SEQ}.npz`` (float32 [F, n, 3] nm, canonical order), its
    topology to ``sequences/{SEQ}.pdb`` and its metadata to ``sequences/{SEQ}.json`` (last), and
    the work directory is removed. Returns the sequence's manifest entry. A sequence found
    finished is not run again. `lock_wait_s`: how long to wait for another process running the
    same sequence (a task of an earlier, killed client still running on a worker).
    """
    out = Path(out_dir)
    lock = out / "locks" / f"{sequence}.lock"
    with _file_lock(lock, f"sequence {sequence} of {out}", lock_wait_s):
        meta_path = out / "sequences" / f"{sequence}.json"
        if meta_path.exists() and (out / "sequences" / f"{sequence}.npz").exists():
            return _done_entry(json.loads(meta_path.read_text()))  # finished meanwhile
        t0 = time.time()
        system = build_system(config.spec(sequence))
        md_cfg = config.md_config(split, sequence)
        work = out / "work" / sequence
        run_md(system, work, md_cfg, progress=progress)
        frames = load_md_frames(work)
        if len(frames) != md_cfg.n_frames:
            raise RuntimeError(f"{work}: {len(frames)} frames, expected {md_cfg.n_frames}")
        seq_dir = out / "sequences"
        atomic_save_npz_compressed(seq_dir / f"{sequence}.npz", positions=frames)
        atomic_write_text(seq_dir / f"{sequence}.pdb", (work / "topology.pdb").read_text())
        meta = json.loads((work / "metadata.json").read_text())
        meta.pop("splits", None)  # time blocks of a single run; a corpus splits by sequence
        wall = time.time() - t0
        meta.update(
            {
                "sequence": sequence,
                "split": split,
                "n_frames": int(len(frames)),
                "ns": md_cfg.ns,
                "positions": {
                    "file": f"{sequence}.npz",
                    "key": "positions",
                    "shape": list(frames.shape),
                    "dtype": "float32",
                    "units": "nm",
                    "atom_order": "canonical",
                },
                "topology": f"{sequence}.pdb",
                "wall_s": round(wall, 3),
            }
        )
        atomic_write_json(seq_dir / f"{sequence}.json", meta)  # last: marks the sequence done
        shutil.rmtree(work, ignore_errors=True)
        log.debug("%s: %d frames in %.1f s", sequence, len(frames), wall)
        return _done_entry(meta)


def _run_in_worker(out_dir: str, sequence: str, split: str, config: dict) -> dict:
    """Dask task of one sequence (picklable); waits for a run of it still under way."""
    config_ = CorpusConfig.from_dict(config)
    return run_sequence(out_dir, sequence, split, config_, lock_wait_s=WORKER_LOCK_WAIT_S)


def _done_entry(meta: dict) -> dict:
    seq = meta["sequence"]
    return {
        "split": meta["split"],
        "status": "done",
        "ns": meta["ns"],
        "n_frames": meta["n_frames"],
        "frames_done": meta["n_frames"],
        "n_atoms": meta["n_atoms"],
        "seed": meta["seed"],
        "files": {
            "positions": f"sequences/{seq}.npz",
            "topology": f"sequences/{seq}.pdb",
            "metadata": f"sequences/{seq}.json",
        },
        "wall_s": meta.get("wall_s"),
    }


def _scan(
    out: Path, split_of: dict[str, str], config: CorpusConfig, cleanup: bool = False
) -> dict[str, dict]:
    """Per-sequence manifest entries from what is on disk (the authoritative state)."""
    entries = {}
    for seq, split in sorted(split_of.items()):
        meta_path = out / "sequences" / f"{seq}.json"
        work = out / "work" / seq
        if meta_path.exists() and (out / "sequences" / f"{seq}.npz").exists():
            entries[seq] = _done_entry(json.loads(meta_path.read_text()))
            if cleanup and work.exists():  # killed between consolidation and clean-up
                shutil.rmtree(work, ignore_errors=True)
            continue
        md_cfg = config.md_config(split, seq)
        done = 0
        if (work / "progress.json").exists():
            done = int(json.loads((work / "progress.json").read_text())["n_frames"])
        entries[seq] = {
            "split": split,
            "status": "partial" if done else "pending",
            "ns": md_cfg.ns,
            "n_frames": md_cfg.n_frames,
            "frames_done": done,
            "seed": md_cfg.seed,
        }
    return entries


def _totals(entries: dict[str, dict], config: CorpusConfig) -> dict:
    ps = config.frame_interval_ps
    done = [e for e in entries.values() if e["status"] == "done"]
    return {
        "sequences": len(entries),
        "done": len(done),
        "failed": sum(e["status"] == "failed" for e in entries.values()),
        "frames": int(sum(e["n_frames"] for e in done)),
        "ns_done": round(sum(e["frames_done"] * ps / 1000.0 for e in entries.values()), 6),
        "ns_total": round(sum(e["ns"] for e in entries.values()), 6),
    }


def _versions() -> dict:
    import openmm

    return {"arbg": arbg.__version__, "openmm": openmm.__version__}


def _manifest(config: CorpusConfig, splits: dict[str, list[str]], entries: dict[str, dict]) -> dict:
    ff = FORCE_FIELDS[config.force_field]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "force_field": {
            "name": config.force_field,
            "files": list(ff["forcefield"]),
            "nonbonded": ff["nonbonded"],
            "cutoff_nm": ff.get("cutoff_nm"),
        },
        "temperature_k": config.temperature_k or ff["temperature_k"],
        "termini": "ACE/NME caps" if config.capped else "zwitterionic (NH3+ / COO-)",
        "units": {"positions": "nm", "time": "ps"},
        "splits": splits,
        "sequences": entries,
        "totals": _totals(entries, config),
        "versions": _versions(),
    }


class _Progress:
    """Progress over a whole corpus: sequences done, ns done, rate and ETA (log + tqdm)."""

    def __init__(self, entries: dict[str, dict], config: CorpusConfig, bar: bool):
        self.entries, self.config = entries, config
        self.total_ns = sum(e["ns"] for e in entries.values())
        self.t0, self.ns0 = time.time(), self.ns_done()
        self.last_log, self.log_every_s = self.t0, 600.0
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=round(self.total_ns, 6),
                initial=round(self.ns0, 6),
                unit="ns",
                desc="corpus",
                bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} ns [{elapsed}<{remaining}{postfix}]",
            )
            self.bar.set_postfix_str(self._postfix())

    def ns_done(self, partial: dict[str, int] | None = None) -> float:
        ps = self.config.frame_interval_ps
        frames = {s: e["frames_done"] for s, e in self.entries.items()}
        frames.update(partial or {})
        return sum(f * ps / 1000.0 for f in frames.values())

    def _postfix(self, ns: float | None = None) -> str:
        n_done = sum(e["status"] == "done" for e in self.entries.values())
        elapsed = time.time() - self.t0
        rate = ((ns if ns is not None else self.ns0) - self.ns0) / max(elapsed, 1e-9) * 3600.0
        return f"{n_done}/{len(self.entries)} sequences, {rate:.2f} ns/h"

    def update(self, partial: dict[str, int] | None = None) -> None:
        """Refresh the bar with the frames on disk of the sequences under way."""
        now = self.ns_done(partial)
        if self.bar is not None:
            self.bar.n = round(now, 6)
            self.bar.set_postfix_str(self._postfix(now))  # refreshes
        if time.time() - self.last_log > self.log_every_s:  # for logs without the bar
            self.last_log = time.time()
            log.info("corpus: %.3f/%.3f ns, %s", now, self.total_ns, self._postfix(now))

    def finished(self, seq: str) -> None:
        e = self.entries[seq]
        now = self.ns_done()
        elapsed = time.time() - self.t0
        rate = (now - self.ns0) / elapsed * 3600.0 if elapsed > 0 else 0.0
        left = self.total_ns - now
        eta = _format_duration(left / rate * 3600.0) if rate > 0 else "?"
        n_done = sum(x["status"] == "done" for x in self.entries.values())
        if e["status"] == "done":
            what = f"{seq} done ({e['split']}, {e['ns']:g} ns, {e.get('n_atoms')} atoms)"
        else:
            what = f"{seq} FAILED ({e.get('error')})"
        log.info(
            "corpus: %s; %d/%d sequences, %.3f/%.3f ns, %.2f ns/h, ETA %s",
            what,
            n_done,
            len(self.entries),
            now,
            self.total_ns,
            rate,
            eta,
        )
        self.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def run_corpus(
    out_dir: str | Path,
    sequences: str | Iterable[str] | None = None,
    config: CorpusConfig | None = None,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    engine: Engine | None = None,
    progress: bool = True,
    max_sequences: int | None = None,
    poll_s: float = 5.0,
) -> dict:
    """Run (or resume) MD for every sequence of a corpus (see the module docstring).

    Parameters
    ----------
    out_dir : corpus directory (created; an existing one is resumed).
    sequences : one-letter sequences (list or comma-separated string). None resumes the
        sequences recorded in ``out_dir/manifest.json``.
    config : corpus settings; None takes the recorded ones (or the defaults for a new corpus).
        A different config or sequence set than the recorded one raises ValueError.
    workers : single-threaded worker processes of a local Dask cluster; 1 runs in this
        process (no Dask). Ignored with a scheduler or an engine.
    scheduler : address of a running Dask scheduler (None: ``ARBG_DASK_SCHEDULER`` if set);
        its workers must see `out_dir` under the same absolute path.
    engine : an open :class:`arbg.cluster.Engine` to use (not closed here); overrides
        `workers` and `scheduler`.
    progress : tqdm bar over the corpus (ns) besides the log lines.
    max_sequences : stop after this many sequences have been run by this call (the corpus stays
        resumable).
    poll_s : how often (s) the progress of running workers is read from disk.

    Returns
    -------
    The manifest (also in ``out_dir/manifest.json``).
    """
    out = Path(out_dir)
    seqs, config = _resolve_corpus(out, sequences, config)
    cluster_cfg = ClusterConfig(workers=workers, scheduler=scheduler)  # validates both
    splits = split_sequences(seqs, config.fractions, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    with _file_lock(out / "locks" / "corpus.lock", f"corpus {out}"):
        own = engine is None
        engine = open_engine(cluster_cfg) if own else engine
        try:
            manifest = _run_locked(out, splits, config, engine, progress, max_sequences, poll_s)
        finally:
            if own:
                engine.close()
    t = manifest["totals"]
    log.info(
        "corpus %s: %d/%d sequences done, %.3f/%.3f ns, %d frames%s",
        out,
        t["done"],
        t["sequences"],
        t["ns_done"],
        t["ns_total"],
        t["frames"],
        f", {t['failed']} failed (re-run to retry)" if t["failed"] else "",
    )
    return manifest


def _resolve_corpus(
    out: Path, sequences: str | Iterable[str] | None, config: CorpusConfig | None
) -> tuple[list[str], CorpusConfig]:
    """The sequences and settings of a run, checked against a recorded corpus in `out`."""
    manifest_path = out / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if old is not None and old.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not an arbg corpus manifest")
    if sequences is None:
        if old is None:
            raise ValueError(f"{out}: no manifest.json to resume; give the sequences")
        sequences = list(old["sequences"])
    seqs = parse_sequences(sequences)
    if config is None:
        config = CorpusConfig.from_dict(old["config"]) if old is not None else CorpusConfig()
    if old is not None:
        if old["config"] != config.to_dict():
            diff = sorted(
                k
                for k in set(old["config"]) | set(config.to_dict())
                if old["config"].get(k) != config.to_dict().get(k)
            )
            raise ValueError(
                f"{out} holds a corpus with different settings ({', '.join(diff)}:"
                f" {[old['config'].get(k) for k in diff]} vs "
                f"{[config.to_dict().get(k) for k in diff]}); use another --out"
            )
        if set(old["sequences"]) != set(seqs):
            raise ValueError(
                f"{out} holds a corpus of other sequences ({len(old['sequences'])}"
                f" recorded, {len(seqs)} given); use another --out"
            )
    return seqs, config


def _run_locked(
    out: Path,
    splits: dict[str, list[str]],
    config: CorpusConfig,
    engine: Engine,
    progress: bool,
    max_sequences: int | None,
    poll_s: float,
) -> dict:
    """The body of :func:`run_corpus`, under the corpus lock."""
    manifest_path = out / "manifest.json"
    split_of = {s: name for name, members in splits.items() for s in members}
    entries = _scan(out, split_of, config, cleanup=True)
    manifest = _manifest(config, splits, entries)
    atomic_write_json(manifest_path, manifest)
    todo = sorted(
        (s for s, e in entries.items() if e["status"] != "done"),
        key=lambda s: (-entries[s]["ns"], -len(s), s),
    )[:max_sequences]
    log.info(
        "corpus %s: %d sequences (train %d, val %d, test %d), %d done, %d to run now on %s; %s, %s",
        out,
        len(entries),
        len(splits["train"]),
        len(splits["val"]),
        len(splits["test"]),
        sum(e["status"] == "done" for e in entries.values()),
        len(todo),
        engine.description,
        config.force_field,
        manifest["termini"],
    )
    if engine.dashboard_link:
        log.info("Dask dashboard: %s", engine.dashboard_link)
    tracker = _Progress(entries, config, bar=progress and bool(todo))

    def record(seq: str, entry: dict | None, error: BaseException | None) -> None:
        if entry is None:
            entries[seq] = {**entries[seq], "status": "failed", "error": _describe(error)}
            log.error("corpus: %s failed: %s", seq, entries[seq]["error"])
        else:
            entries[seq] = entry
        manifest["sequences"] = entries
        manifest["totals"] = _totals(entries, config)
        atomic_write_json(manifest_path, manifest)
        tracker.entries = entries
        tracker.finished(seq)

    try:
        if engine.distributed:
            _run_dask(out, todo, split_of, config, engine.client, record, tracker, poll_s)
        else:
            for seq in todo:
                try:
                    entry = run_sequence(out, seq, split_of[seq], config, progress=progress)
                except Exception as e:  # record and go on; KeyboardInterrupt propagates
                    record(seq, None, e)
                else:
                    record(seq, entry, None)
    finally:
        tracker.close()
        # a kill leaves partial sequences: record what is on disk
        for seq, e in _scan(out, split_of, config).items():
            if entries[seq]["status"] != "failed" or e["status"] == "done":
                entries[seq] = e
        manifest["sequences"] = entries
        manifest["totals"] = _totals(entries, config)
        atomic_write_json(manifest_path, manifest)
        with contextlib.suppress(OSError):
            (out / "work").rmdir()  # only when empty
    return manifest


def _describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}"


def _run_dask(
    out: Path,
    todo: list[str],
    split_of: dict[str, str],
    config: CorpusConfig,
    client,
    record: Callable,
    tracker: _Progress,
    poll_s: float,
) -> None:
    """One Dask task per sequence; results are recorded as they finish (any order).

    A worker that dies mid-sequence costs that sequence's frames since its last chunk: the
    scheduler re-runs the task on another worker, which resumes ``work/{SEQ}``. Exceptions
    raised by a task are recorded as failures (re-run the corpus to retry them).
    """
    from distributed import wait

    root = str(out.resolve())  # workers may run in another directory
    run_id = uuid.uuid4().hex[:8]
    futures = {
        client.submit(
            _run_in_worker,
            root,
            seq,
            split_of[seq],
            config.to_dict(),
            key=f"arbg-corpus-{seq}-{run_id}",
            retries=0,
        ): seq
        for seq in todo
    }
    running = set(futures)
    try:
        while running:
            try:
                with client.as_current():  # wait() looks up the client of the futures there
                    done, left = wait(list(running), timeout=poll_s, return_when="FIRST_COMPLETED")
                running = set(left)
            except TimeoutError:
                done = set()
            for fut in done:
                try:
                    entry = fut.result()
                except (Exception, asyncio.CancelledError) as e:  # its error, KilledWorker, ...
                    record(futures[fut], None, e)
                else:
                    record(futures[fut], entry, None)
            tracker.update(_partial_frames(out, [futures[f] for f in running]))
    finally:
        client.cancel(list(running))  # pending ones; a running one finishes its chunk


def _partial_frames(out: Path, sequences: Iterable[str]) -> dict[str, int]:
    """Frames on disk of the sequences under way (``work/{SEQ}/progress.json``)."""
    partial = {}
    for seq in sequences:
        p = out / "work" / seq / "progress.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            partial[seq] = int(json.loads(p.read_text())["n_frames"])
    return partial


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
    raw: dict[str, dict[int, np.ndarray]] = {}
    duplicates = no_pdb = 0
    for shard in shard_list:
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
