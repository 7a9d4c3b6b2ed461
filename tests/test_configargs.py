"""CLI flags made from config dataclasses (arbg.cli.configargs)."""

import argparse
from dataclasses import dataclass, field

import pytest

from arbg.cli.configargs import add_config_args, config_from_args, field_help


@dataclass
class Toy:
    """A toy job.

    Attributes
    ----------
    n_samples : proposals, a number
        that spans two lines.
    tau : sampling temperature.
    names : which sequences.
    sizes : several sizes.
    quiet : less output.
    """

    n_samples: int = field(default=5, metadata={"flag": "--n"})
    tau: float = 1.0
    names: list[str] | None = field(default=None, metadata={"comma": True})
    sizes: tuple[int, ...] = (1, 2)
    quiet: bool = False
    device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda")})


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_args(p, Toy)
    return config_from_args(Toy, p.parse_args(argv))


def test_defaults_come_from_the_dataclass():
    assert _parse([]) == Toy()


def test_flags_types_and_renames():
    t = _parse(["--n", "7", "--tau", "0.5", "--names", "AA, GS", "--sizes", "3", "4", "--quiet"])
    assert t == Toy(n_samples=7, tau=0.5, names=["AA", "GS"], sizes=(3, 4), quiet=True)


def test_choices_and_bad_values_exit_2():
    for argv in (["--device", "tpu"], ["--n", "x"]):
        with pytest.raises(SystemExit) as e:
            _parse(argv)
        assert e.value.code == 2


def test_help_from_docstring():
    h = field_help(Toy)
    assert h["n_samples"] == "proposals, a number that spans two lines."
    assert h["tau"] == "sampling temperature."


def test_smc_cli_can_keep_d_residues():
    """`arbg smc` exposes SMCConfig.chirality as --kill-d-residues / --no-kill-d-residues."""
    from arbg.cli import build_parser
    from arbg.sampling.config import SMCConfig

    parser = build_parser()
    base = ["smc", "ckpt", "--out", "run"]
    assert config_from_args(SMCConfig, parser.parse_args(base)).chirality is True
    keep = parser.parse_args([*base, "--no-kill-d-residues"])
    assert config_from_args(SMCConfig, keep).chirality is False


def test_every_flag_has_its_own_help():
    """No two flags of one command share a help text (a docstring line naming several fields
    gives them all the same help)."""
    from arbg.cli import build_parser

    shared = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        by_help: dict[str, list[str]] = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")
            elif action.help and action.option_strings:
                text = action.help.split(" (default")[0]
                by_help.setdefault(text, []).append(action.option_strings[0])
        shared.extend(f"{name}: {flags}" for flags in by_help.values() if len(flags) > 1)

    walk(build_parser(), "arbg")
    assert not shared, shared


def test_every_command_help_renders():
    """`arbg CMD --help` formats for every command (argparse %-formats help text, so a bare
    ``%`` in a docstring made `arbg train --help` crash)."""
    from arbg.cli import build_parser

    failed = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        try:
            parser.format_help()
        except (ValueError, TypeError, KeyError) as e:
            failed.append(f"{name}: {e}")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")

    walk(build_parser(), "arbg")
    assert not failed, failed
