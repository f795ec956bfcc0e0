#!/usr/bin/env bash
# Set everything up, then run the lint, the import layering check, the type check and the test
# suite. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check dora_fx tests benchmarks
lint-imports --no-cache
mypy
python -m pytest -p no:cacheprovider "$@"
