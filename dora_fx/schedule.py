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

``execute`` runs the stages' action lists together, one action at a time, with rendezvous
semantics (a send completes only once its receive is posted); the verifier uses it to prove
a schedule deadlock-free, the in-process runtime to run one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
import torch.fx

from .comm_ops import RECV, SEND
from .errors import DoraError

__all__ = [
    "CHUNK_BYTES",
    "Action",
    "Kind",
    "Schedule",
    "ScheduleError",
    "StageSchedule",
    "Step",
    "execute",
    "lower",
    "lower_stage",
    "relower",
    "schedule_steps",
    "segments",
    "stage_steps",
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


# -- from a stage graph to steps ------------------------------------------------------------


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


def _is_work(node: torch.fx.Node) -> bool:
    return node.op in ("call_function", "call_method", "call_module") and node.target not in (
        RECV,
        SEND,
    )


def segments(graph: torch.fx.Graph, split: bool = True) -> list[list[torch.fx.Node]]:
    """The graph's nodes (output excluded) cut into segments: a new segment starts at a
    receive once the current one has work or sends, and at work after a send. With
    ``split=False``, one segment (data-parallel stages run whole)."""
    cut: list[list[torch.fx.Node]] = [[]]
    has_work = has_send = False
    for node in graph.nodes:
        if node.op == "output":
            continue
        if split and (
            (node.target is RECV and (has_work or has_send)) or (_is_work(node) and has_send)
        ):
            cut.append([])
            has_work = has_send = False
        cut[-1].append(node)
        has_work |= _is_work(node)
        has_send |= node.target is SEND
    return cut


def _nbytes(value: Any) -> int:
    if not isinstance(value, torch.Tensor):
        return 8
    numel = 1
    for size in value.shape:
        numel *= _hint(size)
    return numel * value.element_size()


def _hint(size: Any) -> int:
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        return int(hint) if hint is not None else 1
    return int(size)


def _int(value: Any) -> int:
    assert isinstance(value, int)
    return value


def _val(arg: Any) -> Any:
    return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg


def stage_steps(graph: torch.fx.Graph, split: bool = True) -> list[Step]:
    steps = []
    for k, segment in enumerate(segments(graph, split)):
        steps += [
            Step("recv", _int(n.kwargs["tag"]), _int(n.kwargs["peer"]))
            for n in segment
            if n.target is RECV
        ]
        steps.append(Step("compute", k))
        steps += [
            Step("send", _int(n.kwargs["tag"]), _int(n.kwargs["peer"]), _nbytes(_val(n.args[0])))
            for n in segment
            if n.target is SEND
        ]
    return steps


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
