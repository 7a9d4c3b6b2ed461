"""Validation of values at the public boundaries: one function per kind of value.

Every check raises :class:`ArgumentError` (a ``ValueError``) whose message names the argument,
the value it got and what would be accepted, e.g. ``--tau: got 0; expected a finite number > 0``.
The CLI turns the error into exit code 2 and one line on stderr; the library functions the CLI
calls run the same checks, so the Python API gets them too. This module is in the bottom layer
(numpy only) and importable by every other.

Names: pass the CLI spelling (``"--n-bins"``) where the value comes from a flag, or the
parameter name (``"n_bins"``) in the library; :func:`flag` turns a parameter name into its flag.
"""

from __future__ import annotations

import json
import math
import numbers
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class ArgumentError(ValueError):
    """A value, file or directory given to arbg is not acceptable (names what and why)."""


def flag(name: str) -> str:
    """``"n_bins"`` -> ``"--n-bins"`` (names already spelt as flags are kept)."""
    return name if name.startswith("-") else "--" + name.replace("_", "-")


def _fail(name: str, value: Any, accepted: str) -> ArgumentError:
    return ArgumentError(f"{name}: got {value!r}; expected {accepted}")


def finite(name: str, value: Any) -> float:
    """A real, finite number (no bool, NaN or inf); returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, value, "a finite number")
    v = float(value)
    if not math.isfinite(v):
        raise _fail(name, value, "a finite number")
    return v


def positive_float(name: str, value: Any) -> float:
    """A finite number > 0."""
    v = finite(name, value)
    if v <= 0:
        raise _fail(name, value, "a finite number > 0")
    return v


def nonnegative_float(name: str, value: Any) -> float:
    """A finite number >= 0."""
    v = finite(name, value)
    if v < 0:
        raise _fail(name, value, "a finite number >= 0")
    return v


def integer(name: str, value: Any) -> int:
    """An integer (no bool; integral floats such as 3.0 are refused too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(name, value, "an integer")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """An integer >= 1."""
    v = integer(name, value)
    if v < 1:
        raise _fail(name, value, "an integer >= 1")
    return v


def nonnegative_int(name: str, value: Any) -> int:
    """An integer >= 0."""
    v = integer(name, value)
    if v < 0:
        raise _fail(name, value, "an integer >= 0")
    return v


def int_in_range(name: str, value: Any, low: int, high: int) -> int:
    """An integer with ``low <= value <= high``."""
    v = integer(name, value)
    if not low <= v <= high:
        raise _fail(name, value, f"an integer in [{low}, {high}]")
    return v


def in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite number in the interval from ``low`` to ``high`` (open ends as asked)."""
    v = finite(name, value)
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise _fail(name, value, f"a number in {interval}")
    return v


def one_of(name: str, value: Any, choices: tuple | list) -> Any:
    """One of ``choices``."""
    if value not in choices:
        raise _fail(name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def optional(check, name: str, value: Any, *args) -> Any:
    """``check(name, value, *args)`` unless ``value`` is None."""
    return None if value is None else check(name, value, *args)


def device(name: str, value: Any) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and CUDA only where this torch has it."""
    v = str(value)
    if not (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())):
        raise _fail(name, value, "'auto', 'cpu', 'cuda' or 'cuda:N'")
    if v.startswith("cuda"):
        import torch  # only when a GPU is asked for (this module is numpy-only otherwise)

        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise ArgumentError(
                f"{name}: got {value!r}, but this torch ({torch.__version__}) has {build}; "
                "use --device cpu (or auto)"
            )
        n = torch.cuda.device_count()
        if ":" in v and int(v[5:]) >= n:
            raise _fail(name, value, f"a GPU index below {n}")
    return v


def _existing(name: str, path: str | Path, is_kind: str, kind: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ArgumentError(f"{name}: {str(p)!r} does not exist")
    if not getattr(p, is_kind)():
        raise ArgumentError(f"{name}: {str(p)!r} is not a {kind}")
    return p


def existing_file(name: str, path: str | Path) -> Path:
    """A path to an existing regular file."""
    return _existing(name, path, "is_file", "file")


def existing_dir(name: str, path: str | Path) -> Path:
    """A path to an existing directory."""
    return _existing(name, path, "is_dir", "directory")


def output_dir(name: str, path: str | Path) -> Path:
    """A directory arbg may create or write: created if missing; a file there is refused."""
    p = Path(path)
    for parent in [p, *p.parents]:
        if parent.exists() and not parent.is_dir():
            raise ArgumentError(f"{name}: {str(parent)!r} is a file, not a directory")
        if parent.exists():
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArgumentError(f"{name}: cannot create directory {str(p)!r}: {e.strerror}") from e
    try:  # a probe file of this process's own: concurrent writers must not remove each other's
        with tempfile.NamedTemporaryFile(dir=p, prefix=".arbg-write-probe-"):
            pass
    except OSError as e:
        raise ArgumentError(f"{name}: directory {str(p)!r} is not writable: {e.strerror}") from e
    return p


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file names itself in the error."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
        return json.loads(text)
    except FileNotFoundError as e:
        raise ArgumentError(f"{what} {str(p)!r} does not exist") from e
    except IsADirectoryError as e:
        raise ArgumentError(f"{what} {str(p)!r} is a directory") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArgumentError(
            f"{what} {str(p)!r} is not valid JSON (truncated or corrupt): {e}"
        ) from e


def load_npy(path: str | Path, what: str = "array file") -> np.ndarray:
    """``np.load`` of a ``.npy`` file (no pickles); a corrupt file names itself in the error."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ArgumentError(f"{what} {str(p)!r} is not a .npy array (no NumPy header)")
    try:
        arr = np.load(p, allow_pickle=False)
    except FileNotFoundError as e:
        raise ArgumentError(f"{what} {str(p)!r} does not exist") from e
    except (ValueError, OSError, EOFError) as e:
        raise ArgumentError(f"{what} {str(p)!r} is not a readable .npy array: {e}") from e
    if not isinstance(arr, np.ndarray):
        raise ArgumentError(f"{what} {str(p)!r} holds an archive, not one array")
    return arr


# typical covalent bond lengths: C-H 0.109 nm ... S-S 0.205 nm
BOND_NM = (0.09, 0.21)


def coordinates_in_nm(
    name: str, x: np.ndarray, bonds: np.ndarray | None = None, max_frames: int = 200
) -> np.ndarray:
    """Check conformations ``x`` [F, n, 3] (or [n, 3]) are finite and in nm.

    With ``bonds`` [k, 2] (atom index pairs), the median bonded distance over up to
    ``max_frames`` frames must lie in the typical range (0.09-0.21 nm), so data in Angstrom
    (x10) or pm is caught; without bonds, the nearest-neighbour distance is used instead.
    """
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ArgumentError(f"{name}: shape {x.shape}; expected [frames, atoms, 3] positions")
    if x.shape[0] == 0 or x.shape[1] < 2:
        return x
    sub = x[:: max(1, len(x) // max_frames)][:max_frames].astype(np.float64)
    if not np.isfinite(sub).all() or not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=(1, 2))).sum())
        raise ArgumentError(f"{name}: {bad} frame(s) hold NaN or infinite coordinates")
    if bonds is not None and len(bonds):
        b = np.asarray(bonds, dtype=np.int64)
        d = np.linalg.norm(sub[:, b[:, 0]] - sub[:, b[:, 1]], axis=-1)
    else:
        diff = sub[:, :, None] - sub[:, None]
        dist = np.linalg.norm(diff, axis=-1)
        dist[:, np.arange(x.shape[1]), np.arange(x.shape[1])] = np.inf
        d = dist.min(axis=-1)
    med = float(np.median(d))
    low, high = BOND_NM if bonds is not None else (0.07, 0.25)
    if not low <= med <= high:
        hint = " (Angstrom? divide by 10)" if 10 * low <= med <= 10 * high else ""
        raise ArgumentError(
            f"{name}: median bond length {med:.4g} is not a bond length in nm "
            f"(expected {low}-{high} nm){hint}; arbg positions are in nm"
        )
    return x


def argparse_type(check, base: type = float):
    """An argparse ``type=`` that parses with ``base`` and validates with ``check(name, v, ...)``
    (argparse then reports ``argument --x: got ...; expected ...`` and exits with code 2)."""
    import argparse

    def parse(text: str):
        try:
            value = base(text)
        except ValueError:
            kind = "an integer" if base is int else "a number"
            raise argparse.ArgumentTypeError(f"got {text!r}; expected {kind}") from None
        try:
            return check("value", value)
        except ArgumentError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse
