"""The README holds, command by command.

Every command of a fenced ```bash block in README.md is either run here (from a temporary
directory laid out like the repository root: ``src`` and ``scripts`` linked in, ``arbg`` on the
PATH) or listed in ``NOT_RUN`` with the reason; every ``arbg`` command, run or not, must parse.
The first Python snippet runs as written.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from arbg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# run in the default suite, in this order, in one directory (~25 s on an idle core)
RUN_FAST = [
    "arbg system aldp",
    "arbg sample src/arbg/assets/aldp/checkpoint --n 500 --out runs/aldp-shipped",
    "arbg evaluate runs/aldp-shipped --reference src/arbg/assets/aldp/reference.npz --n-eval 500",
    "arbg system --sequence GYDPETGTWG --out chig.pdb",
]
# run by the slow suite (~25 s together)
RUN_SLOW = [
    "arbg sample src/arbg/assets/transferable/checkpoint --sequence YK --n 500 --out runs/yk",
    "arbg zero-shot src/arbg/assets/transferable/checkpoint --corpus "
    "src/arbg/assets/transferable/heldout --sequences YK --n 500 --n-eval 200 --out runs/zero-shot",
]
_MD = "MD of many ns (minutes to hours)"
_NEEDS = "needs the output of a long command above"
NOT_RUN = {
    "bash scripts/demo.sh --quick": "creates ./.venv (the quick demo itself: test_demo.py and "
    "the measured times in the README)",
    "bash scripts/test.sh": "creates ./.venv and runs this suite",
    "arbg corpus --out data/dipeptides --scheduler tcp://scheduler-host:8786": "needs a running "
    "Dask cluster (tests/test_cluster.py runs one on the loopback)",
    "arbg md aldp --ns 20 --seed 1 --out data/aldp": _MD,
    "arbg md aldp --ns 25 --seed 2 --out data/aldp-ref": _MD,
    "arbg bound data/aldp --bins 1024 4096 8192": _NEEDS,
    "arbg train data/aldp --out runs/aldp-tiny --preset tiny": "training (10 minutes)",
    "arbg tune-temperature runs/aldp-tiny/best --data data/aldp": _NEEDS,
    "arbg sample runs/aldp-tiny/best --n 10000 --tau 1.0 --out runs/aldp-samples": _NEEDS,
    "arbg sample runs/aldp-tiny/best --n 10000 --seed 1 --out runs/aldp-samples": _NEEDS,
    "arbg evaluate runs/aldp-samples --reference data/aldp-ref": _NEEDS,
    "arbg mixture runs/aldp-tiny/best runs/aldp-tiny-seed2/best --out runs/aldp-mix": _NEEDS
    + " (tests/test_mixture.py runs `arbg mixture` and `arbg sample` on the shipped model)",
    "arbg sample runs/aldp-mix --n 10000 --out runs/aldp-mix-samples": _NEEDS,
    "arbg demo --out runs/demo --train-minutes 30": "the full demo (30 min to hours)",
    "arbg md ace-aaa-nme --ns 20 --out data/ace-aaa-nme": _MD,
    "arbg train data/ace-aaa-nme --out runs/ace-aaa-nme-tiny --preset tiny": "training",
    "arbg smc runs/ace-aaa-nme-tiny/best --particles 2000 --out runs/ace-aaa-nme-smc": _NEEDS,
    "arbg ablate bins data/aldp --bins 1024 4096 8192 --reference data/aldp-ref "
    "--out runs/ablate-bins": "trains one model per bin count",
    "arbg ablate temperature runs/aldp-tiny/best --reference data/aldp-ref "
    "--out runs/ablate-tau": _NEEDS,
    "arbg benchmark data/aldp --reference data/aldp-ref --out runs/benchmark": "trains 4 models",
    "arbg zero-shot runs/transfer/best --corpus data/dipeptides --out runs/zero-shot": _NEEDS,
    "arbg corpus --length 2 --ns 1 --test-ns 5 --workers 2 --out data/dipeptides": _MD,
    "arbg corpus --length 4 --sample 500 --seed 1 --ns 1 --out data/tetra": _MD,
    "arbg corpus --sequences AA,AG,GYD --ns 0.5 --split 0.8 0.1 0.1 --out data/mine": _MD,
    "arbg corpus --out data/dipeptides": _NEEDS,
    "arbg train-transferable data/dipeptides --out runs/transfer --preset tiny": "training",
    "arbg sample runs/transfer/best --sequence GW --n 10000 --out runs/gw": _NEEDS,
    "arbg corpus --length 3 --sample 200 --seed 1 --ns 1 --workers 2 --out data/tri": _MD,
    "arbg train-transferable data/tri --out runs/transfer-tri --preset tiny": "training",
    "arbg smc runs/transfer-tri/best --sequence AGA --particles 1000 --out runs/aga-smc": _NEEDS,
    "arbg md aldp --bias dihedrals --bias-build-ns 1 --ns 20 --out data/aldp-biased": _MD,
    "arbg md aldp --bias dihedrals --bias-psi --ns 20 --out data/aldp-biased2": _MD,
    "arbg md aldp --sampling-temperature-k 400 --ns 20 --out data/aldp-400K": _MD,
}
# Python snippets by their first line: run, or why not
PYTHON_RUN = "from arbg.chem.systems import build_system"
PYTHON_NOT_RUN = {
    "from arbg.data.loaders import load_corpus, load_many_peptides, load_many_peptides_eval": (
        "needs a corpus made by `arbg corpus` and the published ManyPeptidesMD files"
    ),
}


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def readme_commands() -> list[str]:
    """Commands of the ```bash blocks, comments stripped, whitespace normalised."""
    out = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            cmd = " ".join(re.sub(r"\s+#.*$", "", line).split())
            if cmd:
                out.append(cmd)
    return out


def test_every_readme_command_is_run_or_explained():
    cmds = readme_commands()
    listed = set(RUN_FAST) | set(RUN_SLOW) | set(NOT_RUN)
    assert [c for c in cmds if c not in listed] == []  # a new command needs a decision here
    assert sorted(listed - set(cmds)) == []  # and no stale entry stays
    firsts = {b.splitlines()[0] for b in readme_blocks("python")}
    assert firsts == {PYTHON_RUN, *PYTHON_NOT_RUN}


def test_every_readme_arbg_command_parses():
    parser = build_parser()
    for cmd in readme_commands():
        if cmd.startswith("arbg "):
            parser.parse_args(shlex.split(cmd)[1:])  # SystemExit on a wrong flag


def _workdir(tmp_path: Path) -> dict[str, str]:
    """tmp_path laid out like the repository root, and the environment with `arbg` on PATH."""
    for name in ("src", "scripts", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "arbg"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m arbg.cli "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["ARBG_CACHE"] = str(tmp_path / "cache")
    return env


def _run(cmd: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    res = subprocess.run(
        ["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"`{cmd}` failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def test_readme_fast_commands_run(tmp_path):
    env = _workdir(tmp_path)
    logs = {cmd: _run(cmd, tmp_path, env) for cmd in RUN_FAST}
    assert (tmp_path / "runs/aldp-shipped/samples.npz").exists()
    assert (tmp_path / "runs/aldp-shipped/report/metrics.json").exists()
    assert (tmp_path / "chig.pdb").stat().st_size > 1000
    evaluate = logs[RUN_FAST[2]]
    assert "exact W2 problems of 500 samples; roughly" in evaluate  # says how long it takes
    assert "E-W2" in evaluate


def test_readme_python_snippet_runs(tmp_path):
    env = _workdir(tmp_path)
    code = next(b for b in readme_blocks("python") if b.startswith(PYTHON_RUN))
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("40000 ")


@pytest.mark.slow
def test_readme_transferable_commands_run(tmp_path):
    env = _workdir(tmp_path)
    for cmd in RUN_SLOW:
        _run(cmd, tmp_path, env)
    assert (tmp_path / "runs/yk/samples.npz").exists()
    assert "YK" in (tmp_path / "runs/zero-shot/table.md").read_text()
