"""Atomic file writes: write to a temporary file in the same directory, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def _atomic(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
