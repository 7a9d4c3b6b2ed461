#!/usr/bin/env bash
# The main job: sets up ./.venv if needed, then runs the end-to-end demo on the default system.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
arbg demo "$@"
