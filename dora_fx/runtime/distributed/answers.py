"""Distributed runtime, answers: a run's results handed out by request id as they come, and
kept through a failure (``launch.run_local``).

Rank 0 writes each answer to the run's outbox as it collects it (``inbox.write_answer``,
named by the request's position in the stream); the launcher's watch loop polls the outbox
(``AnswerStream.poll``), calling ``on_answer(request_id, outputs)`` for each, and after the
run (or its failure) ``AnswerStream.answered`` holds every answer given, by request id.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...ir.call_spec import CallSpec

__all__ = ["AnswerStream"]


class AnswerStream:
    """The answers of one run: ``ids[k]`` is the request id of the stream's ``k``-th request."""

    def __init__(
        self,
        call: CallSpec,
        ids: Sequence[int],
        outbox: str | Path | None = None,
        on_answer: Callable[[int, Any], None] | None = None,
    ) -> None:
        self.call, self.ids, self.on_answer = call, list(ids), on_answer
        self.outbox = None if outbox is None else Path(outbox)
        self.answered: dict[int, Any] = {}

    def poll(self) -> None:
        """Hand out the answers rank 0 wrote since the last call, in stream order."""
        if self.outbox is None or not self.outbox.exists():
            return
        names = [n for n in os.listdir(self.outbox) if n.endswith(".pt") and n[0] != "."]
        for position in sorted(int(n[:-3]) for n in names):
            path = self.outbox / f"{position}.pt"
            outputs = self.call.unflatten(torch.load(path, weights_only=True))
            path.unlink()
            self._give(self.ids[position], outputs)

    def _give(self, request_id: int, outputs: Any) -> None:
        self.answered[request_id] = outputs
        if self.on_answer is not None:
            self.on_answer(request_id, outputs)
