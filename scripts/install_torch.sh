#!/usr/bin/env bash
# Install PyTorch into the environment of the given python, CPU-only where possible, and say
# what was installed. Called by scripts/env.sh when that environment has no torch.
#
#   bash scripts/install_torch.sh PATH/TO/python
#
# 1. If PyTorch's CPU index (https://download.pytorch.org/whl/cpu, override: ARBG_TORCH_INDEX)
#    answers, torch==$ARBG_TORCH_VERSION (default 2.13.0) comes from it: a CPU-only build of
#    about 200 MB, no CUDA libraries.
# 2. Otherwise torch comes from pip's configured sources (PyPI by default). On Linux x86_64 PyPI's
#    torch wheel is the CUDA build, which pulls several GB of nvidia-* wheels; pip prefers a
#    local CPU wheel where its configuration lists one (find-links). The script prints which
#    build it got.
set -euo pipefail
py="${1:?usage: install_torch.sh PATH/TO/python}"
version="${ARBG_TORCH_VERSION:-2.13.0}"
index="${ARBG_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
if "$py" - "$index" <<'PY' >/dev/null 2>&1
import sys
import urllib.request

urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=15)
PY
then
    echo "arbg set-up: installing torch==$version (CPU-only build) from $index"
    "$py" -m pip install -q --index-url "$index" "torch==$version"
else
    echo "arbg set-up: PyTorch's CPU index ($index) is not reachable; installing torch==$version" \
        "from pip's configured sources (PyPI by default). On Linux x86_64 that is the CUDA build" \
        "(several GB of nvidia-* wheels) unless pip finds a CPU wheel locally (find-links)."
    "$py" -m pip install -q "torch==$version"
fi
"$py" -W ignore - <<'PY'
import torch

cuda = torch.version.cuda
kind = f"CUDA {cuda} build" if cuda else "CPU-only build"
print(f"arbg set-up: installed torch {torch.__version__} ({kind})")
PY
