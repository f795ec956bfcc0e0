"""Distributed runtime, inbox: the folders through which a session's launcher side and its
rank 0 exchange requests and answers (``session``).

* ``inbox/``: the launcher drops ``SEQ.pt`` files, each ``(request_id, flat_inputs)``
  (written to a temporary name and renamed, ``atomic_save``, so rank 0 never reads half a
  file), and a file named ``end`` to stop the session; rank 0 takes them in order (``Inbox``);
* ``outbox/``: rank 0 writes ``REQUEST_ID.pt`` (the request's flat outputs) as soon as the
  request is answered (``write_answer``), renamed into place the same way.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["Inbox", "write_answer", "atomic_save", "HEARTBEAT_S"]

HEARTBEAT_S = 1.0  # rank 0 announces an empty round at least this often when idle
POLL_S = 0.005


def atomic_save(value: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(value, tmp)
    os.replace(tmp, path)


class Inbox:
    """Rank 0's side of the inbox: take what has arrived, in submission order."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._next = 0

    def take(self, wait_s: float = HEARTBEAT_S) -> list[tuple[int, list[Any]]] | None:
        """The requests submitted since the last call (waiting up to ``wait_s`` for one);
        None once the launcher asked to end and everything before was taken."""
        deadline = time.monotonic() + wait_s
        while True:
            found = []
            while (path := self.folder / f"{self._next:08d}.pt").exists():
                found.append(torch.load(path, weights_only=True))
                path.unlink()
                self._next += 1
            if found:
                return [(int(rid), flat) for rid, flat in found]
            if (self.folder / "end").exists():
                return None
            if time.monotonic() >= deadline:
                return []
            time.sleep(POLL_S)


def write_answer(outbox: str | Path, request_id: int, outputs: list[Any]) -> None:
    atomic_save(outputs, Path(outbox, f"{request_id}.pt"))


