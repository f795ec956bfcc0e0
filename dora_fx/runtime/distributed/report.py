"""Distributed runtime, report: what the ranks measured against what the simulator predicted,
per action class.

Both sides are cut the same way, one *occurrence* per microbatch of a request:

* ``compute`` on stage ``k``: a rank's COMPUTE actions of one microbatch, summed over the
  stage's segments (measured: every rank's ``trace``); the simulator's compute events of that
  device and microbatch;
* ``input`` to stage ``k``: the user inputs from the source to a member of the stage that uses
  them; ``transfer`` to stage ``k``: a cut's tensors from one member of the sending stage to
  one member of stage ``k``; ``return``: a stage's outputs to the sink. A transfer lasts from
  its first bit leaving to its last bit arriving (measured: the receiving rank's log of every
  message, chunks and tensors of one pair and microbatch together; simulated: the flow's
  start and arrival). Transfers between two ranks of one device, and rank 0's own inputs and
  outputs, cross no link and are not counted.

``action_report`` pairs the medians of each class; ``format_action_report`` prints the table.
Durations are device seconds (emulated time) on both sides.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...ir.schedule import Action, Kind, ScheduleError
from ...sim.result import SimResult
from .transport import INPUT_TAG, OUTPUT_TAG

__all__ = ["ActionClass", "action_report", "format_action_report"]


@dataclass(frozen=True)
class ActionClass:
    """One row: an action class, its occurrences and median durations on both sides."""

    action: str  # compute | input | transfer | return
    stage: int  # the computing or receiving stage (the last stage for ``return``)
    measured_s: float | None
    simulated_s: float | None
    measured_count: int
    simulated_count: int

    @property
    def error(self) -> float | None:
        """|measured - simulated| / simulated, or None where a side has no occurrence."""
        if self.measured_s is None or not self.simulated_s:
            return None
        return abs(self.measured_s - self.simulated_s) / self.simulated_s

    @property
    def label(self) -> str:
        return f"{self.action} stage {self.stage}"


def action_report(ranks: Sequence[dict[str, Any]], simulated: SimResult) -> list[ActionClass]:
    """Measured (the ranks' metrics of a ``DistributedResult``) vs ``simulated`` (run with
    ``record_timeline``) per action class; rows in stage order."""
    last = max(r["stage"] for r in ranks)
    measured = _measured(ranks, last)
    predicted = _simulated(simulated, last)
    rows = []
    for key in sorted(set(measured) | set(predicted), key=_order):
        ours, theirs = measured.get(key, []), predicted.get(key, [])
        rows.append(
            ActionClass(
                key[0], key[1],
                statistics.median(ours) if ours else None,
                statistics.median(theirs) if theirs else None,
                len(ours), len(theirs),
            )
        )  # fmt: skip
    return rows


def format_action_report(rows: Sequence[ActionClass]) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{1e3 * value:.3f}"

    lines = [f"{'action class':<20} {'measured ms':>12} {'simulated ms':>13} {'error':>7} {'n':>9}"]
    for row in rows:
        error = "-" if row.error is None else f"{100 * row.error:.1f}%"
        count = f"{row.measured_count}/{row.simulated_count}"
        lines.append(
            f"{row.label:<20} {seconds(row.measured_s):>12} {seconds(row.simulated_s):>13} "
            f"{error:>7} {count:>9}"
        )
    return "\n".join(lines)


_Key = tuple[str, int]
_ORDER = {"input": 0, "compute": 1, "transfer": 2, "return": 3}


def _order(key: _Key) -> tuple[int, int]:
    return key[1], _ORDER[key[0]]


def _measured(ranks: Sequence[dict[str, Any]], last: int) -> dict[_Key, list[float]]:
    out: dict[_Key, list[float]] = defaultdict(list)
    by_rank = {r["rank"]: r for r in ranks}
    for rank in ranks:
        compute: dict[tuple[int, int], float] = defaultdict(float)
        for request, text, start, end in rank.get("trace", []):
            action = _action(text)
            if action is not None and action.kind is Kind.COMPUTE and start >= 0:
                compute[request, action.mb] += end - start
        out["compute", rank["stage"]] += compute.values()
        spans: dict[tuple[int, int, str], tuple[float, float]] = {}
        for message in rank.get("received", []):
            sender = by_rank.get(message["src"])
            if sender is None or sender["device"] == rank["device"] or "sent_s" not in message:
                continue
            kind = _message_class(message["tag"])
            key = (message["src"], message["item"], kind)
            first, arrived = spans.get(key, (message["sent_s"], message["arrived_s"]))
            spans[key] = (min(first, message["sent_s"]), max(arrived, message["arrived_s"]))
        for (_, _, kind), (first, arrived) in spans.items():
            stage = last if kind == "return" else rank["stage"]
            out[kind, stage].append(arrived - first)
    return out


def _simulated(result: SimResult, last: int) -> dict[_Key, list[float]]:
    out: dict[_Key, list[float]] = defaultdict(list)
    compute: dict[tuple[str, int, int, int], float] = defaultdict(float)
    for event in result.compute_events:
        compute[event.device, event.stage, event.request, event.microbatch] += (
            event.end_s - event.start_s
        )
    for (_, stage, _, _), seconds in compute.items():
        out["compute", stage].append(seconds)
    spans: dict[tuple[str, str, int, int, int], tuple[float, float]] = {}
    for flow in result.flow_events:
        if flow.src == flow.dst:
            continue
        key = (flow.src, flow.dst, flow.request, flow.microbatch, flow.to_stage)
        first, arrived = spans.get(key, (flow.start_s, flow.arrive_s))
        spans[key] = (min(first, flow.start_s), max(arrived, flow.arrive_s))
    for (_, _, _, _, to_stage), (first, arrived) in spans.items():
        if to_stage > last:
            out["return", last].append(arrived - first)
        else:
            out["input" if to_stage == 0 else "transfer", to_stage].append(arrived - first)
    return out


def _message_class(tag: int) -> str:
    if tag >= OUTPUT_TAG:
        return "return"
    return "input" if tag >= INPUT_TAG else "transfer"


def _action(text: str) -> Action | None:
    try:
        return Action.parse(text)
    except ScheduleError:
        return None
