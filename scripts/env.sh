#!/usr/bin/env bash
# Create ./.venv if missing and install arbg into it (CPU torch where no torch is present).
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ARBG_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
stamp="$venv/.arbg-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$py" -m pip install -q --upgrade pip
    # No GPU here: install the CPU wheel before arbg so that pip never pulls a CUDA build.
    if ! "$py" -c "import torch" >/dev/null 2>&1; then
        "$py" -m pip install -q "torch==2.13.0"
    fi
    "$py" -m pip install -q -e "$root[test]"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
