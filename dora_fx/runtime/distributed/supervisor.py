"""Distributed runtime, supervisor: starting, watching and stopping the rank processes of a
run on this machine.

``spawn_ranks`` starts one process per rank on 127.0.0.1 (each in its own session, so the
whole group can be killed), waits for all and, when one fails, stops the rest and raises
``DeviceLost`` naming the culprit (following each rank's report of the peer it blames);
``kill_all`` stops a group. ``launch`` prepares runs and reads their results on top of this.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...errors import DeviceLost, RankFailedError

__all__ = ["spawn_ranks", "kill_all"]

_GRACE_S = 2.0  # (plus half the timeout) for other ranks to report after one fails


def spawn_ranks(
    worker_module: str,
    config: dict[str, Any],
    table: Sequence[Any],
    run_dir: str,
    port: int,
    progress: Callable[[int, int], None] | None = None,
    *,
    timeout_s: float,
    threads: int = 1,
    progress_path: str | None = None,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> None:
    """Start ``python -m worker_module --worker CONFIG`` once per rank of ``table`` (each entry
    has ``rank`` and ``describe()``) on 127.0.0.1 and wait for all; on a failure, stop every
    rank and raise ``DeviceLost`` naming the culprit (its rank, stage and device) (see ``run_local``). ``procs``: a
    list the started processes are added to (so another thread can stop them)."""
    config_path = os.path.join(run_dir, "config.json")
    Path(config_path).write_text(json.dumps(config))
    procs = [] if procs is None else procs
    try:
        for info in table:
            env = {
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "GLOO_SOCKET_IFNAME": "lo",
                "RANK": str(info.rank),
                "LOCAL_RANK": str(info.rank),
                "WORLD_SIZE": str(len(table)),
                "OMP_NUM_THREADS": str(threads),
                "DORA_PARENT_PID": str(os.getpid()),
            }
            cmd = [sys.executable, "-m", worker_module, "--worker", config_path]
            with open(os.path.join(run_dir, f"rank_{info.rank}.log"), "wb") as log:
                procs.append(
                    subprocess.Popen(
                        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        _wait(procs, list(table), run_dir, timeout_s, progress_path, progress)
    finally:
        kill_all(procs)


def _wait(
    procs: list[subprocess.Popen[bytes]],
    table: list[Any],
    run_dir: str,
    timeout_s: float,
    progress_path: str | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    first_failure: tuple[int, int, float] | None = None  # rank, return code, when
    shown: list[str] = []
    while True:
        codes = [p.poll() for p in procs]
        if first_failure is None:
            for rank, code in enumerate(codes):
                if code not in (None, 0):
                    first_failure = (rank, code, time.monotonic())
                    break
        if all(c is not None for c in codes):
            break
        # ranks waiting on the failed one time out at about the same time: give them half,
        # unless the first to fail is the culprit for sure (killed, or failed on its own)
        grace_s = 0.5 * timeout_s + _GRACE_S
        if first_failure is not None and (
            _culprit_known(first_failure[0], first_failure[1], run_dir)
            or time.monotonic() - first_failure[2] > grace_s
        ):
            break
        if progress is not None and progress_path and os.path.exists(progress_path):
            text = Path(progress_path).read_text().split()
            if len(text) == 2 and text != shown:
                shown = text
                progress(int(text[0]), int(text[1]))
        time.sleep(0.05)
    if first_failure is not None:
        codes = [p.poll() for p in procs]  # before kill_all: who a signal had killed already
        kill_all(procs)
        raise _failure(first_failure[0], codes, table, run_dir)


def _culprit_known(rank: int, code: int, run_dir: str) -> bool:
    """The failed ``rank`` is the culprit without waiting for its peers' reports: a signal
    killed it, or its own report blames no peer."""
    if code < 0:
        return True
    path = Path(run_dir, f"failure_{rank}.json")
    if not path.exists():
        return False
    with contextlib.suppress(ValueError):
        return json.loads(path.read_text()).get("suspect_rank") is None
    return False


def _failure(
    rank: int, codes: list[int | None], table: list[Any], run_dir: str
) -> RankFailedError:
    """The error of a run whose rank ``rank`` failed first (``codes``: every rank's exit
    code then, ``None`` while it ran)."""
    reports = {}
    for info in table:
        path = Path(run_dir, f"failure_{info.rank}.json")
        if path.exists():
            with contextlib.suppress(ValueError):  # a report cut short counts as none
                reports[info.rank] = json.loads(path.read_text())
    # A rank that failed because a peer died or hung names that peer (``suspect_rank``);
    # follow those names to the rank that failed on its own, died, or hung.
    culprit, seen = rank, {rank}
    while culprit in reports and reports[culprit].get("suspect_rank") not in (None, *seen):
        culprit = reports[culprit]["suspect_rank"]
        seen.add(culprit)
    who, code = table[culprit].describe(), codes[culprit]
    if culprit in reports:
        message = f"{who} failed: {reports[culprit]['message']}"
    elif code is not None and code < 0:  # a peer that noticed may have exited first
        message = f"{who} died (killed by {signal.Signals(-code).name})"
    elif culprit == rank:
        message = f"{who} failed (exit code {code}): {_log_tail(run_dir, rank)}"
    else:
        witness = reports[rank]["message"] if rank in reports else ""
        message = f"{who} died or hung; {witness}"
    text = (
        f"distributed run stopped: {message}. All ranks were stopped; run again with a larger "
        "timeout_s if that stage is legitimately slow"
    )
    blamed = table[culprit]
    if hasattr(blamed, "stage") and hasattr(blamed, "device"):
        return DeviceLost(text, rank=blamed.rank, stage=blamed.stage, device=blamed.device)
    return RankFailedError(text)


def _log_tail(run_dir: str, rank: int, lines: int = 5) -> str:
    path = Path(run_dir, f"rank_{rank}.log")
    if not path.exists():
        return "(no log)"
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop every process of ``procs`` (its process group): TERM, then KILL after 2 s."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- worker side -------------------------------------------------------------------------------


