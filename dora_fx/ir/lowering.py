"""Lowering: one microbatch's steps of every stage (``ir.stage_graph`` reads them off the stage
graphs) lowered into a ``Schedule`` (``ir.schedule``: the IR and its text form), and a schedule
relowered for another microbatch count. Every function here is pure: the same steps,
microbatch count and policy give the same schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .schedule import POLICIES, Action, Kind, Schedule, ScheduleError, StageSchedule

__all__ = [
    "Step",
    "chunks_for",
    "lower",
    "lower_stage",
    "relower",
    "schedule_steps",
]



@dataclass(frozen=True)
class Step:
    """One microbatch's program order: ``recv`` (tag from peer), ``compute`` (segment),
    ``send`` (tag to peer, nbytes per microbatch at the example batch; ``chunks``: a fixed
    chunk count, 0 to derive it from the bytes)."""

    kind: str
    index: int
    peer: int = -1
    nbytes: int = 0
    chunks: int = 0


# -- lowering -------------------------------------------------------------------------------


def chunks_for(nbytes: float, chunk_bytes: float | None) -> int:
    """How many chunks a send of ``nbytes`` goes in: chunks of at most ``chunk_bytes``, at
    most 8 (each chunk costs a message)."""
    if not chunk_bytes or nbytes <= chunk_bytes:
        return 1
    return min(8, math.ceil(nbytes / chunk_bytes))


def lower_stage(
    stage: int,
    steps: Sequence[Step],
    microbatches: int,
    policy: str,
    chunk_bytes: float | None = None,
) -> StageSchedule:
    """Pure: one stage's steps for ``microbatches`` microbatches under ``policy``."""
    m = microbatches
    recvs = [s for s in steps if s.kind == "recv"]
    sends = [s for s in steps if s.kind == "send"]
    computes = [s for s in steps if s.kind == "compute"]

    def act(kind: Kind, mb: int, s: Step) -> Action:
        chunks = 1
        if kind is Kind.SEND:
            chunks = s.chunks or chunks_for(s.nbytes / m, chunk_bytes)
        return Action(kind, mb, s.index, s.peer, chunks)

    actions: list[Action] = []
    if policy == "naive":
        for mb in range(m):
            actions += [act(Kind.POST, mb, s) for s in recvs]
            actions += [act(Kind.WAIT, mb, s) for s in recvs]
            actions += [act(Kind.COMPUTE, mb, s) for s in computes]
            for s in sends:
                actions += [act(Kind.SEND, mb, s), act(Kind.SENT, mb, s)]
    elif policy == "overlap":
        actions += [act(Kind.POST, 0, s) for s in recvs]
        for mb in range(m):
            if mb + 1 < m:  # post the next microbatch's receives while this one computes
                actions += [act(Kind.POST, mb + 1, s) for s in recvs]
            for s in steps:
                kind = {"recv": Kind.WAIT, "compute": Kind.COMPUTE, "send": Kind.SEND}[s.kind]
                actions.append(act(kind, mb, s))
            if mb > 0:  # the previous microbatch's sends had this one's compute to drain
                actions += [act(Kind.SENT, mb - 1, s) for s in sends]
        actions += [act(Kind.SENT, m - 1, s) for s in sends]
    else:
        raise ScheduleError(f"schedule policy must be one of {POLICIES}, got {policy!r}")
    return StageSchedule(stage, tuple(actions))


def lower(
    steps: Sequence[Sequence[Step]],
    microbatches: int,
    policy: str,
    contention: str = "critical-first",
    chunk_bytes: float | None = None,
) -> Schedule:
    """Pure: the whole pipeline's schedule from every stage's steps."""
    return Schedule(
        policy,
        microbatches,
        contention,
        tuple(
            lower_stage(k, s, microbatches, policy, chunk_bytes) for k, s in enumerate(steps)
        ),
    )


def schedule_steps(stage: StageSchedule) -> list[Step]:
    """A stage's steps read back from its actions of microbatch 0 (WAIT: recv, F: compute,
    SEND: send with its chunk count). Both lowerings keep the steps' order there, up to the
    naive one's grouping, which it imposes again when relowered."""
    kinds = {Kind.WAIT: "recv", Kind.COMPUTE: "compute", Kind.SEND: "send"}
    return [
        Step(kinds[a.kind], a.index, a.peer, chunks=a.chunks if a.kind is Kind.SEND else 0)
        for a in stage.actions
        if a.mb == 0 and a.kind in kinds
    ]


def relower(schedule: Schedule, microbatches: int) -> Schedule:
    """Pure: ``schedule`` for another microbatch count (same policy, contention, segments and
    chunk counts): what a runtime executes when a batch has fewer rows than microbatches, or
    when a run asks for another count."""
    if microbatches == schedule.microbatches:
        return schedule
    return Schedule(
        schedule.policy,
        microbatches,
        schedule.contention,
        tuple(
            lower_stage(s.stage, schedule_steps(s), microbatches, schedule.policy)
            for s in schedule.stages
        ),
    )


