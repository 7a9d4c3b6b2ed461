"""What several command groups of the CLI share: the cache directory, the system flags and the
command line as typed."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from arbg.chem.systems import PeptideSystem, SystemOptions, build_system
from arbg.cli.configargs import add_config_args, config_from_args


def default_cache_dir() -> Path:
    """Where bulk data goes unless the user says otherwise ($ARBG_CACHE or ~/.cache/arbg)."""
    return Path(os.environ.get("ARBG_CACHE", Path.home() / ".cache" / "arbg"))


def add_system_args(p: argparse.ArgumentParser) -> None:
    """The positional preset name and the flags of :class:`arbg.chem.systems.SystemOptions`."""
    p.add_argument(
        "system", nargs="?", help="preset name (aldp, ace-aaa-nme, aaa, aaaaaa, chignolin)"
    )
    add_config_args(p, SystemOptions)


def system_from_args(args: argparse.Namespace) -> PeptideSystem:
    """The system of :func:`add_system_args` (minimized unless it comes from a PDB)."""
    spec = config_from_args(SystemOptions, args).spec(args.system)
    return build_system(spec, minimize=args.pdb is None)


def command_line(args: argparse.Namespace) -> str:
    """The command line as typed (``main`` keeps its argv on ``args.argv``)."""
    argv = getattr(args, "argv", None)
    return "arbg " + shlex.join(sys.argv[1:] if argv is None else argv)
