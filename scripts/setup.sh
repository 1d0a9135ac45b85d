#!/usr/bin/env bash
# Create .venv (if missing) and install mt with its test tools, reusing an installed torch.
# A CPU machine gets torch==2.13.0 (CPU build); set TORCH_SPEC to choose another, e.g. a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
pip install --quiet -e '.[test]'
