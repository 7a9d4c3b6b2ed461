"""Command-line flags made from config dataclasses: one default and one help text per parameter.

A job's settings live in one dataclass (``MDConfig``, ``TrainConfig``, ``ZeroShotConfig``, ...)
whose numpy-style docstring has an ``Attributes`` section (``name : help text``). The CLI adds a
flag per field with :func:`add_config_args` and builds the config back with
:func:`config_from_args`, so a default is written once, in the dataclass.

Field types map to flags: ``int``/``float``/``str`` take one value, ``bool`` gives
``--flag/--no-flag``, ``list[str] | None`` takes comma-separated values, ``tuple[...]`` takes
several values. ``field(metadata={"choices": (...)})`` restricts the values, and
``metadata={"flag": "--name"}`` renames the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any

__all__ = ["add_config_args", "config_from_args", "field_help"]


def field_help(cls: type) -> dict[str, str]:
    """``{field: help}`` from the ``Attributes`` section of ``cls``'s numpy-style docstring."""
    doc = cls.__doc__ or ""
    m = re.search(r"Attributes\n\s*-+\n(.*?)(?:\n\s*\n\S|\Z)", doc, flags=re.S)
    out: dict[str, str] = {}
    if not m:
        return out
    name = None
    for line in m.group(1).splitlines():
        hit = re.match(r"\s*([a-z_][a-z0-9_]*(?:,\s*[a-z_][a-z0-9_]*)*)\s*:\s*(.*)", line)
        if hit:
            names = [n.strip() for n in hit.group(1).split(",")]
            for n in names:
                out[n] = hit.group(2).strip()
            name = names
        elif name and line.strip():
            for n in name:
                out[n] += " " + line.strip()
    return out


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _comma_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of the dataclass ``cls`` (defaults and help from the class)."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": f.name, "default": default}
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", helps.get(f.name, ""))
        text = text.replace("``", "").rstrip(".")
        if default is not None and default != () and "default" not in text:
            text = f"{text} (default: {default})" if text else f"default: {default}"
        kw["help"] = text
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        base = [a for a in args if a is not type(None)] if args else []
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is list or (base and typing.get_origin(base[0]) is list):
            kw["type"] = _comma_list
            kw["metavar"] = "A,B,..."
        elif origin is tuple or (base and typing.get_origin(base[0]) is tuple):
            inner = args if origin is tuple else typing.get_args(base[0])
            kw["type"] = inner[0] if inner and inner[0] is not Ellipsis else str
            kw["nargs"] = "+"
        else:
            kw["type"] = base[0] if base else tp
        parser.add_argument(_flag(f), **kw)


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The dataclass ``cls`` from the parsed flags of :func:`add_config_args` (+ overrides)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.init and hasattr(args, f.name):
            v = getattr(args, f.name)
            tp = hints[f.name]
            kinds = {typing.get_origin(a) for a in typing.get_args(tp)} | {typing.get_origin(tp)}
            values[f.name] = tuple(v) if isinstance(v, list) and tuple in kinds else v
    values.update(overrides)
    return cls(**values)
