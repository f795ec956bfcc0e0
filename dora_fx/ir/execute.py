"""Running every stage's action list together, one action at a time, with rendezvous
semantics (a send completes only once its receive is posted): the verifier uses it to prove a
schedule deadlock-free, the in-process runtime to run one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .schedule import Action, Kind, Schedule, ScheduleError

__all__ = ["execute"]

# -- running the stages' actions together ---------------------------------------------------


@dataclass
class _Channels:
    posted: set[tuple[int, int, int, int]] = field(default_factory=set)  # (src, dst, tag, mb)
    sent: set[tuple[int, int, int, int]] = field(default_factory=set)


def _blocked(stage: int, action: Action, channels: _Channels) -> bool:
    if action.kind is Kind.WAIT:
        return (action.peer, stage, action.index, action.mb) not in channels.sent
    if action.kind is Kind.SENT:  # rendezvous: a send completes once its receive is posted
        return (stage, action.peer, action.index, action.mb) not in channels.posted
    return False


def execute(
    schedule: Schedule, run: Callable[[int, Action], None] | None = None
) -> list[tuple[int, Action]]:
    """Run the stages' action lists together: each stage goes as far as it can, in turn, until
    all are done. Returns the global order; raises ScheduleError naming every blocked stage's
    action on a deadlock."""
    channels = _Channels()
    pcs = [0] * len(schedule.stages)
    trace: list[tuple[int, Action]] = []
    while True:
        progress = False
        for k, stage in enumerate(schedule.stages):
            actions, s = stage.actions, stage.stage
            while pcs[k] < len(actions) and not _blocked(s, actions[pcs[k]], channels):
                action = actions[pcs[k]]
                if run is not None:
                    run(s, action)
                if action.kind is Kind.POST:
                    channels.posted.add((action.peer, s, action.index, action.mb))
                elif action.kind is Kind.SEND:
                    channels.sent.add((s, action.peer, action.index, action.mb))
                trace.append((s, action))
                pcs[k] += 1
                progress = True
        if all(pc == len(st.actions) for pc, st in zip(pcs, schedule.stages)):
            return trace
        if not progress:
            stuck = [
                f"stage {st.stage} at action {pc} ({st.actions[pc]})"
                for pc, st in zip(pcs, schedule.stages)
                if pc < len(st.actions)
            ]
            raise ScheduleError(
                "the schedule deadlocks: every unfinished stage waits on another: "
                + "; ".join(stuck)
                + ". A WAIT needs the peer's SEND, a SENT the peer's POST; reorder them"
            )
