"""Safe writing: atomic files, directory locks and multi-file commits.

* ``atomic_*``: one file, written to a temporary name in its directory, then renamed.
* :func:`lock_dir`: one writer per output directory (``filelock``); a second gets a clear error.
* :class:`Commit` / :func:`recover`: a set of files made current by one atomic journal rename;
  the next run finishes (or rolls back) a commit a crash interrupted and removes temporaries.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from arbg.checks import ArgumentError, output_dir, read_json

log = logging.getLogger(__name__)


def _atomic(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with disk_errors(path), os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _after_write(f"wrote {path.name}")
    return path


# --------------------------------------------------------------------------------------------------
# a full, read-only or forbidden disk: one clear OSError naming the file, whatever the writer

DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
LOW_SPACE_BYTES = 1 << 18  # below this much free space a failed write is taken for a full disk


def disk_problem(path: str | Path, err: BaseException) -> OSError | None:
    """The file-system cause of a failed write of ``path``, as an ``OSError`` naming the file
    and the cause, or None. Writers from libraries hide the ``OSError`` (mdtraj's DCD writer
    fails with a ``TypeError``, safetensors and ``torch.save`` with their own errors), so when
    no ``OSError`` with a disk errno is in the exception chain the file system is asked: a
    read-only mount or (almost) no free space."""
    seen, e = set(), err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return OSError(e.errno, DISK_ERRNOS[e.errno], str(path))
        for code in DISK_ERRNOS:  # a library error that quotes the system's message
            if os.strerror(code) in str(e):
                return OSError(code, DISK_ERRNOS[code], str(path))
        e = e.__cause__ or e.__context__
    d = Path(path).parent
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        st = os.statvfs(d)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, DISK_ERRNOS[errno.EROFS], str(path))
    if st.f_bavail * st.f_frsize < LOW_SPACE_BYTES:
        return OSError(errno.ENOSPC, DISK_ERRNOS[errno.ENOSPC], str(path))
    return None


@contextlib.contextmanager
def disk_errors(path: str | Path, cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Writing ``path`` in the block: a failure the file system caused (:func:`disk_problem`)
    becomes one ``OSError`` naming ``path`` and the cause; ``cleanup`` (removing staged files)
    runs on any failure, after the file system was asked."""
    try:
        yield
    except Exception as err:
        problem = disk_problem(path, err)
        if cleanup is not None:
            with contextlib.suppress(OSError):
                cleanup()
        if problem is not None and problem is not err:
            raise problem from err
        raise


@contextlib.contextmanager
def ascii_path(path: str | Path, name: str = "--out") -> Iterator[str]:
    """An ASCII string that names ``path`` for C code that takes ASCII file names only (mdtraj's
    DCD reader and writer): the path itself, or its directory opened and reached through
    ``/proc/self/fd`` (Linux), or a relative path from the working directory. Where none is
    ASCII, one line naming ``name`` (call it before the work to refuse early)."""
    text = str(path)
    if text.isascii():
        yield text
        return
    p = Path(path)
    if p.name.isascii() and os.path.isdir("/proc/self/fd"):
        fd = os.open(p.parent, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}/{p.name}"
        finally:
            os.close(fd)
        return
    rel = os.path.relpath(p)
    if rel.isascii():
        yield rel
        return
    raise ArgumentError(
        f"{name}: {text!r} has non-ASCII characters and the DCD files arbg writes there take "
        "ASCII paths only on this system; use a path with ASCII characters only"
    )


def usual_mode(path: str | Path) -> None:
    """Give ``path`` the mode a new file gets under the umask (0644 under umask 022): for files
    written by libraries that make them 0600 (safetensors, ``mkstemp``)."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    return _atomic(path, lambda f: np.save(f, array))


def atomic_save_npz(path: str | Path, **arrays) -> Path:
    return _atomic(path, lambda f: np.savez(f, **arrays))


def atomic_save_npz_compressed(path: str | Path, **arrays) -> Path:
    """Like :func:`atomic_save_npz`, with zip deflate compression (lossless)."""
    return _atomic(path, lambda f: np.savez_compressed(f, **arrays))


# --------------------------------------------------------------------------------------------------
# fault injection (tests): called after every durable write, rename or removal


def _after_write(what: str) -> None:
    """No-op hook after each durable step; tests replace it to simulate a kill between writes."""


def note_write(what: str) -> None:
    """Report a durable step written outside this module (calls the current :func:`_after_write`,
    so a test's replacement sees it)."""
    _after_write(what)


# --------------------------------------------------------------------------------------------------
# directory locks


class DirectoryLocked(ArgumentError):
    """Another process is writing the directory (the message names the holder)."""


LOCK_FILE = ".arbg.lock"
HOLDER_FILE = ".arbg.lock.json"
_held: dict[str, list] = {}  # resolved dir -> [FileLock, depth]


def _holder(path: Path, patience_s: float = 2.0) -> str:
    """Who holds ``path``'s lock. The holder writes its record right after acquiring the lock,
    so a missing record is waited for briefly before falling back to "another process"."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            h = json.loads((path / HOLDER_FILE).read_text())
            return (
                f"pid {h.get('pid')} on {h.get('host')} ({h.get('command')}, "
                f"since {h.get('since')})"
            )
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return "another process"
            time.sleep(0.05)


@contextlib.contextmanager
def lock_dir(path: str | Path, wait: bool = False, name: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on directory ``path`` (created if missing) while writing it.

    A second writer (another process) gets :class:`DirectoryLocked` naming the holder, or with
    ``wait=True`` blocks until the holder is done. Re-entrant inside one process. Uses the
    ``filelock`` package (``flock`` on POSIX: released by the OS when the holder dies).
    """
    new = [d for d in [Path(path), *Path(path).parents] if not d.exists()]  # made here
    path = output_dir(name, path)
    key = str(path.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    lock = filelock.FileLock(str(path / LOCK_FILE), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if not wait:
            raise DirectoryLocked(
                f"{name}: {str(path)!r} is being written by {_holder(path)}; "
                "wait for it to finish (or pass --wait)"
            ) from None
        log.info("waiting for %s, held by %s", path, _holder(path))
        lock.acquire()
    _held[key] = [lock, 1]
    ok = False
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv[:6]),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        # written whole (temp + rename), so a reader never sees half of it; not a data step,
        # so not reported to the crash-test hook
        tmp = path / f".{HOLDER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path / HOLDER_FILE)
        yield path
        ok = True
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            (path / HOLDER_FILE).unlink()
        if not ok and new:  # a refused or failed command leaves no directory it made itself
            _remove_if_unused(new)
        lock.release()


def _remove_if_unused(made: list[Path]) -> None:
    """Remove the directories ``made`` (deepest first) that hold nothing but bookkeeping."""
    for d in made:
        try:
            names = {p.name for p in d.iterdir()}
        except OSError:
            return
        if names - {LOCK_FILE, HOLDER_FILE, MAKER_FILE}:
            return
        with contextlib.suppress(OSError):
            for n in names:
                (d / n).unlink()
            d.rmdir()
            log.debug("removed %s (made by a command that failed before writing)", d)


# --------------------------------------------------------------------------------------------------
# what made a directory: one kind of command and one system per output directory

MAKER_FILE = ".arbg-maker.json"


def claim_dir(path: str | Path, maker: dict[str, Any], name: str = "--out") -> None:
    """Record in ``path/.arbg-maker.json`` what writes directory ``path`` (``command``: md,
    sample, smc, train, evaluate, ...; the system's name and atom count; more identity), or refuse,
    in one line naming ``name``, a directory made by something else (another command, another
    molecule, other training data). A key one record lacks is not compared."""
    path = Path(path)
    f = path / MAKER_FILE
    if f.exists():
        was = read_json(f, "directory maker record")
        if not isinstance(was, dict):
            raise ArgumentError(f"{f}: not a maker record (a JSON object)")
        diff = [k for k, v in maker.items() if k in was and was[k] != v]
        if diff:
            raise ArgumentError(
                f"{name}: {str(path)!r} was made by {describe_maker(was)}, not by "
                f"{describe_maker(maker)} (different {', '.join(diff)}); use another {name}"
            )
        if not set(maker) - set(was):
            return
        maker = {**was, **maker}
    atomic_write_json(f, maker)


def describe_maker(maker: dict[str, Any]) -> str:
    """``arbg md of 'aldp' (22 atoms)``: a maker record in words."""
    text = f"arbg {maker.get('command', '?')}"
    if maker.get("system") is not None:
        text += f" of {maker['system']!r}"
        if maker.get("n_atoms") is not None:
            text += f" ({maker['n_atoms']} atoms)"
    if maker.get("data") is not None:
        text += f" on data {str(maker['data'])[:12]}"
    return text


# --------------------------------------------------------------------------------------------------
# multi-file commits: stage under temporary names, then one journal rename makes them current

JOURNAL = ".arbg-commit.json"
STAGED = ".arbg-staged-"
OLD = ".arbg-old-"


class Commit:
    """A set of files (and directories) of ``root`` made current by one atomic step.

    Write the new versions with :meth:`write_bytes`, :meth:`write_json`, :meth:`save_npy`,
    :meth:`save_npz` or into :meth:`stage_path` / :meth:`stage_dir`; they go under temporary
    names beside their targets. :meth:`commit` writes the journal (one atomic rename: the commit
    point), moves every staged file into place and removes the journal. A crash before the
    journal leaves the old set (the staged files are removed by :func:`recover`); a crash after
    it is finished by :func:`recover` (every move is idempotent). Paths are relative to ``root``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.moves: list[tuple[str, str]] = []
        self.deletes: list[str] = []

    def stage_path(self, rel: str) -> Path:
        """The temporary path that becomes ``root/rel`` on commit (parent created)."""
        final = Path(rel)
        staged = final.parent / f"{STAGED}{self.id}-{final.name}"
        self.moves.append((str(staged), str(final)))
        (self.root / staged).parent.mkdir(parents=True, exist_ok=True)
        return self.root / staged

    def stage_dir(self, rel: str) -> Path:
        """A temporary directory that replaces directory ``root/rel`` on commit."""
        p = self.stage_path(rel)
        p.mkdir()
        return p

    def _write(self, rel: str, write) -> Path:
        p = self.stage_path(rel)
        with self.writing(p), open(p, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _after_write(f"staged {rel}")
        return p

    def write_with(self, rel: str, write: Callable[[Path], Any]) -> Path:
        """Stage ``root/rel`` by ``write(path)`` (a writer that takes a file name)."""
        p = self.stage_path(rel)
        with self.writing(p):
            write(p)
        _after_write(f"staged {rel}")
        return p

    def writing(self, path: str | Path) -> contextlib.AbstractContextManager[None]:
        """Write staged file ``path`` in the block: a failure removes every staged file of the
        commit, and a full or read-only disk is one ``OSError`` naming the file
        (:func:`disk_errors`)."""
        return disk_errors(path, cleanup=self.abort)

    def abort(self) -> None:
        """Remove every file staged so far (the commit will not happen)."""
        for staged, _ in self.moves:
            p = self.root / staged
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        self.moves.clear()

    def write_bytes(self, rel: str, data: bytes) -> Path:
        return self._write(rel, lambda f: f.write(data))

    def write_json(self, rel: str, obj: Any) -> Path:
        return self.write_bytes(rel, (json.dumps(obj, indent=2) + "\n").encode())

    def save_npy(self, rel: str, array: np.ndarray) -> Path:
        return self._write(rel, lambda f: np.save(f, array))

    def save_npz(self, rel: str, **arrays: np.ndarray) -> Path:
        return self._write(rel, lambda f: np.savez(f, **arrays))

    def delete(self, rel: str) -> None:
        """Remove ``root/rel`` as part of the commit."""
        self.deletes.append(rel)

    def commit(self) -> None:
        """Make every staged file current in one atomic step (then tidy up)."""
        for staged, _ in self.moves:
            _fsync_tree(self.root / staged)
        journal = {"id": self.id, "moves": self.moves, "deletes": self.deletes}
        try:
            atomic_write_json(self.root / JOURNAL, journal)  # the commit point
        except BaseException:
            if not (self.root / JOURNAL).exists():  # before the commit point: nothing happened
                self.abort()
            raise
        _apply(self.root, journal)


def _fsync_tree(p: Path) -> None:
    if p.is_dir():
        for f in p.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    elif p.exists():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())


def _apply(root: Path, journal: dict) -> None:
    """Roll a committed journal forward (idempotent), then remove it."""
    jid = journal["id"]
    trash = []
    for staged, final in journal["moves"]:
        s, f = root / staged, root / final
        if not s.exists():
            continue  # moved before a crash
        if s.is_dir() and f.exists():
            old = f.parent / f"{OLD}{jid}-{f.name}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(f, old)
            trash.append(old)
            _after_write(f"moved old {final}")
        os.replace(s, f)
        _after_write(f"moved {final}")
    for rel in journal.get("deletes", []):
        if (root / rel).exists():
            (root / rel).unlink()
            _after_write(f"deleted {rel}")
    for old in trash:
        shutil.rmtree(old, ignore_errors=True)
    (root / JOURNAL).unlink()
    _after_write("journal removed")


def _is_temporary(name: str) -> bool:
    return (
        name.startswith((STAGED, OLD))
        or (name.startswith(".") and name.endswith((".tmp", ".old")))
        or (name.startswith(".") and ".tmp" in name and name.endswith(".dcd"))
    )


def recover(root: str | Path, subdirs: tuple[str, ...] = ()) -> bool:
    """Finish a committed but half-applied :class:`Commit` in ``root`` and remove stale
    temporaries (staged files, atomic-write and checkpoint temporaries) in ``root`` and
    ``subdirs``. Call it holding :func:`lock_dir`. Returns whether a commit was finished."""
    root = Path(root)
    finished = False
    if (root / JOURNAL).exists():
        journal = read_json(root / JOURNAL, "commit journal")
        log.warning("%s: finishing an interrupted commit", root)
        _apply(root, journal)
        finished = True
    for d in (root, *(root / s for s in subdirs)):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if _is_temporary(p.name):
                log.info("removing stale temporary %s", p)
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    return finished
