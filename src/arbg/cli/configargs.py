"""Command-line flags made from config dataclasses: one default and one help text per parameter.

A job's settings live in one dataclass (``MDConfig``, ``TrainConfig``, ``ZeroShotConfig``, ...)
whose numpy-style docstring has an ``Attributes`` section (``name : help text``). The CLI adds a
flag per field with :func:`add_config_args` and builds the config back with
:func:`config_from_args`, so a default is written once, in the dataclass.

Field types map to flags: ``int``/``float``/``str`` take one value, ``bool`` gives
``--flag/--no-flag``, ``list[X]`` and ``tuple[X, ...]`` take several values (``nargs="+"``).
Field metadata refines a flag: ``choices``, ``type`` (an argparse type replacing the one of
the hint), ``flag`` (its name), ``aliases`` (more names),
``comma`` (a list given as ``A,B,C``), ``nargs``, ``metavar``, ``dest`` (where argparse
stores it, when another flag already uses the field's name); ``prefix`` (an argument of
:func:`add_config_args`) names the flags of a nested config (``--bias-build-ns``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any

__all__ = ["add_config_args", "config_from_args", "field_help"]


def field_help(cls: type) -> dict[str, str]:
    """``{field: help}`` from the ``Attributes`` sections of the numpy-style docstrings of
    ``cls`` and its bases (the class's own text wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(_own_field_help(klass))
    return out


def _own_field_help(cls: type) -> dict[str, str]:
    doc = cls.__dict__.get("__doc__") or ""
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


def _flags(f: dataclasses.Field, prefix: str) -> list[str]:
    name = f.metadata.get("flag", "--" + prefix + f.name.replace("_", "-"))
    return [name, *f.metadata.get("aliases", ())]


def _dest(f: dataclasses.Field, prefix: str) -> str:
    return f.metadata.get("dest", prefix.replace("-", "_") + f.name)


def _comma_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _element_type(tp: Any) -> tuple[str | None, Any]:
    """("list"/"tuple"/None, the element or value type) of a (possibly Optional) hint."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (list, tuple):
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return typing.get_origin(tp).__name__, inner[0] if inner else str
    if len(args) == 1 and typing.get_origin(tp) is not None:  # X | None
        return _element_type(args[0])
    return None, tp


def add_config_args(parser: Any, cls: type, skip: tuple[str, ...] = (), prefix: str = "") -> None:
    """Add one flag per field of the dataclass ``cls`` to ``parser`` (a parser or group).

    Defaults and help come from the class; fields in ``skip`` get no flag. The parsed values
    land under the field names (``dest``), prefixed by ``prefix`` with ``_`` for ``-``.
    """
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", helps.get(f.name, ""))
        # argparse %-formats help text: a literal % in a docstring ("2.7 %") must be doubled
        text = text.replace("``", "").rstrip(".").replace("%", "%%")
        if default is not None and default != () and "default" not in text:
            text = f"{text} (default: {default})" if text else f"default: {default}"
        kw: dict[str, Any] = {"dest": _dest(f, prefix), "default": default}
        kw["help"] = text
        for key in ("choices", "nargs", "metavar"):
            if key in f.metadata:
                kw[key] = f.metadata[key]
        kind, elem = _element_type(hints[f.name])
        if "type" in f.metadata:
            kw["type"] = f.metadata["type"]
        elif elem is bool and kind is None:
            kw["action"] = argparse.BooleanOptionalAction
        elif kind is not None and f.metadata.get("comma"):
            kw.update(type=_comma_list, metavar=kw.get("metavar", "A,B,..."))
        elif kind is not None:
            kw.update(type=elem, nargs=kw.get("nargs", "+"))
        else:
            kw["type"] = elem
        parser.add_argument(*_flags(f, prefix), **kw)


def config_from_args(
    cls: type, args: argparse.Namespace, prefix: str = "", **overrides: Any
) -> Any:
    """The dataclass ``cls`` from the flags of :func:`add_config_args` (+ ``overrides``)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        dest = _dest(f, prefix)
        if f.init and hasattr(args, dest):
            v = getattr(args, dest)
            is_tuple = _element_type(hints[f.name])[0] == "tuple"
            values[f.name] = tuple(v) if isinstance(v, list) and is_tuple else v
    values.update(overrides)
    return cls(**values)
