"""Timeline export: Chrome-trace JSON (opens in Perfetto / chrome://tracing) and a Gantt PNG.

Chrome trace: one process per device (threads ``compute``, ``send``, ``recv``) and one per
medium (a thread per device pair using it), complete events (``ph: "X"``) in microseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from .events import ComputeEvent, FlowEvent

__all__ = ["Timeline", "chrome_trace", "write_chrome_trace", "write_gantt_png"]


class Timeline(Protocol):
    """What the exports read of a run (``sim.result.SimResult`` is one)."""

    plan_name: str
    busy_s: dict[str, float]
    compute_events: list[ComputeEvent]
    flow_events: list[FlowEvent]
    medium_of: dict[str, str]

    @property
    def requests(self) -> int: ...

    def to_json(self) -> dict[str, Any]: ...

_COMPUTE, _SEND, _RECV = 1, 2, 3


def chrome_trace(result: Timeline) -> dict[str, Any]:
    devices = list(result.busy_s)
    for e in result.flow_events:
        for name in (e.src, e.dst):
            if name not in devices:
                devices.append(name)
    pid = {name: i + 1 for i, name in enumerate(devices)}
    events: list[dict[str, Any]] = []
    for name, p in pid.items():
        events.append(
            {"name": "process_name", "ph": "M", "pid": p, "tid": 0, "args": {"name": name}}
        )
        for tid, label in ((_COMPUTE, "compute"), (_SEND, "send"), (_RECV, "recv")):
            events.append(
                {"name": "thread_name", "ph": "M", "pid": p, "tid": tid, "args": {"name": label}}
            )
    for c in result.compute_events:
        events.append(
            {
                "name": f"stage {c.stage}",
                "cat": "compute",
                "ph": "X",
                "pid": pid[c.device],
                "tid": _COMPUTE,
                "ts": c.start_s * 1e6,
                "dur": (c.end_s - c.start_s) * 1e6,
                "args": {"request": c.request, "microbatch": c.microbatch, "stage": c.stage},
            }
        )
    media: dict[str, int] = {}
    pair_tid: dict[tuple[str, str], int] = {}
    for e in result.flow_events:
        args = {
            "request": e.request,
            "microbatch": e.microbatch,
            "to_stage": e.to_stage,
            "bytes": e.nbytes,
            "src": e.src,
            "dst": e.dst,
        }
        label = f"{e.src}->{e.dst}"
        events.append(_span(label, "send", pid[e.src], _SEND, e.start_s, e.end_s, args))
        events.append(_span(label, "recv", pid[e.dst], _RECV, e.start_s, e.arrive_s, args))
        medium = "+".join(
            dict.fromkeys([result.medium_of.get(e.src, "?"), result.medium_of.get(e.dst, "?")])
        )
        if medium not in media:
            media[medium] = len(pid) + len(media) + 1
            events.append(
                {
                    "name": "process_name",
                    "ph": "M",
                    "pid": media[medium],
                    "tid": 0,
                    "args": {"name": f"medium {medium}"},
                }
            )
        if (e.src, e.dst) not in pair_tid:
            pair_tid[(e.src, e.dst)] = len(pair_tid) + 1
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": media[medium],
                    "tid": pair_tid[(e.src, e.dst)],
                    "args": {"name": label},
                }
            )
        events.append(
            _span(
                label, "network", media[medium], pair_tid[(e.src, e.dst)], e.start_s, e.end_s, args
            )
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "plan": result.plan_name,
            **{k: v for k, v in result.to_json().items() if isinstance(v, (int, float, str))},
        },
    }


def _span(
    name: str, cat: str, pid: int, tid: int, start: float, end: float, args: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "cat": cat,
        "ph": "X",
        "pid": pid,
        "tid": tid,
        "ts": start * 1e6,
        "dur": (end - start) * 1e6,
        "args": args,
    }


def write_chrome_trace(result: Timeline, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chrome_trace(result)))
    return path


def write_gantt_png(result: Timeline, path: str | Path, max_requests: int = 20) -> Path:
    """One row per device (compute) and one per device's outgoing transfers, colored by stage,
    for the first ``max_requests`` requests."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    devices = list(result.busy_s)
    senders = list(dict.fromkeys(e.src for e in result.flow_events))
    rows = [f"{d} compute" for d in devices] + [f"{d} send" for d in senders]
    row_of = {r: i for i, r in enumerate(rows)}
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(rows) + 1.5))
    for e in result.compute_events:
        if e.request < max_requests:
            ax.broken_barh(
                [(e.start_s * 1e3, (e.end_s - e.start_s) * 1e3)],
                (row_of[f"{e.device} compute"] - 0.4, 0.8),
                facecolors=colors(e.stage % 10),
                edgecolors="black",
                linewidth=0.3,
            )
    for f in result.flow_events:
        if f.request < max_requests:
            ax.broken_barh(
                [(f.start_s * 1e3, max(f.end_s - f.start_s, 0.0) * 1e3)],
                (row_of[f"{f.src} send"] - 0.3, 0.6),
                facecolors=colors(max(f.to_stage - 1, 0) % 10),
                alpha=0.6,
                edgecolors="black",
                linewidth=0.3,
            )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.set_title(
        f"plan {result.plan_name}: first {min(max_requests, result.requests)} of {result.requests} "
        f"requests (color = stage)"
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
