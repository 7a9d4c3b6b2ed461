#!/usr/bin/env bash
# The test command: sets up ./.venv if needed, then runs the default (fast) test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
python -m pytest "$@"
