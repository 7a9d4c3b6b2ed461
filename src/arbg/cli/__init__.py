"""The ``arbg`` command. Each subcommand parses arguments and calls one library function.

The commands live by group: :mod:`arbg.cli._data` (``system``, ``md``, ``corpus``, ``bound``),
:mod:`arbg.cli._model` (``train``, ``train-transferable``, ``sample``, ``smc``,
``tune-temperature``, ``evaluate``) and :mod:`arbg.cli._experiments` (``demo``, ``ablate``,
``benchmark``, ``zero-shot``); this module builds the parser and maps errors to exit codes.
Printing happens only in this package.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator

from arbg import checks
from arbg.chem.md import SimulationError
from arbg.cli._data import add_data_commands
from arbg.cli._experiments import add_experiment_commands
from arbg.cli._model import add_model_commands
from arbg.cli.configargs import config_from_args
from arbg.cli.flags import add_wait_args, apply_arg_checks
from arbg.cluster import ClusterConfig, Engine, open_engine, use_engine
from arbg.runtime import Interrupted, fit_threads, tune_malloc
from arbg.sampling.smc import ParticlesExtinct

__all__ = ["build_parser", "main"]

log = logging.getLogger("arbg")


@contextlib.contextmanager
def cluster_engine(args: argparse.Namespace) -> Iterator[Engine]:
    """The Dask engine of ``--workers`` / ``--scheduler`` (:class:`ClusterConfig`), active for
    the block (energies find it through :func:`arbg.cluster.active_engine`), then closed."""
    engine = open_engine(config_from_args(ClusterConfig, args))
    try:
        if engine.distributed:
            print(f"Dask: {engine.description}, {engine.n_workers} worker thread(s)")
            if engine.dashboard_link:
                print(f"Dask dashboard: {engine.dashboard_link}")
        with use_engine(engine):
            yield engine
    finally:
        engine.close()


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, with range-checked numeric flags and ``--wait``."""
    p = argparse.ArgumentParser(prog="arbg", description="Autoregressive Boltzmann Generators")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    add_data_commands(sub)
    add_model_commands(sub)
    add_experiment_commands(sub)
    add_wait_args(sub)
    for cmd in sub.choices.values():  # -v after the subcommand too (SUPPRESS: keeps a leading -v)
        cmd.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="tracebacks"
        )
    apply_arg_checks(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``arbg`` command; returns its exit status (2: bad input, 1: failure or bug)."""
    tune_malloc()  # megabyte tensors at every token: keep them on the heap (arbg.runtime)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    fit_threads()  # no more intra-op threads than free cores (arbg.runtime)
    try:
        if getattr(args, "device", None) is not None:  # e.g. cuda on a CPU-only torch: one line
            checks.device("--device", args.device)
        if not hasattr(args, "scheduler"):
            return int(args.func(args) or 0)
        with cluster_engine(args) as engine:  # --workers / --scheduler: Dask for the command
            args.engine = engine
            return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError) as e:  # bad input, file or file-system problem
        if args.verbose:
            log.exception("details")
        print(f"arbg {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (SimulationError, ParticlesExtinct) as e:  # an outcome, not a bug: one line
        print(f"arbg {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Interrupted as e:  # a stop signal, after the work was saved
        print(f"arbg {args.command}: interrupted: {_one_line(e)}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"arbg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, the traceback with -v
        if args.verbose:
            raise
        print(
            f"arbg {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
            "(run with -v for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (OSError: strerror and file name)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.strerror}: {e.filename!r}"
    elif isinstance(e, KeyError):
        text = f"missing key {e}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())
