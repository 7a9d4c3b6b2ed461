"""Table-driven bad inputs: every one gets exit code 2 and one line naming the argument or file,
never a traceback and never a silent acceptance (issue 15).

The CLI runs in-process (``arbg.cli.main`` with SystemExit caught). Part 1 is generated from the
parser: every numeric option of every subcommand with values outside its range, non-finite or
not a number. Part 2 are inputs only the library can judge: files that are not what they claim,
tampered checkpoints, data in Angstrom, unusable output directories, inconsistent run dirs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from arbg.cli import build_parser, main

ASSETS = Path(__file__).resolve().parents[1] / "src" / "arbg" / "assets" / "aldp"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

# candidate bad values per check kind; only those the option's type refuses become cases
BAD_INT = ["0", "-5", "2.5", "ten", "1e3"]
BAD_FLOAT = ["0", "-1", "nan", "inf", "-inf", "abc", "1e9"]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.err


def _subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                has_sub = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if has_sub:
                    yield from _subparsers(sub, (*path, name))
                else:
                    yield (*path, name), sub


def _base_argv(path: tuple[str, ...], sub: argparse.ArgumentParser) -> list[str]:
    argv = list(path)
    for a in sub._actions:
        if not a.option_strings and a.nargs is None:
            argv.append("X")  # a required positional
        elif a.option_strings and a.required:
            argv += [a.option_strings[0], "256" if a.type not in (None, str) else "X"]
    return argv


def numeric_cases() -> list[tuple[str, list[str], str]]:
    cases = []
    for path, sub in _subparsers(build_parser()):
        base = _base_argv(path, sub)
        for a in sub._actions:
            if not a.option_strings or a.type in (None, str) or not callable(a.type):
                continue
            if a.dest in ("help",):
                continue
            try:
                int_kind = isinstance(a.type("3"), int)
            except (argparse.ArgumentTypeError, ValueError):
                int_kind = False
            for bad in BAD_INT if int_kind else BAD_FLOAT:
                try:
                    a.type(bad)
                    continue  # acceptable for this option
                except (argparse.ArgumentTypeError, ValueError):
                    pass
                opt = next(o for o in a.option_strings if o.startswith("--"))
                if isinstance(a.nargs, int) and bad.startswith("-") and bad[1:2].isalpha():
                    continue  # "-inf" among several values reads as an option
                if isinstance(a.nargs, int):
                    argv = [*base, opt, *([bad] * a.nargs)]
                else:  # --opt=value: argparse would read "-inf" as an option
                    argv = [*base, f"{opt}={bad}"]
                cases.append((f"{' '.join(path)} {opt} {bad}", argv, opt))
    return cases


NUMERIC = numeric_cases()


def test_numeric_table_is_large_and_has_the_issue_examples():
    ids = {c[0] for c in NUMERIC}
    for example in (
        "sample --tau 0",
        "sample --n -5",
        "train --batch-size 0",
        "md --step-fs 0",
        "md --frame-interval-ps 0",
        "md --ns 0",
        "evaluate --n-eval 0",
        "train --n-bins 0",
        "md --cutoff-nm -1",
        "sample --ensemble-size -5",
        "md --step-fs 1e9",
    ):
        assert example in ids, example
    assert len(NUMERIC) + len(LIBRARY_CASES) >= 100


@pytest.mark.parametrize("case", NUMERIC, ids=[c[0] for c in NUMERIC])
def test_bad_numeric_option(case, capsys):
    _, argv, opt = case
    rc, err = run_cli(argv, capsys)
    assert rc == 2, err
    assert f"argument {opt}" in err and "; expected" in err
    assert "Traceback" not in err


def test_issue_examples_with_exact_values(capsys):
    for argv, opt in (
        (["sample", "X", "--out", "X", "--tau", "0"], "--tau"),
        (["sample", "X", "--out", "X", "--n", "-5"], "--n"),
        (["sample", "X", "--out", "X", "--clip", "0.7"], "--clip"),
        (["smc", "X", "--out", "X", "--ensemble-size", "-3"], "--ensemble-size"),
        (["md", "--step-fs", "50"], "--step-fs"),
        (["bound", "X", "--bins", "0"], "--bins"),
        (["tune-temperature", "X", "--data", "X", "--n-eval", "0"], "--n-eval"),
    ):
        rc, err = run_cli(argv, capsys)
        assert rc == 2 and opt in err and "Traceback" not in err, (argv, err)


# --------------------------------------------------------------------------------------------------
# library-level bad inputs (files, checkpoints, data, directories)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny MD dataset, a copy of the shipped checkpoint, a sampling run, bad files."""
    from arbg.chem.md import MDConfig, run_md
    from arbg.chem.systems import build_system

    root = tmp_path_factory.mktemp("world")
    system = build_system("aldp")
    run_md(system, root / "md", MDConfig(ns=0.03, warmup_ps=0.5, chunk_frames=10), progress=False)
    shutil.copytree(ASSETS / "checkpoint", root / "ckpt")
    (root / "fake.png").write_bytes(PNG)
    (root / "fake.pdb").write_bytes(PNG)
    (root / "fake.xml").write_bytes(PNG)
    (root / "fake.npy").write_bytes(PNG)
    (root / "fake.npz").write_bytes(PNG)
    (root / "afile").write_text("not a directory\n")
    x = np.load(root / "md" / "chunks" / "chunk_000000.npy")
    np.save(root / "angstrom.npy", x * 10.0)
    np.save(root / "nm.npy", x)
    np.save(root / "wrong_shape.npy", x[:, :5])
    system.save_pdb(root / "aldp.pdb")
    return root


def _tamper_config(ck: Path, edit, resign: bool = False) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    edit(cfg)
    (ck / "config.json").write_text(json.dumps(cfg))
    if resign:
        from arbg.train.checkpoints import write_checksums

        write_checksums(ck)


def _ck_std(c):
    c["standardization"]["std_nm"] *= 2


def _ck_bins(c):
    c["binning"]["high"] = 9.0


def _ck_temp(c):
    c["system"]["temperature_k"] = 350.0


def _ck_ff(c):
    c["system"]["forcefield_sha256"]["amber99sbildn.xml"] = "0" * 64


def _nan_weights(ck: Path) -> None:
    from safetensors.torch import load_file, save_file

    from arbg.train.checkpoints import write_checksums

    state = load_file(str(ck / "model.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(float("nan"))
    save_file(state, str(ck / "model.safetensors"))
    write_checksums(ck)


def _flip_bytes(ck: Path) -> None:
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (ck / "model.safetensors").write_bytes(bytes(data))


def _truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# (id, setup(world, case_dir) -> argv, text the one-line error must contain)
LIBRARY_CASES = [
    ("sample: checkpoint missing", lambda w, d: ["sample", d / "nope", "--out", d / "o"], "nope"),
    ("sample: checkpoint is a PNG", lambda w, d: ["sample", w / "fake.png", "--out", d], "fake"),
    ("sample: std edited", "tamper:std", "config.json was modified"),
    ("sample: binning edited", "tamper:bins", "config.json was modified"),
    ("sample: temperature edited", "tamper:temp", "config.json was modified"),
    ("sample: weights corrupted", "tamper:flip", "model.safetensors was modified"),
    ("sample: NaN weights re-signed", "tamper:nan", "non-finite"),
    ("sample: force-field hash", "tamper:ff", "force-field file"),
    ("sample: config truncated", "tamper:truncate", "config.json"),
    ("sample: checksums missing file", "tamper:rmweights", "model.safetensors is missing"),
    ("sample: no checksums", "tamper:nosums", "has no checksums.json"),
    ("sample: out is a file", lambda w, d: ["sample", w / "ckpt", "--out", w / "afile"], "afile"),
    (
        "sample: out under a file",
        lambda w, d: ["sample", w / "ckpt", "--out", w / "afile" / "run"],
        "afile",
    ),
    (
        "md: out not creatable",
        lambda w, d: ["md", "--ns", "0.001", "--out", "/proc/arbg/x"],
        "/proc",
    ),
    ("md: out is a file", lambda w, d: ["md", "--ns", "0.001", "--out", w / "afile"], "afile"),
    ("md: PDB is a PNG", lambda w, d: ["md", "--pdb", w / "fake.pdb", "--out", d], "fake.pdb"),
    (
        "md: force field is a PNG",
        lambda w, d: ["md", "--forcefield", w / "fake.xml", "--out", d],
        "fake.xml",
    ),
    ("md: forcefield missing", lambda w, d: ["md", "--forcefield", "nope.xml"], "nope.xml"),
    ("md: truncated progress", "md:progress", "progress.json"),
    ("md: truncated metadata", "md:metadata", "metadata.json"),
    ("md: other seed in same out", "md:seed", "seed"),
    ("train: Angstrom data", "train:angstrom", "Angstrom"),
    ("train: npy is a PNG", lambda w, d: _train(w, d, w / "fake.npy"), "fake.npy"),
    ("train: npz is a PNG", lambda w, d: _train(w, d, w / "fake.npz"), "fake.npz"),
    ("train: topology is a PNG", lambda w, d: _train(w, d, w / "nm.npy", "fake.pdb"), "fake.pdb"),
    ("train: wrong atom count", lambda w, d: _train(w, d, w / "wrong_shape.npy"), "wrong_shape"),
    ("train: data missing", lambda w, d: _train(w, d, d / "nothing.npy"), "nothing.npy"),
    ("train: truncated chunk", "train:chunk", "chunk_000001.npy"),
    ("train: out is a file", lambda w, d: ["train", w / "md", "--out", w / "afile"], "afile"),
    ("evaluate: run dir missing", lambda w, d: ["evaluate", d / "r", "--reference", w], "r"),
    ("evaluate: truncated summary", "evaluate:summary", "summary.json"),
    ("evaluate: samples/summary disagree", "evaluate:count", "inconsistent"),
    (
        "bound: data is a PNG",
        lambda w, d: ["bound", w / "fake.npy", "--topology", w / "aldp.pdb"],
        "fake",
    ),
    (
        "sample: sequence on single",
        lambda w, d: ["sample", w / "ckpt", "--out", d, "--sequence", "AA"],
        "sequence",
    ),
    ("system: bad sequence", lambda w, d: ["system", "--sequence", "AXZ"], "X"),
    ("system: unknown preset", lambda w, d: ["system", "nope"], "nope"),
    ("corpus: no sequences", lambda w, d: ["corpus", "--out", d], "--sequences"),
    ("md: bias flags without bias", lambda w, d: ["md", "--bias-psi", "--out", d], "--bias"),
]


def _train(w: Path, d: Path, data: Path, topology: str = "aldp.pdb") -> list:
    return ["train", data, "--topology", w / topology, "--out", d / "t", "--steps", "1"]


def _setup(kind: str, w: Path, d: Path) -> list:
    if kind.startswith("tamper:"):
        ck = d / "ck"
        shutil.copytree(w / "ckpt", ck)
        what = kind.split(":")[1]
        if what in ("std", "bins", "temp"):
            _tamper_config(ck, {"std": _ck_std, "bins": _ck_bins, "temp": _ck_temp}[what])
        elif what == "ff":
            _tamper_config(ck, _ck_ff, resign=True)
        elif what == "nan":
            _nan_weights(ck)
        elif what == "flip":
            _flip_bytes(ck)
        elif what == "truncate":
            from arbg.train.checkpoints import write_checksums

            _truncate(ck / "config.json")
            write_checksums(ck)
        elif what == "nosums":
            (ck / "checksums.json").unlink()
        elif what == "rmweights":
            (ck / "model.safetensors").unlink()
        return ["sample", ck, "--out", d / "run", "--n", "4"]
    if kind.startswith("md:"):
        md = d / "md"
        shutil.copytree(w / "md", md)
        what = kind.split(":")[1]
        if what == "seed":
            return ["md", "--ns", "0.03", "--warmup-ps", "0.5", "--seed", "7", "--out", md]
        _truncate(md / f"{'progress' if what == 'progress' else 'metadata'}.json", 5)
        return ["md", "--ns", "0.04", "--warmup-ps", "0.5", "--chunk-frames", "10", "--out", md]
    if kind == "train:angstrom":
        return _train(w, d, w / "angstrom.npy")
    if kind == "train:chunk":
        md = d / "md"
        shutil.copytree(w / "md", md)
        _truncate(md / "chunks" / "chunk_000001.npy", 60)
        return ["train", md, "--out", d / "t", "--steps", "1"]
    if kind.startswith("evaluate:"):
        run = d / "run"
        run.mkdir()
        np.savez(run / "samples.npz", log_q=np.zeros(3), u=np.zeros(3))
        if kind.endswith("summary"):
            (run / "summary.json").write_text('{"n_samples": 3, "tau"')
        else:
            (run / "summary.json").write_text(json.dumps({"n_samples": 5}))
        return ["evaluate", run, "--reference", w / "md"]
    raise AssertionError(kind)


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_bad_file_or_state(case, world, tmp_path, capsys):
    _, setup, needle = case
    argv = setup(world, tmp_path) if callable(setup) else _setup(setup, world, tmp_path)
    rc, err = run_cli(argv, capsys)
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(("arbg", "usage"))]
    assert lines and needle in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("arbg")]) == 1, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, err = run_cli(["md", "--ns", "0.001", "--out", locked / "run"], capsys)
    finally:
        locked.chmod(0o700)
    assert rc == 2 and "ro" in err and "Traceback" not in err


def test_md_blow_up_keeps_last_good_state(tmp_path, capsys):
    out = tmp_path / "md"
    rc, err = run_cli(
        ["md", "--ns", "0.01", "--step-fs", "5", "--warmup-ps", "0", "--out", out], capsys
    )
    assert rc == 1 and "blew up" in err and "--step-fs" in err and "Traceback" not in err
    assert not list((out / "chunks").glob("chunk_*.npy"))  # no NaN frames on disk
    assert not (out / "progress.json").exists()


def test_units_check_catches_angstrom_and_accepts_nm(aldp):
    from arbg.checks import ArgumentError, coordinates_in_nm
    from arbg.data.datasets import _bonds

    x = aldp.positions[None]
    assert coordinates_in_nm("x", x, _bonds(aldp)) is not None
    for scale in (10.0, 1000.0, 0.1):
        with pytest.raises(ArgumentError, match="not a bond length in nm"):
            coordinates_in_nm("x", x * scale, _bonds(aldp))
    with pytest.raises(ArgumentError, match="NaN"):
        coordinates_in_nm("x", np.full_like(x, np.nan), _bonds(aldp))
