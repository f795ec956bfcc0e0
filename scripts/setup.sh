#!/usr/bin/env bash
# Create .venv and install dora_fx with its test and model extras.
# torch is installed first, on its own, from DORA_TORCH_SPEC (default: the CPU build this
# workplace keeps on local disk); a plain `pip install torch` would fetch a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${DORA_TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" >/dev/null 2>&1; then
  echo "installing $TORCH_SPEC ..."
  python -m pip install --quiet "$TORCH_SPEC"
fi
python -m pip install --quiet -e ".[dev]"
# The versions a failure depends on (a clean install takes the newest the ranges allow).
python - <<'PY'
from importlib.metadata import version
names = ("torch", "numpy", "sympy", "cvxpy", "highspy", "transformers")
print("dora_fx installed in .venv:", ", ".join(f"{n} {version(n)}" for n in names))
PY
