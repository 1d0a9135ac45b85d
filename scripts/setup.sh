#!/usr/bin/env bash
# Create .venv (if missing) and install mt with its test tools, reusing an installed torch.
# Without one: a Linux machine with no NVIDIA GPU gets torch 2.13.0's CPU build (PyPI's Linux wheel is
# the CUDA build, gigabytes of nvidia-* packages), from a local wheel directory or PyTorch's CPU index;
# other machines get torch==2.13.0 from PyPI. TORCH_SPEC chooses another, e.g. TORCH_SPEC="torch==2.13.0".
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    pip install --quiet "$TORCH_SPEC"
  elif [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    pip install --quiet "torch==2.13.0+cpu" 2>/dev/null ||
      pip install --quiet --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
        "torch==2.13.0+cpu"
  else
    pip install --quiet "torch==2.13.0"
  fi
fi
pip install --quiet -e '.[test]'
