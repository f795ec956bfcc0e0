"""The dispatcher's executors on the distributed runtime: each runs a plan's batch of requests
and turns a lost device (``DeviceLost``) into a ``PlanFailure`` carrying the answers given
first.

``SessionExecutor`` keeps every plan's ranks running (``runtime.distributed.session.Session``:
one process per device, gloo, emulation) and streams requests to them, so a re-sent request
goes to a plan that is already warm; ``LauncherExecutor`` instead runs each batch as one
``runtime.distributed.launch.run_local`` (processes started per batch).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DeviceLost, DoraError, RankFailedError
from .dispatcher import PlanFailure

__all__ = ["LauncherExecutor", "SessionExecutor"]


class LauncherExecutor:
    """Runs each plan's batch as one distributed run of its saved folder (``run_local``).

    ``faults``: plan -> the launcher's ``fault=`` option for that plan's *first* run (a real
    kill of one rank's process). A ``RankFailedError`` becomes a ``PlanFailure`` naming the
    device of the rank the launcher blames. The launcher returns outputs only for a run that
    completes, so a failed run's requests are all unanswered and all re-sent.
    """

    def __init__(
        self,
        folders: Mapping[str, str | Path],
        faults: Mapping[str, dict[str, Any]] | None = None,
        serialize: bool = False,
        **run_options: Any,
    ) -> None:
        self.folders = {p: Path(f) for p, f in folders.items()}
        self.faults = dict(faults or {})
        self.run_options = run_options
        self.runs: list[dict[str, Any]] = []
        # ``serialize``: one launcher run at a time (on a host with few cores, two runs side
        # by side stretch each other's emulated time).
        self._one_at_a_time = threading.Lock() if serialize else None

    def run(self, plan: str, items: Sequence[tuple[int, Any]]) -> dict[int, Any]:
        from ..runtime.distributed.launch import run_local

        fault = self.faults.pop(plan, None)
        if self._one_at_a_time is None:
            return self._run(plan, items, fault, run_local)
        with self._one_at_a_time:
            return self._run(plan, items, fault, run_local)

    def _run(
        self, plan: str, items: Sequence[tuple[int, Any]], fault: Any, run_local: Any
    ) -> dict[int, Any]:
        started = time.monotonic()
        try:
            result = run_local(
                self.folders[plan], [inputs for _, inputs in items], fault=fault, **self.run_options
            )
        except RankFailedError as exc:
            raise _plan_failure(self.runs, plan, len(items), started, exc) from exc
        self.runs.append({"plan": plan, "items": len(items), "failed": False,
                          "wall_s": time.monotonic() - started,
                          "latency_p50_s": result.latency_p50_s})  # fmt: skip
        if len(result.outputs) != len(items):
            raise DoraError(
                f"plan {plan!r}: the launcher returned {len(result.outputs)} outputs for "
                f"{len(items)} requests"
            )
        return {rid: out for (rid, _), out in zip(items, result.outputs, strict=True)}


class SessionExecutor:
    """Every plan served by a streaming session (``runtime.session.Session``) that stays up
    across batches; answers stream back as they are written (``streams_answers``).

    ``example``: one request, for the sessions' warm-up; ``faults``: plan -> the launcher's
    ``fault=`` option for that plan's session; ``options``: ``Session``/``run_local``
    keywords. ``start()`` starts every session (otherwise each starts on first use);
    ``close()`` ends them.
    """

    streams_answers = True

    def __init__(
        self,
        folders: Mapping[str, str | Path],
        example: Any,
        faults: Mapping[str, dict[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        self.folders = {p: Path(f) for p, f in folders.items()}
        self.example, self.faults, self.options = example, dict(faults or {}), options
        self.sessions: dict[str, Any] = {}
        self.runs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        for plan in self.folders:
            self._session(plan)

    def _session(self, plan: str) -> Any:
        from ..runtime.distributed.session import Session

        with self._lock:
            if plan not in self.sessions:
                fault = self.faults.get(plan)
                self.sessions[plan] = Session(
                    self.folders[plan], self.example, fault=fault, **self.options
                )
            return self.sessions[plan]

    def run(
        self,
        plan: str,
        items: Sequence[tuple[int, Any]],
        on_answer: Callable[[int, Any], None] | None = None,
    ) -> dict[int, Any]:
        session = self._session(plan)
        started = time.monotonic()
        session.submit(items)
        ids = [rid for rid, _ in items]
        try:
            answers = session.wait(ids, on_answer=on_answer)
        except RankFailedError as exc:
            with self._lock:
                if self.sessions.get(plan) is session:
                    del self.sessions[plan]  # closed below; a later batch starts a new one
            session.close(timeout_s=5.0)
            raise _plan_failure(self.runs, plan, len(items), started, exc) from exc
        self.runs.append({"plan": plan, "items": len(items), "failed": False,
                          "wall_s": time.monotonic() - started})  # fmt: skip
        return answers

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


def _plan_failure(
    runs: list[dict[str, Any]], plan: str, items: int, started: float, exc: RankFailedError
) -> PlanFailure:
    """Record a failed batch in ``runs``; the ``PlanFailure`` naming the device the launcher
    blamed (``DeviceLost``; none when it blamed no device) and the answers given first."""
    runs.append({"plan": plan, "items": items, "failed": True,
                 "wall_s": time.monotonic() - started})  # fmt: skip
    devices = [exc.device] if isinstance(exc, DeviceLost) else []
    return PlanFailure(plan, devices, str(exc), exc.answered)
