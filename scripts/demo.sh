#!/usr/bin/env bash
# Set everything up, then plan GPT-2 small (random weights) onto the smart-home cluster,
# print the plan, write the stage modules to out/ and check they compute the model's output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
dora-fx plan --model gpt2 --scenario smart_home --latency-ms 1500 --out out "$@"
