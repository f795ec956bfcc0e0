"""Streaming sessions: a saved plan's ranks stay up and serve requests as they come.

``run_local`` starts one process per device, serves a fixed list of requests and ends; a
*session* starts them once and keeps them serving, so a dispatcher can move requests onto a
plan that is already running (re-sending after a device loss then costs the serving time,
not a process start and a warm-up).

The session and rank 0 talk through an inbox and an outbox folder (``inbox``).

Rank 0 drains the inbox in *rounds*: it tells every rank over the control group how many
requests the round has (0: nothing yet, a heartbeat every ``HEARTBEAT_S``; -1: the end),
then all run them as one stream (``driver``). A failed rank ends the session
with ``RankFailedError`` (``DeviceLost`` when a device's rank is to blame); ``exc.answered`` holds the answers it wrote to the ids waited for.

Rounds are barriers: a request that arrives while a round runs waits for that round to end
(the pipeline drains between rounds), so a session pipelines requests only within a round.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...artifact.manifest import PlanFolder, read_plan_folder
from ...errors import DeviceLost, RankFailedError
from ..inputs import check_requests, flatten_requests
from .config import RunConfig
from .inbox import POLL_S, atomic_save
from .launch import _spawn_and_wait, free_port, run_config
from .supervisor import kill_all

__all__ = ["Session"]


class Session:
    """One saved plan served by its ranks until ``close()`` (see the module docstring).

    ``example``: one request as the model is called (``run_local``'s form), used for the
    warm-up; ``options``: ``run_local``'s keywords (``emulate``, ``host``, ``timeout_s``,
    ``fault``, ...).
    """

    def __init__(self, plan_dir: str | Path, example: Any, **options: Any) -> None:
        folder = read_plan_folder(plan_dir)
        self._call = folder.call
        self._microbatches = options.get("microbatches") or folder.schedule.microbatches
        self._procs: list[Any] = []
        self._dir = tempfile.TemporaryDirectory(prefix="dora_session_")
        run_dir = Path(self._dir.name)
        self.inbox, self.outbox = run_dir / "inbox", run_dir / "outbox"
        self.inbox.mkdir()
        self.outbox.mkdir()
        warmup = options.pop("warmup", 3)
        flats = flatten_requests(self._call, [(0, example)])
        check_requests(self._call, flats)
        flat = flats[0][1]
        config = run_config(folder.path, str(run_dir), warmup=warmup, **options)
        config.inbox_dir = str(self.inbox)
        torch.save([flat] * max(warmup, 1), config.requests_path)
        self._submitted = 0
        self._submit_lock = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._serve, args=(config, folder, str(run_dir)), daemon=True,
            name=f"dora-session-{Path(plan_dir).name}",
        )  # fmt: skip
        self._thread.start()

    def _serve(self, config: RunConfig, folder: PlanFolder, run_dir: str) -> None:
        try:
            _spawn_and_wait(config, folder, run_dir, free_port(), None, self._procs)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            self.error = exc

    def submit(self, items: Sequence[tuple[int, Any]]) -> None:
        """Queue ``(request_id, request)`` pairs (the request as the model is called). A
        request the plan cannot take (inputs not of the compiled sizes, or fewer rows than the
        schedule's microbatches) is refused here, before anything is queued: on the ranks it
        would end the session."""
        flats = flatten_requests(self._call, items)
        check_requests(self._call, flats, self._microbatches)
        with self._submit_lock:  # sequence numbers in order, whoever submits
            for rid, flat in flats:
                atomic_save((rid, flat), self.inbox / f"{self._submitted:08d}.pt")
                self._submitted += 1

    def _read(self, rid: int) -> Any:
        """Request ``rid``'s answer, taken out of the outbox."""
        path = self.outbox / f"{rid}.pt"
        outputs = self._call.unflatten(torch.load(path, weights_only=True))
        path.unlink()
        return outputs

    def wait(
        self,
        request_ids: Sequence[int],
        timeout_s: float = 600.0,
        on_answer: Callable[[int, Any], None] | None = None,
    ) -> dict[int, Any]:
        """Block until every id in ``request_ids`` is answered (``on_answer(id, outputs)`` as
        each arrives); each answer is handed out once. If the session fails first, raise a
        ``RankFailedError`` whose ``answered`` holds the answers to these ids it gave."""
        deadline = time.monotonic() + timeout_s
        pending, got = set(request_ids), {}
        while pending:
            written = {int(name[:-3]) for name in os.listdir(self.outbox) if name[0] != "."}
            for rid in sorted(pending & written):
                got[rid] = self._read(rid)
                pending.discard(rid)
                if on_answer is not None:
                    on_answer(rid, got[rid])
            if not pending:
                break
            if self.error is not None or not self._thread.is_alive():
                cause = self.error or RuntimeError("the session ended before answering")
                failure = (
                    DeviceLost(str(cause), rank=cause.rank, stage=cause.stage, device=cause.device)
                    if isinstance(cause, DeviceLost)
                    else RankFailedError(str(cause))
                )
                failure.answered = got
                raise failure from cause
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} request(s) unanswered after {timeout_s} s")
            time.sleep(POLL_S)
        return got

    def close(self, timeout_s: float = 60.0) -> None:
        """Ask the ranks to finish and wait for them (stopped after ``timeout_s``); the
        session's folder is removed."""
        (self.inbox / "end").touch()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            kill_all(self._procs)
            self._thread.join(timeout_s)
        self._dir.cleanup()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
