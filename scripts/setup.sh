#!/usr/bin/env bash
# Create .venv with novomap and its test dependencies (idempotent).
# PyTorch: pinned to the CPU build available on this project's machines; on your own machine,
# install the PyTorch build for your hardware first (CPU or CUDA) and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[test]"
# compile the CPU kernels now (~15 s once; a few seconds when already cached) rather than in the first job
python -m novomap.warmup || echo "note: the kernels were not compiled ahead; the first job will compile them"
python -c "import torch, novomap; print(f'novomap {novomap.__version__} with torch {torch.__version__} ready in .venv')"
