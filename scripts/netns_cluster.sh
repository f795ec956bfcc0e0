#!/usr/bin/env bash
# A scenario's network-namespace testbed (needs root): bring it up, tear it down, show it.
#   scripts/netns_cluster.sh up SCENARIO|CLUSTER.json [--prefix P]
#   scripts/netns_cluster.sh down [SCENARIO] [--prefix P]
#   scripts/netns_cluster.sh status [SCENARIO] [--prefix P]
# A thin wrapper over `python -m dora_fx.testbed` (the prefix, default "dora", names a testbed,
# so down and status need no scenario). PYTHON picks the interpreter (default: .venv's python
# if there is one, else python3).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
usage="usage: $0 up|down|status [SCENARIO|CLUSTER.json] [--prefix P]"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
command="${1:?$usage}"
shift
case "$command" in
    up)
        what="${1:?$usage}"
        shift
        if [[ "$what" == *.json ]]; then set -- up --cluster "$what" "$@"; else set -- up --scenario "$what" "$@"; fi
        ;;
    down | status)
        if [[ $# -gt 0 && "$1" != --* ]]; then shift; fi
        set -- "$command" "$@"
        ;;
    *)
        echo "$usage" >&2
        exit 2
        ;;
esac
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m dora_fx.testbed "$@"
