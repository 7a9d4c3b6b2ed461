"""The repository stays ruff-clean (lint and format, from its root: code, and the Python blocks of
the Markdown files), as CI checks on every run; ruff is pinned in pyproject.toml. Files are cut by
meaning, not by a line count (issue 26): there is no length cap."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(exe).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    return [exe]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args):
    res = subprocess.run(_ruff() + args, cwd=ROOT, capture_output=True, text=True)  # whole repo
    assert res.returncode == 0, res.stdout + res.stderr
