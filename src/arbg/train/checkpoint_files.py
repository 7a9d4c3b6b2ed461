"""The on-disk format of a checkpoint directory: file names, checksums, atomic writing and
copying, and the parsed, verified ``config.json`` (see :mod:`arbg.train.checkpoints` for the
layout and for building models from it)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import arbg
from arbg.checks import ArgumentError, read_json
from arbg.files import Commit, note_write

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"
CHECKSUMS_FILE = "checksums.json"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the system or binning it is loaded with."""


class CheckpointIntegrityError(ArgumentError):
    """A checkpoint's files do not match the checksums recorded at save, or hold NaN weights."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(path: str | Path) -> dict[str, str]:
    """Record the sha256 of every file of checkpoint directory ``path`` in ``checksums.json``."""
    path = Path(path)
    sums = {
        f.name: _sha256(f)
        for f in sorted(path.iterdir())
        if f.is_file() and f.name != CHECKSUMS_FILE and not f.name.startswith(".")
    }
    (path / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2) + "\n")
    return sums


def verify_checkpoint(path: str | Path) -> bool:
    """Check the files of a checkpoint against its ``checksums.json``.

    Returns False (with a warning) for a checkpoint without checksums (written before they
    existed); raises :class:`CheckpointIntegrityError` naming the file that differs.
    """
    path = Path(path)
    if not (path / CHECKSUMS_FILE).exists():
        logger.warning("%s has no %s: its files cannot be verified", path, CHECKSUMS_FILE)
        return False
    sums = read_json(path / CHECKSUMS_FILE, "checkpoint checksums")
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            raise CheckpointIntegrityError(f"checkpoint {str(path)!r}: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointIntegrityError(
                f"checkpoint {str(path)!r}: {name} was modified or corrupted after it was saved "
                f"(sha256 differs from {CHECKSUMS_FILE}); retrain or restore the checkpoint"
            )
    return True


def load_weights(path: str | Path, name: str = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """The tensors of ``path/name`` (safetensors), refusing unreadable or non-finite weights."""
    f = Path(path) / name
    try:
        state = load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointIntegrityError(f"{str(f)!r} is not a readable safetensors file: {e}") from e
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointIntegrityError(
            f"{str(f)!r}: non-finite (NaN/inf) parameters in {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        )
    return state


def _versions() -> dict[str, str]:

    out = {"arbg": arbg.__version__, "torch": torch.__version__}
    try:
        import openmm

        out["openmm"] = openmm.__version__
    except ImportError:  # pragma: no cover - openmm is a hard dependency of arbg
        out["openmm"] = "unavailable"
    return out


def _state_dict_for_safetensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def write_checkpoint_dir(
    path: str | Path,
    config: dict[str, Any],
    model: torch.nn.Module,
    ema_model: torch.nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json``, the weights and optional EMA / trainer state atomically.

    The directory is assembled in a temporary sibling and renamed into place (shared by
    :func:`save_checkpoint` and :func:`arbg.nn.conditioning.save_transferable_checkpoint`).
    """
    path = Path(path)
    commit = Commit(path.parent)
    tmp = commit.stage_dir(path.name)
    save_file(_state_dict_for_safetensors(model), str(tmp / WEIGHTS_FILE))
    note_write(f"staged {path.name}/{WEIGHTS_FILE}")
    if ema_model is not None:
        save_file(_state_dict_for_safetensors(ema_model), str(tmp / EMA_FILE))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
        note_write(f"staged {path.name}/{TRAINER_STATE_FILE}")
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    write_checksums(tmp)
    note_write(f"staged {path.name}/{CHECKSUMS_FILE}")
    commit.commit()
    logger.info("saved checkpoint %s", path)
    return path


def copy_checkpoint(src: str | Path, dst: str | Path, with_trainer_state: bool = False) -> Path:
    """Copy a checkpoint directory atomically (e.g. ``last`` -> ``best``), with checksums."""
    src, dst = Path(src), Path(dst)
    commit = Commit(dst.parent)
    tmp = commit.stage_dir(dst.name)
    for f in src.iterdir():
        if f.name == TRAINER_STATE_FILE and not with_trainer_state:
            continue
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, tmp / f.name)
    write_checksums(tmp)
    commit.commit()
    return dst


def read_config(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse and validate ``config.json`` of a checkpoint directory (checksums verified)."""
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not path.exists():
        raise ArgumentError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_dir():
        raise ArgumentError(f"checkpoint {str(path)!r} is not a directory (a checkpoint is one)")
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} is not an arbg checkpoint (no {CONFIG_FILE})")
    if verify:
        verify_checkpoint(path)
    config = read_json(cfg_path, "checkpoint config")
    if not isinstance(config, dict):
        raise ArgumentError(f"{cfg_path}: not a checkpoint config (a JSON object)")
    version = config.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{cfg_path}: checkpoint schema version {version}, this arbg reads {SCHEMA_VERSION}"
        )
    return config
