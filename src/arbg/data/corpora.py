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

Loaders live in :mod:`arbg.data.loaders`, sequence lists and splits in
:mod:`arbg.data.sequences`. This module holds the config, the runs (local or one Dask task per
sequence, with progress over the corpus) and the state of a corpus directory read from its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import arbg
from arbg.chem.md import MDConfig, load_md_frames, run_md
from arbg.chem.systems import (
    SystemSpec,
    build_system,
    make_spec,
)
from arbg.cluster import ClusterConfig, Engine, open_engine
from arbg.data.sequences import (
    FORCE_FIELDS,
    FORMAT,
    FORMAT_VERSION,
    SPLITS,
    parse_sequences,
    sequence_seed,
    split_sequences,
    validate_fractions,
)
from arbg.files import atomic_save_npz_compressed, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

LOCK_POLL_S = 2.0  # how often a waiting task retries a sequence lock
WORKER_LOCK_WAIT_S = 24 * 3600.0  # a Dask task waits this long for a run of its sequence


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
    step_fs : integration time step in fs (:class:`arbg.chem.md.MDConfig`).
    friction_per_ps : Langevin friction in 1/ps.
    frame_interval_ps : time between saved frames in ps.
    warmup_ps : unsaved equilibration before production in ps.
    chunk_frames : frames per resumable chunk (one atomic commit each).
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


# ----------------------------------------------------------------- the state of a corpus directory
#
# Per-sequence entries and the manifest, read from the files: they are authoritative
# (``sequences/{SEQ}.json`` marks a finished sequence, ``work/{SEQ}/progress.json`` the frames of
# one under way); ``manifest.json`` is rebuilt from them on every start of :func:`run_corpus`.


def done_entry(meta: dict) -> dict:
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


def scan(
    out: Path, split_of: dict[str, str], config: CorpusConfig, cleanup: bool = False
) -> dict[str, dict]:
    """Per-sequence manifest entries from what is on disk (the authoritative state)."""
    entries = {}
    for seq, split in sorted(split_of.items()):
        meta_path = out / "sequences" / f"{seq}.json"
        work = out / "work" / seq
        if meta_path.exists() and (out / "sequences" / f"{seq}.npz").exists():
            entries[seq] = done_entry(json.loads(meta_path.read_text()))
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


def totals(entries: dict[str, dict], config: CorpusConfig) -> dict:
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


def versions() -> dict:
    import openmm

    return {"arbg": arbg.__version__, "openmm": openmm.__version__}


def build_manifest(
    config: CorpusConfig, splits: dict[str, list[str]], entries: dict[str, dict]
) -> dict:
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
        "totals": totals(entries, config),
        "versions": versions(),
    }


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
            return done_entry(json.loads(meta_path.read_text()))  # finished meanwhile
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
        return done_entry(meta)


def _run_in_worker(out_dir: str, sequence: str, split: str, config: dict) -> dict:
    """Dask task of one sequence (picklable); waits for a run of it still under way."""
    config_ = CorpusConfig.from_dict(config)
    return run_sequence(out_dir, sequence, split, config_, lock_wait_s=WORKER_LOCK_WAIT_S)


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
    entries = scan(out, split_of, config, cleanup=True)
    manifest = build_manifest(config, splits, entries)
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
    tracker = Progress(entries, config, bar=progress and bool(todo))

    def record(seq: str, entry: dict | None, error: BaseException | None) -> None:
        if entry is None:
            entries[seq] = {**entries[seq], "status": "failed", "error": describe(error)}
            log.error("corpus: %s failed: %s", seq, entries[seq]["error"])
        else:
            entries[seq] = entry
        manifest["sequences"] = entries
        manifest["totals"] = totals(entries, config)
        atomic_write_json(manifest_path, manifest)
        tracker.entries = entries
        tracker.finished(seq)

    try:
        if engine.distributed:
            # a cluster of our own has a fixed size: feed it longest first, one task per thread
            limit = engine.n_workers if engine.cluster is not None else None
            client = engine.client
            args = (out, todo, split_of, config, client, _run_in_worker, record, tracker, poll_s)
            run_on_dask(*args, max_in_flight=limit)
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
        for seq, e in scan(out, split_of, config).items():
            if entries[seq]["status"] != "failed" or e["status"] == "done":
                entries[seq] = e
        manifest["sequences"] = entries
        manifest["totals"] = totals(entries, config)
        atomic_write_json(manifest_path, manifest)
        with contextlib.suppress(OSError):
            (out / "work").rmdir()  # only when empty
    return manifest


# ------------------------------------------------------------------------------- Dask and progress
#
# :func:`run_on_dask` submits one task per sequence (:func:`_run_in_worker`) and
# records each result as it arrives; :class:`Progress` shows sequences done, ns, ns/h and an ETA
# (log lines and a tqdm bar), reading the frames of sequences under way from their work
# directories.


class Progress:
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
        eta = format_duration(left / rate * 3600.0) if rate > 0 else "?"
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


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}"


def run_on_dask(
    out: Path,
    todo: list[str],
    split_of: dict[str, str],
    config: CorpusConfig,
    client,
    task: Callable[[str, str, str, dict], dict],
    record: Callable,
    tracker: Progress,
    poll_s: float,
    *,
    max_in_flight: int | None = None,
) -> None:
    """One Dask task per sequence; results are recorded as they finish (any order).

    `task(out_dir, sequence, split, config_dict)` runs one sequence on a worker and returns its
    manifest entry; `record(sequence, entry, error)` takes each result (entry None: failed).
    `max_in_flight`: submit at most this many tasks at a time, the next (in `todo`'s order,
    longest first) when one ends: on a cluster of fixed size, the next free worker takes the
    longest sequence left (Dask assigns a task to a worker when it is submitted; a few long
    tasks would otherwise queue behind each other on one worker while another idles). None:
    submit every task at once (an adaptive cluster scales on that backlog).

    A worker that dies mid-sequence costs that sequence's frames since its last chunk: the
    scheduler re-runs the task on another worker, which resumes ``work/{SEQ}``. Exceptions
    raised by a task are recorded as failures (re-run the corpus to retry them).
    """
    from distributed import wait

    root = str(out.resolve())  # workers may run in another directory
    run_id = uuid.uuid4().hex[:8]
    pending, futures, running = list(todo), {}, set()

    def submit_more() -> None:
        while pending and (max_in_flight is None or len(running) < max_in_flight):
            seq = pending.pop(0)
            key = f"arbg-corpus-{run_id}-{seq}"  # one task group: durations learnt, work stolen
            fut = client.submit(
                task, root, seq, split_of[seq], config.to_dict(), key=key, retries=0
            )
            futures[fut] = seq
            running.add(fut)

    submit_more()
    try:
        while running:
            try:
                with client.as_current():  # wait() looks up the client of the futures there
                    done, left = wait(list(running), timeout=poll_s, return_when="FIRST_COMPLETED")
                running.intersection_update(left)
            except TimeoutError:
                done = set()
            for fut in done:
                try:
                    entry = fut.result()
                except (Exception, asyncio.CancelledError) as e:  # its error, KilledWorker, ...
                    record(futures[fut], None, e)
                else:
                    record(futures[fut], entry, None)
            submit_more()
            tracker.update(partial_frames(out, [futures[f] for f in running]))
    finally:
        client.cancel(list(running))  # a running task finishes its chunk; the rest never start


def partial_frames(out: Path, sequences: Iterable[str]) -> dict[str, int]:
    """Frames on disk of the sequences under way (``work/{SEQ}/progress.json``)."""
    partial = {}
    for seq in sequences:
        p = out / "work" / seq / "progress.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            partial[seq] = int(json.loads(p.read_text())["n_frames"])
    return partial
