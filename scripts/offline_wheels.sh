#!/usr/bin/env bash
# Wheels of what mt needs beyond an image that already holds torch, Lightning, transformers, sacreBLEU and
# SentencePiece, for a GPU machine that reaches no package registry (the device machines of this workplace, an
# air-gapped cluster node): hydra-core, omegaconf, antlr4 (built here: PyPI has only its source), datasets and the
# versions of pyarrow, fsspec, dill and multiprocess it accepts. Each is pinned to the version in this machine's
# .venv, the one the tests passed with. Then, there: WHEELS=DIR bash scripts/gpu_check.sh (or pip install
# --no-index --no-deps --target SITE DIR/*.whl and PYTHONPATH=SITE:$PWD).
#   bash scripts/offline_wheels.sh [DIR (.whl)] [PYTHON_VERSION of the target (3.12)]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PYVER=${2:-3.12}
PY=${PYTHON:-.venv/bin/python}
pins() { $PY -c "import sys; from importlib.metadata import version; print(*(f'{n}=={version(n)}' for n in sys.argv[1:]))" "$@"; }
mkdir -p "$DIR"
rm -f "$DIR"/*.whl
# shellcheck disable=SC2046
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DIR" \
  $(pins hydra-core omegaconf datasets pyarrow fsspec dill multiprocess)
$PY -m pip wheel --quiet --no-deps -w "$DIR" "$(pins antlr4-python3-runtime)"
ls -l "$DIR"/*.whl | awk '{s += $5; print $5, $9} END {printf "%.1f MiB in all\n", s / 1048576}'
