#!/usr/bin/env bash
# Set everything up, then run the lint, type check and test suite. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check dora_fx tests benchmarks
mypy
python -m pytest -p no:cacheprovider "$@"
