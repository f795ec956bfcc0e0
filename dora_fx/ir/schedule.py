"""The communication schedule: per stage, the ordered actions every runtime executes.

A stage graph (after ``schedule_comm``) is cut into *segments* at its communication points: a
segment starts where a received value is first needed and ends after a value another stage
waits for is produced. One microbatch of a stage is then a list of *steps*::

    recv t4<0   compute 0   send t9>2   recv t7<0   compute 1   send t12>2   compute 2

and a schedule lowers the steps of ``m`` microbatches into actions. Text form, one token per
action (microbatch first, like torch.distributed.pipelining's ``"1F0"``)::

    0POST4<0   post the receive of tag 4 from stage 0 for microbatch 0 (non-blocking)
    0WAIT4<0   block until it has arrived; the values it carries may be used after this
    0F1        compute segment 1 of microbatch 0
    0SEND9>2x4 hand tag 9 to the network for stage 2, in 4 chunks (non-blocking); "x1" omitted
    0SENT9>2   block until that send has left (its buffer may be reused)

Two lowerings (pure functions of steps, microbatches and policy):

* ``naive``: per microbatch, receive everything, compute the whole stage, then send every
  value and wait for each send (blocking). What a hand-written pipeline does.
* ``overlap``: receives of microbatch k+1 are posted while k computes; each wait sits right
  before the segment that first uses the value; each send right after the segment that
  produces it, waited for only at the end of the next microbatch, so the wire works while the
  device computes. Large tensors go in chunks.

The schedule also names its *contention* policy (how flows on one shared medium share it):
``fair`` (every flow gets an equal share, what Wi-Fi does by itself) or ``critical-first``
(the flow of the earliest microbatch, the one on the critical path, gets the medium).

Lowering from stage graphs to a schedule is in ``ir.lowering``; running the stages' action
lists together (rendezvous semantics) in ``ir.execute``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import DoraError

__all__ = [
    "CHUNK_BYTES",
    "CONTENTION",
    "POLICIES",
    "Action",
    "Kind",
    "Schedule",
    "ScheduleError",
    "StageSchedule",
]

POLICIES = ("naive", "overlap")
# A chunk of 1 MiB holds a 280 Mb/s Wi-Fi medium ~30 ms: the granularity at which a critical
# flow can take the medium from a bulk one, and at which a receiver's next hop can start.
CHUNK_BYTES = 1 << 20
CONTENTION = ("fair", "critical-first")


class ScheduleError(DoraError, ValueError):
    """A schedule that does not parse, does not fit its stage graph, or deadlocks."""


class Kind(str, Enum):
    POST = "POST"  # post a receive (non-blocking)
    WAIT = "WAIT"  # wait for a posted receive
    COMPUTE = "F"  # compute one segment
    SEND = "SEND"  # start a send (non-blocking)
    SENT = "SENT"  # wait for a started send


_ACTION = re.compile(r"(\d+)(F|POST|WAIT|SEND|SENT)(\d+)(?:([<>])(\d+))?(?:x(\d+))?")
_ARROW = {Kind.POST: "<", Kind.WAIT: "<", Kind.SEND: ">", Kind.SENT: ">"}


@dataclass(frozen=True)
class Action:
    """One action of a stage: ``index`` is the segment of a COMPUTE, the tag otherwise;
    ``peer`` the other stage of a transfer."""

    kind: Kind
    mb: int
    index: int
    peer: int = -1
    chunks: int = 1

    def __str__(self) -> str:
        if self.kind is Kind.COMPUTE:
            return f"{self.mb}F{self.index}"
        text = f"{self.mb}{self.kind.value}{self.index}{_ARROW[self.kind]}{self.peer}"
        return text + (f"x{self.chunks}" if self.chunks != 1 else "")

    @classmethod
    def parse(cls, text: str) -> Action:
        match = _ACTION.fullmatch(text)
        if match is None:
            raise ScheduleError(
                f"cannot parse schedule action {text!r}; expected e.g. '0F1', '0POST4<0', "
                "'0WAIT4<0', '0SEND9>2x4', '0SENT9>2'"
            )
        mb, code, index, arrow, peer, chunks = match.groups()
        kind = Kind(code)
        action = cls(
            kind, int(mb), int(index), -1 if peer is None else int(peer),
            1 if chunks is None else int(chunks),
        )
        if str(action) != text:  # wrong arrow, a peer on F, chunks off a SEND, "x1", "01F"
            raise ScheduleError(f"schedule action {text!r} is not canonical; expected {action}")
        return action

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.mb, self.index, self.peer)


@dataclass(frozen=True)
class StageSchedule:
    stage: int
    actions: tuple[Action, ...]

    def to_text(self) -> str:
        return " ".join(str(a) for a in self.actions)

    @classmethod
    def from_text(cls, stage: int, text: str) -> StageSchedule:
        return cls(stage, tuple(Action.parse(t) for t in text.split()))

    def segments_used(self) -> int:
        return 1 + max((a.index for a in self.actions if a.kind is Kind.COMPUTE), default=-1)


@dataclass(frozen=True)
class Schedule:
    """Every stage's actions, with the policy that lowered them."""

    policy: str
    microbatches: int
    contention: str
    stages: tuple[StageSchedule, ...]

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ScheduleError(f"schedule policy must be one of {POLICIES}, got {self.policy!r}")
        if self.contention not in CONTENTION:
            raise ScheduleError(
                f"schedule contention must be one of {CONTENTION}, got {self.contention!r}"
            )
        if self.microbatches < 1:
            raise ScheduleError(f"microbatches must be >= 1, got {self.microbatches}")

    @property
    def pipelined(self) -> bool:
        """Whether sends stay in flight while the stage computes on: the ``overlap`` lowering,
        whose SENTs come a microbatch late, and whose closing SENTs a runtime that runs
        requests back to back executes after the next request's first segment."""
        return self.policy == "overlap"

    @property
    def overlaps(self) -> bool:
        """Whether some send is left in flight while the stage goes on (not waited at once)."""
        for stage in self.stages:
            for a, b in zip(stage.actions, stage.actions[1:]):
                if a.kind is Kind.SEND and not (b.kind is Kind.SENT and b.key == a.key):
                    return True
        return False

    def header(self) -> str:
        return (
            f"schedule policy={self.policy} microbatches={self.microbatches} "
            f"contention={self.contention}"
        )

    def to_text(self) -> str:
        lines = [self.header()]
        lines += [f"stage {s.stage}: {s.to_text()}" for s in self.stages]
        return "\n".join(lines)

    @classmethod
    def from_text(cls, text: str) -> Schedule:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        head = re.fullmatch(
            r"schedule policy=(\S+) microbatches=(\d+) contention=(\S+)", lines[0].strip()
        ) if lines else None
        if head is None:
            raise ScheduleError(
                "a schedule's text starts with 'schedule policy=P microbatches=M contention=C', "
                f"got {lines[0] if lines else 'nothing'!r}"
            )
        stages = []
        for line in lines[1:]:
            match = re.fullmatch(r"stage (\d+):(.*)", line.strip())
            if match is None:
                raise ScheduleError(f"expected 'stage K: actions...', got {line!r}")
            stages.append(StageSchedule.from_text(int(match.group(1)), match.group(2)))
        return cls(head.group(1), int(head.group(2)), head.group(3), tuple(stages))

    def stage_entry(self, stage: int) -> dict[str, Any]:
        """What plan.json keeps per stage (``stages[k]["schedule"]``)."""
        return {
            "policy": self.policy,
            "microbatches": self.microbatches,
            "contention": self.contention,
            "actions": self.stages[stage].to_text(),
        }

    @classmethod
    def from_stage_entries(cls, entries: Sequence[dict[str, Any]]) -> Schedule:
        """Rebuild from every stage's ``stage_entry`` (as plan.json keeps them)."""
        first = entries[0]
        stages = tuple(StageSchedule.from_text(k, e["actions"]) for k, e in enumerate(entries))
        return cls(first["policy"], int(first["microbatches"]), first["contention"], stages)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "microbatches": self.microbatches,
            "contention": self.contention,
            "stages": [{"stage": s.stage, "actions": s.to_text()} for s in self.stages],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Schedule:
        if isinstance(data, str):
            data = json.loads(data)
        assert isinstance(data, dict)
        stages = tuple(StageSchedule.from_text(s["stage"], s["actions"]) for s in data["stages"])
        return cls(data["policy"], int(data["microbatches"]), data["contention"], stages)
