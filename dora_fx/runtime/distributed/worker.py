"""Distributed runtime, worker: the entry of one rank process (``python -m
dora_fx.runtime.distributed.launch --worker CONFIG``, or torchrun's).

``die_with_parent`` ties a local worker to its launcher (Linux), so none is left behind;
``run_worker`` runs one rank and exits the process, writing ``failure_RANK.json`` for the
supervisor when it fails (naming the peer it blames, if any).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import RunConfig
from .rank import run_rank

__all__ = ["die_with_parent", "run_worker", "worker_main"]


# -- worker side -------------------------------------------------------------------------------


def die_with_parent() -> None:
    """Local workers end when the launcher does (Linux), so none is left behind."""
    parent = os.environ.get("DORA_PARENT_PID")
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):
        os._exit(1)


def worker_main(config: RunConfig) -> int:
    return run_worker(lambda rank, world: run_rank(config, rank, world), config.result_path)


def run_worker(run: Callable[[int, int], Any], result_path: str | None) -> int:
    """Run one rank (``run(rank, world_size)`` from the environment) and exit the process: on
    an exception, write ``failure_RANK.json`` next to ``result_path`` for the launcher."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        run(rank, world)
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then exit
        traceback.print_exc()
        report = {
            "rank": rank,
            "message": str(exc),
            "type": type(exc).__name__,
            "suspect_rank": getattr(exc, "suspect_rank", None),
        }
        if result_path:  # whole or not at all: the launcher may stop this rank mid-write
            final = Path(Path(result_path).parent, f"failure_{rank}.json")
            partial = final.with_suffix(".json.tmp")
            partial.write_text(json.dumps(report))
            os.replace(partial, final)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip process-group teardown: peers may already be gone
