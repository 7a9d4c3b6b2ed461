#!/usr/bin/env bash
# Create ./.venv (or $ARBG_VENV) if missing and install arbg into it (CPU torch where no torch is
# present: scripts/install_torch.sh).
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
    # torch before arbg, so that pip does not pull a CUDA build to satisfy arbg's torch>=2.2;
    # an existing torch (e.g. your own GPU build) is kept. See scripts/install_torch.sh.
    if ! "$py" -c "import torch" >/dev/null 2>&1; then
        bash "$root/scripts/install_torch.sh" "$py"
    fi
    "$py" -m pip install -q -e "$root[test]"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
