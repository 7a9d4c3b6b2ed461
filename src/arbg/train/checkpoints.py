"""Model checkpoints: one self-contained directory per checkpoint.

Layout of a checkpoint directory::

    CHECKPOINT/
        config.json         schema version, model config, binning, standardization, system
                            (spec, atom names, force-field sha256, temperature), versions
                            (arbg, torch, OpenMM) and a training summary (step, val NLL)
        model.safetensors   the trained weights
        ema.safetensors     EMA of the weights (only when training used EMA)
        trainer_state.pt    optional: optimizer, schedule, step, RNG states, data position
                            (everything :mod:`arbg.train.trainer` needs to resume bit-exactly)
        checksums.json      sha256 of every other file, written at save and checked at load
                            (an edited config or corrupted weights are refused)

A *mixture* of proposals (:func:`write_mixture`, `arbg mixture`) is a directory of member
checkpoints with a ``mixture.json`` (member directories and weights); `arbg sample` draws from
it with the mixture's exact log q (:func:`arbg.sampling.sampler.generate_mixture`).

``arbg sample CHECKPOINT`` needs nothing else: the system is rebuilt from its spec and the
preprocessing (standardization, binning) is undone exactly. A checkpoint is written into a
staged directory and made current by one :class:`arbg.files.Commit` (journal rename), so a reader
never sees a half-written one and a crash mid-replace is finished by :func:`arbg.files.recover`.
Loading verifies the checksums, that every parameter is finite and that the force-field files
hash as recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import arbg
from arbg.checks import ArgumentError, read_json
from arbg.chem.systems import PeptideSystem, SystemSpec, build_system, validate_sequence
from arbg.files import Commit, note_write, usual_mode
from arbg.nn.conditioning import (
    TEMPLATE_KEYS,
    BoundModel,
    ConditioningConfig,
    TransferableARBG,
    check_limits,
    encode_system,
    system_features,
)
from arbg.nn.coordinates import Binning, Standardization
from arbg.nn.model import ARBG, ModelConfig, TokenFeatures

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"
CHECKSUMS_FILE = "checksums.json"
MIXTURE_FILE = "mixture.json"
#: entries of ``config.json`` that have no default: a checkpoint without one is refused
REQUIRED_ENTRIES = (("model", "head"), ("standardization", "frame"))


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


def verify_checkpoint(path: str | Path) -> None:
    """Check the files of a checkpoint against its ``checksums.json``.

    Raises :class:`CheckpointIntegrityError` naming the file that differs or is missing, and
    for a checkpoint without ``checksums.json`` (every checkpoint arbg writes has one).
    """
    path = Path(path)
    if not (path / CHECKSUMS_FILE).exists():
        raise CheckpointIntegrityError(
            f"checkpoint {str(path)!r} has no {CHECKSUMS_FILE}: its files cannot be verified "
            "(arbg writes one with every checkpoint); restore it, or if you made it yourself and "
            f"trust its files, sign it: arbg sign-checkpoint {path}"
        )
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


def sign_checkpoint(path: str | Path) -> dict[str, str]:
    """Write ``checksums.json`` for a checkpoint of one's own that lacks it (the explicit
    opt-in: loading never skips the check). Refuses a directory that is not a checkpoint or
    that is signed already; returns the recorded digests."""
    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointIntegrityError(f"{str(path)!r} is not a checkpoint: no {name}")
    if (path / CHECKSUMS_FILE).exists():
        raise CheckpointIntegrityError(
            f"checkpoint {str(path)!r} is signed already ({CHECKSUMS_FILE}); nothing to do"
        )
    load_weights(path)  # readable, finite weights
    read_config(path, verify=False)
    return write_checksums(path)


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
    :func:`save_checkpoint` and :func:`save_transferable_checkpoint`).
    """
    path = Path(path)
    commit = Commit(path.parent)
    tmp = commit.stage_dir(path.name)
    with commit.writing(tmp / WEIGHTS_FILE):  # a full disk: one line, no staged files left
        save_file(_state_dict_for_safetensors(model), str(tmp / WEIGHTS_FILE))
        usual_mode(tmp / WEIGHTS_FILE)  # safetensors writes 0600 whatever the umask
    note_write(f"staged {path.name}/{WEIGHTS_FILE}")
    if ema_model is not None:
        with commit.writing(tmp / EMA_FILE):
            save_file(_state_dict_for_safetensors(ema_model), str(tmp / EMA_FILE))
            usual_mode(tmp / EMA_FILE)
    if trainer_state is not None:
        with commit.writing(tmp / TRAINER_STATE_FILE):
            torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
        note_write(f"staged {path.name}/{TRAINER_STATE_FILE}")
    with commit.writing(tmp / CONFIG_FILE):
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
    _copy_checkpoint_files(src, tmp, with_trainer_state)
    commit.commit()
    return dst


def _copy_checkpoint_files(src: Path, dst: Path, with_trainer_state: bool) -> None:
    """Copy a checkpoint's files into the (staged, existing) directory ``dst``, with checksums."""
    for f in src.iterdir():
        if f.name == TRAINER_STATE_FILE and not with_trainer_state:
            continue
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)
    write_checksums(dst)


def read_config(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse and validate ``config.json`` of a checkpoint directory (checksums verified)."""
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not path.exists():
        raise ArgumentError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_dir():
        raise ArgumentError(f"checkpoint {str(path)!r} is not a directory (a checkpoint is one)")
    if not cfg_path.exists() and (path / MIXTURE_FILE).exists():
        raise ArgumentError(
            f"{path} is a mixture of proposals ({MIXTURE_FILE}): `arbg sample` takes it; "
            f"elsewhere give one of its member checkpoints (e.g. {path / 'member-0'})"
        )
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
    for section, key in REQUIRED_ENTRIES:
        if not isinstance(config.get(section), dict) or key not in config[section]:
            raise ArgumentError(
                f"{cfg_path}: no '{section}.{key}' entry (every checkpoint this arbg writes has "
                "one); retrain or restore the checkpoint"
            )
    return config


# --------------------------------------------------------------------------------------------------
# single-system checkpoints


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    path : Path
        The checkpoint directory.
    model : ARBG
        In eval mode, on the requested device (EMA weights if present and asked for).
    binning, standardization : the preprocessing fitted on the training data.
    system : PeptideSystem
        The system the model was trained on (rebuilt from its spec, or the one passed in).
    config : dict
        The parsed ``config.json``.
    used_ema : bool
        Whether the model holds the EMA weights.
    """

    path: Path
    model: ARBG
    binning: Binning
    standardization: Standardization
    system: PeptideSystem
    config: dict[str, Any] = field(default_factory=dict)
    used_ema: bool = False

    @property
    def feats(self) -> TokenFeatures:
        """Token features of the system ([T] long tensors on the model's device)."""
        return system_features(self.system, self.standardization).to(
            next(self.model.parameters()).device
        )

    @property
    def n_coords(self) -> int:
        """Number of modelled coordinates ``3(n-1)``."""
        return self.standardization.n_coords

    @property
    def training(self) -> dict[str, Any]:
        """The training summary recorded with the checkpoint (step, val NLL, ...)."""
        return dict(self.config.get("training", {}))


def _system_record(system: PeptideSystem) -> dict[str, Any]:
    try:
        hashes = system.forcefield_hashes()
    except Exception as exc:  # unresolvable user force-field file: record, don't fail
        logger.warning("could not hash the force-field files: %s", exc)
        hashes = {}
    return {
        "spec": system.spec.to_dict(),
        "n_atoms": int(system.n_atoms),
        "atom_names": list(system.atom_names),
        "forcefield_sha256": hashes,
        "temperature_k": float(system.temperature_k),
    }


def save_checkpoint(
    path: str | Path,
    model: ARBG,
    binning: Binning,
    standardization: Standardization,
    system: PeptideSystem,
    training: dict[str, Any] | None = None,
    ema_model: torch.nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temporary sibling directory, then rename).

    Parameters
    ----------
    path : directory to create or replace.
    model : ARBG (a DDP wrapper's ``.module``; weights are copied to the CPU).
    binning, standardization : the preprocessing the model was trained with.
    system : PeptideSystem
    training : dict, optional
        Summary stored under ``"training"`` in config.json (step, val NLL, train config ...).
    ema_model : module, optional
        EMA copy of ``model`` (saved as ``ema.safetensors``).
    trainer_state : dict, optional
        Saved with ``torch.save`` as ``trainer_state.pt`` (for resuming).
    extra : dict, optional
        More JSON entries for config.json.

    Returns
    -------
    Path of the checkpoint directory.
    """
    path = Path(path)
    n_bins = int(model.config.n_bins)
    if binning.n_bins != n_bins:
        raise CheckpointMismatchError(
            f"binning has {binning.n_bins} bins, the model predicts {n_bins}"
        )
    if standardization.n_atoms != system.n_atoms:
        raise CheckpointMismatchError(
            f"standardization is for {standardization.n_atoms} atoms, the system "
            f"{system.name!r} has {system.n_atoms}"
        )
    config = {
        "schema_version": SCHEMA_VERSION,
        "format": "arbg-checkpoint",
        "model": model.config.to_dict(),
        "binning": binning.to_dict(),
        "standardization": standardization.to_dict(),
        "system": _system_record(system),
        "versions": _versions(),
        "training": training or {},
        "ema": ema_model is not None,
        **(extra or {}),
    }
    return write_checkpoint_dir(path, config, model, ema_model, trainer_state)


def _check_system(record: dict[str, Any], system: PeptideSystem) -> None:
    spec = SystemSpec.from_dict(record["spec"])
    problems = []
    if system.n_atoms != record["n_atoms"]:
        problems.append(f"n_atoms: checkpoint {record['n_atoms']}, system {system.n_atoms}")
    if system.spec.sequence != spec.sequence or system.spec.capped != spec.capped:
        problems.append(
            f"sequence: checkpoint {spec.sequence!r} (capped={spec.capped}), system "
            f"{system.spec.sequence!r} (capped={system.spec.capped})"
        )
    names = list(system.atom_names)
    if names != list(record["atom_names"]):
        diff = [
            f"{i}: {a!r} vs {b!r}"
            for i, (a, b) in enumerate(zip(record["atom_names"], names, strict=False))
            if a != b
        ]
        problems.append("atom names (checkpoint vs system) differ at " + ", ".join(diff[:5]))
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint was trained on system {spec.name!r}, cannot load it into "
            f"{system.name!r}: " + "; ".join(problems)
        )
    if tuple(system.spec.forcefield) != tuple(spec.forcefield):
        logger.warning(
            "force field differs: checkpoint %s, system %s", spec.forcefield, system.spec.forcefield
        )
    else:
        _check_forcefield_hashes(record.get("forcefield_sha256") or {}, system)
    if abs(system.temperature_k - record["temperature_k"]) > 1e-9:
        logger.warning(
            "temperature differs: checkpoint %.2f K, system %.2f K",
            record["temperature_k"],
            system.temperature_k,
        )


def _check_forcefield_hashes(recorded: dict[str, str], system: PeptideSystem) -> None:
    """The force-field files must hash as recorded at training (same name, other content)."""
    if not recorded:
        return
    try:
        now = system.forcefield_hashes()
    except Exception as exc:  # an unresolvable file: say so instead of guessing
        raise CheckpointMismatchError(f"cannot hash the force-field files: {exc}") from exc
    diff = [k for k, v in recorded.items() if k in now and now[k] != v]
    if diff:
        raise CheckpointMismatchError(
            f"force-field file(s) {', '.join(diff)} differ from the ones the checkpoint was "
            "trained with (sha256 recorded in config.json); energies and the model disagree"
        )


def _checked_binning(
    path: Path, config: dict[str, Any], model_config: ModelConfig, expected: Binning | None
) -> Binning:
    """The checkpoint's binning, checked against the model's bin count and an ``expected``
    binning (single-system and transferable checkpoints alike)."""
    stored = Binning.from_dict(config["binning"])
    if stored.n_bins != model_config.n_bins:
        raise CheckpointMismatchError(
            f"{path}: binning has {stored.n_bins} bins but the model predicts {model_config.n_bins}"
        )
    if expected is not None and expected != stored:
        raise CheckpointMismatchError(
            f"{path}: binning mismatch: checkpoint {stored}, given {expected}"
        )
    return stored


def _check_features(path: Path, state: dict[str, torch.Tensor], feats: TokenFeatures) -> None:
    """The system's token features must equal those stored with the weights (``feat_*``)."""
    for name, t in feats.tensors().items():
        stored = state.get(f"feat_{name}")
        if stored is not None and not torch.equal(stored, t):
            raise CheckpointMismatchError(
                f"{path}: token feature {name!r} of the system differs from the checkpoint's"
            )


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    system: PeptideSystem | None = None,
    use_ema: bool = True,
    binning: Binning | None = None,
    sequence: str | None = None,
) -> Checkpoint:
    """Load a checkpoint directory written by :func:`save_checkpoint`.

    A transferable checkpoint (``"transferable": true``, :mod:`arbg.nn.conditioning`) is bound to
    ``system`` or to a peptide built from ``sequence`` with the checkpoint's force field and
    temperature; a single-system checkpoint refuses ``sequence``.

    Parameters
    ----------
    path : checkpoint directory.
    device : where to put the model.
    system : PeptideSystem, optional
        Load into this system (must match the checkpoint's atom names, atom count and
        sequence); default: rebuild it from the stored spec (``minimize=False``).
    use_ema : bool
        Use the EMA weights when the checkpoint has them.
    binning : Binning, optional
        An expected binning; it must equal the stored one.

    Returns
    -------
    Checkpoint (model in eval mode).

    Raises
    ------
    CheckpointMismatchError
        If the system or the binning does not fit the model.
    """
    path = Path(path)
    config = read_config(path)
    if config.get("transferable"):
        return load_transferable(
            path, device=device, system=system, sequence=sequence, use_ema=use_ema, binning=binning
        )
    if sequence is not None:
        name = config.get("system", {}).get("spec", {}).get("name")
        raise ValueError(
            f"a sequence needs a transferable checkpoint; {path} was trained on "
            f"the single system {name!r}"
        )
    model_config = ModelConfig.from_dict(config["model"])
    stored_binning = _checked_binning(path, config, model_config, binning)
    standardization = Standardization.from_dict(config["standardization"])
    record = config["system"]
    if system is None:
        system = build_system(SystemSpec.from_dict(record["spec"]), minimize=False)
    _check_system(record, system)
    if standardization.n_atoms != system.n_atoms:
        raise CheckpointMismatchError(
            f"{path}: standardization is for {standardization.n_atoms} atoms, the system has "
            f"{system.n_atoms}"
        )
    feats = system_features(system, standardization)
    model = ARBG(model_config, default_feats=feats)
    model.set_bin_floor(stored_binning.token_floor(standardization))
    used_ema = bool(use_ema and (path / EMA_FILE).exists())
    state = load_weights(path, EMA_FILE if used_ema else WEIGHTS_FILE)
    _check_features(path, state, feats)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return Checkpoint(
        path=path,
        model=model,
        binning=stored_binning,
        standardization=standardization,
        system=system,
        config=config,
        used_ema=used_ema,
    )


def is_mixture(path: str | Path) -> bool:
    """Whether ``path`` is a mixture directory (:func:`write_mixture`)."""
    return (Path(path) / MIXTURE_FILE).is_file()


def write_mixture(
    out: str | Path, members: list[str | Path], weights: list[float] | None = None
) -> Path:
    """Write a mixture of proposals: copies of the member checkpoints (``member-K/``, checksummed,
    without trainer state) and ``mixture.json`` (``members``, ``weights``, ``sources``).

    The members are loaded first: each must be a single-system checkpoint of the same system
    and frame (a mixture's density needs every member's density at every sample). ``weights``
    default to equal; they are normalised. Refuses an existing ``out``.
    """
    out = Path(out)
    if out.exists():
        raise ArgumentError(f"{out} exists; a mixture is written to a new directory")
    if len(members) < 2:
        raise ArgumentError(f"a mixture needs at least 2 member checkpoints, got {len(members)}")
    w = [1.0] * len(members) if weights is None else [float(v) for v in weights]
    if len(w) != len(members) or any(not v >= 0 for v in w) or sum(w) <= 0:
        raise ArgumentError(
            f"--weights: one non-negative weight per member ({len(members)}), not all zero; "
            f"got {weights}"
        )
    loaded = [load_checkpoint(m) for m in members]
    _check_mixture(loaded, [str(m) for m in members])
    commit = Commit(out.parent)
    tmp = commit.stage_dir(out.name)
    names = [f"member-{k}" for k in range(len(members))]
    for name, src in zip(names, members, strict=True):
        (tmp / name).mkdir()
        _copy_checkpoint_files(Path(src), tmp / name, with_trainer_state=False)
    record = {
        "format": "arbg-mixture",
        "members": names,
        "weights": [v / sum(w) for v in w],
        "sources": [str(Path(m).resolve()) for m in members],
    }
    (tmp / MIXTURE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    commit.commit()
    return out


def load_mixture(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[list[Checkpoint], list[float]]:
    """The member checkpoints (verified) and the normalised weights of a mixture directory."""
    path = Path(path)
    record = read_json(path / MIXTURE_FILE, "mixture")
    record = record if isinstance(record, dict) else {}
    members, weights = record.get("members"), record.get("weights")
    ok = isinstance(members, list) and isinstance(weights, list) and len(members) == len(weights)
    if not ok or len(members) < 2 or not all(isinstance(m, str) for m in members):
        raise ArgumentError(
            f"{path / MIXTURE_FILE}: not a mixture record (needs 'members' and 'weights' of equal "
            "length >= 2)"
        )
    if any(Path(m).is_absolute() or ".." in Path(m).parts for m in members):
        raise ArgumentError(f"{path / MIXTURE_FILE}: members must be directories inside {path}")
    try:
        w = [float(v) for v in weights]
    except (TypeError, ValueError):
        raise ArgumentError(f"{path / MIXTURE_FILE}: weights must be numbers: {weights}") from None
    if any(not v >= 0 for v in w) or sum(w) <= 0:
        raise ArgumentError(f"{path / MIXTURE_FILE}: weights must be >= 0, not all 0: {weights}")
    loaded = [load_checkpoint(path / m, device=device) for m in members]
    _check_mixture(loaded, [str(path / m) for m in members])
    return loaded, [v / sum(w) for v in w]


def _check_mixture(members: list[Checkpoint], names: list[str]) -> None:
    """Refuse members of another system, a transferable one, or another frame."""
    first = members[0]
    for ck, name in zip(members, names, strict=True):
        if ck.config.get("transferable"):
            raise ArgumentError(f"{name}: a mixture takes single-system checkpoints")
        if ck.system.name != first.system.name or ck.system.n_atoms != first.system.n_atoms:
            raise ArgumentError(
                f"{name} is for {ck.system.name!r} ({ck.system.n_atoms} atoms), {names[0]} for "
                f"{first.system.name!r} ({first.system.n_atoms} atoms): a mixture's members "
                "share the system"
            )
        a, b = ck.standardization, first.standardization
        if (a.frame, a.gauge_atoms) != (b.frame, b.gauge_atoms):
            raise ArgumentError(
                f"{name} uses frame {a.frame} {a.gauge_atoms}, {names[0]} {b.frame} "
                f"{b.gauge_atoms}: a mixture's members share the frame"
            )


def load_trainer_state(path: str | Path) -> dict[str, Any] | None:
    """The ``trainer_state.pt`` of a checkpoint directory (None if absent)."""
    f = Path(path) / TRAINER_STATE_FILE
    if not f.exists():
        return None
    verify_checkpoint(path)
    try:  # tensors and plain values only: a checkpoint from elsewhere cannot run code here
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointIntegrityError(
            f"{f}: holds objects other than tensors and plain values, refused (loading it could "
            f"run code): {' '.join(str(e).split())[:200]}"
        ) from e


# --------------------------------------------------------------------------------------------------
# transferable checkpoints (bound to a sequence at load time)


def save_transferable_checkpoint(
    path: str | Path,
    model: TransferableARBG,
    binning: Binning,
    std_nm: float,
    info: dict[str, Any],
    training: dict[str, Any] | None = None,
    ema_model: nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a transferable checkpoint (layout of :mod:`arbg.train.checkpoints`).

    ``config.json`` has ``"transferable": true``, ``model``, ``conditioning``, ``binning``,
    ``standardization`` (``std_nm``, frame ``"gauge"``), ``corpus`` (spec template, force field,
    solvent, temperature_k, training sequences) and ``limits`` (max_residues, max_atoms,
    residues), from ``info``.
    """
    config = {
        "schema_version": SCHEMA_VERSION,
        "format": "arbg-checkpoint",
        "transferable": True,
        "model": model.config.to_dict(),
        "conditioning": model.conditioning.to_dict(),
        "binning": binning.to_dict(),
        "standardization": {"std_nm": float(std_nm), "frame": "gauge"},
        "corpus": info["corpus"],
        "limits": info["limits"],
        "versions": _versions(),
        "training": training or {},
        "ema": ema_model is not None,
    }
    return write_checkpoint_dir(path, config, model, ema_model, trainer_state)


def system_for_sequence(sequence: str, template: dict[str, Any]) -> PeptideSystem:
    """Build ``sequence`` with a checkpoint's force-field template (not minimised)."""
    seq = validate_sequence(sequence)
    t = dict(template)
    t["forcefield"] = tuple(t["forcefield"])
    return build_system(SystemSpec(name=seq, sequence=seq, **t), minimize=False)


def load_transferable(
    path: str | Path,
    device: str | torch.device = "cpu",
    system: PeptideSystem | None = None,
    sequence: str | None = None,
    use_ema: bool = True,
    binning: Binning | None = None,
) -> Checkpoint:
    """Load a transferable checkpoint bound to ``system`` or to ``sequence`` (built with the
    checkpoint's force field and temperature); a :class:`Checkpoint` whose model is a
    :class:`arbg.nn.conditioning.BoundModel` (conditioning computed once).

    Raises
    ------
    ValueError
        Neither system nor sequence given, or the sequence is outside the stored limits.
    """
    path = Path(path)
    config = read_config(path)
    if system is None and sequence is None:
        raise ValueError(
            f"{path} is a transferable checkpoint: give a sequence "
            "(arbg sample CHECKPOINT --sequence SEQ)"
        )
    if system is None:
        system = system_for_sequence(str(sequence), config["corpus"]["spec"])
    elif sequence is not None and system.spec.sequence != sequence.upper():
        raise ValueError(f"system {system.name!r} is not sequence {sequence!r}")
    check_limits(system, config["limits"])
    tpl = config["corpus"]["spec"]
    mine = {k: v for k, v in system.spec.to_dict().items() if k in TEMPLATE_KEYS}
    if mine != tpl:
        logger.warning("system settings %s differ from the corpus's %s", mine, tpl)
    model_config = ModelConfig.from_dict(config["model"])
    stored = _checked_binning(path, config, model_config, binning)
    net = TransferableARBG(model_config, ConditioningConfig.from_dict(config["conditioning"]))
    used_ema = bool(use_ema and (path / EMA_FILE).exists())
    net.load_state_dict(load_weights(path, EMA_FILE if used_ema else WEIGHTS_FILE), strict=True)
    net.to(device).eval()
    enc = encode_system(system, config["standardization"]["std_nm"], stored)
    seen = system.spec.sequence in set(config["corpus"].get("train_sequences", []))
    logger.info(
        "transferable checkpoint %s bound to %s (%d atoms, %s)",
        path,
        system.name,
        system.n_atoms,
        "a training sequence" if seen else "zero-shot",
    )
    return Checkpoint(
        path=path,
        model=BoundModel(net, enc).eval(),  # type: ignore[arg-type]
        binning=stored,
        standardization=enc.standardization,
        system=system,
        config=config,
        used_ema=used_ema,
    )
