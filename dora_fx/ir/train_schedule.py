"""Training schedules: per stage, the ordered forward, backward and transfer actions of one
iteration, as GPipe or 1F1B lowers them.

A training iteration over ``m`` microbatches runs, on every stage, a forward and a backward per
microbatch. Activations flow down the pipeline (stage order); the gradient of each transferred
activation flows back up, from the consumer to the producer. Text form, one token per action,
microbatch first like the inference schedule (``ir.schedule``)::

    0RECV4<0    receive activation tag 4 of microbatch 0 from stage 0 (blocking)
    0F          forward of microbatch 0 through the whole stage (its activations are kept)
    0SEND9>2    send activation tag 9 to stage 2 (non-blocking)
    0GRECV9<2   receive the gradient of tag 9 from stage 2 (blocking)
    0B          backward of microbatch 0 (frees its activations)
    0GSEND4>0   send the gradient of tag 4 back to stage 0 (non-blocking)
    REDUCE      reduce the gradients over the stage's data-parallel group (once, at the end)

Two policies:

* ``gpipe``: every forward, then every backward (microbatch order). Each stage holds all ``m``
  microbatches' activations at its peak.
* ``1f1b``: stage ``k`` of ``S`` runs ``min(S - k - 1, m)`` warm-up forwards, then alternates
  one forward and one backward, then drains the backwards: at most ``min(m, S - k)``
  microbatches' activations in flight.

``execute_training`` runs all stages' actions together (a RECV needs the peer's SEND; sends are
buffered) to prove a schedule deadlock-free; ``in_flight`` counts each stage's peak of
activations kept. Pure: no torch, no FX.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .schedule import ScheduleError

__all__ = [
    "TRAIN_POLICIES",
    "TKind",
    "TrainAction",
    "TrainSchedule",
    "Transfer",
    "execute_training",
    "in_flight",
    "lower_training",
]

TRAIN_POLICIES = ("gpipe", "1f1b")


class TKind(str, Enum):
    FORWARD = "F"
    BACKWARD = "B"
    SEND = "SEND"  # activation, down the pipeline
    RECV = "RECV"
    GSEND = "GSEND"  # gradient of an activation, back up
    GRECV = "GRECV"
    REDUCE = "REDUCE"  # gradient reduction over the data-parallel group


_TRANSFERS = (TKind.SEND, TKind.RECV, TKind.GSEND, TKind.GRECV)
_ARROW = {TKind.SEND: ">", TKind.GSEND: ">", TKind.RECV: "<", TKind.GRECV: "<"}
_TOKEN = re.compile(r"REDUCE|(\d+)(F|B|GSEND|GRECV|SEND|RECV)(?:(\d+)([<>])(\d+))?")


@dataclass(frozen=True)
class Transfer:
    """A value stage ``src`` sends stage ``dst`` each microbatch; ``grad``: whether its
    gradient flows back (a float tensor that depends on weights)."""

    src: int
    dst: int
    tag: int
    grad: bool = True


@dataclass(frozen=True)
class TrainAction:
    kind: TKind
    mb: int = -1
    tag: int = -1
    peer: int = -1

    def __str__(self) -> str:
        if self.kind is TKind.REDUCE:
            return "REDUCE"
        if self.kind in (TKind.FORWARD, TKind.BACKWARD):
            return f"{self.mb}{self.kind.value}"
        return f"{self.mb}{self.kind.value}{self.tag}{_ARROW[self.kind]}{self.peer}"

    @classmethod
    def parse(cls, text: str) -> TrainAction:
        match = _TOKEN.fullmatch(text)
        if match is None:
            raise ScheduleError(
                f"cannot parse training action {text!r}; expected e.g. '0F', '0B', '0RECV4<0', "
                "'0SEND9>2', '0GRECV9<2', '0GSEND4>0', 'REDUCE'"
            )
        if text == "REDUCE":
            return cls(TKind.REDUCE)
        mb, code, tag, _arrow, peer = match.groups()
        kind = TKind(code)
        if (kind in _TRANSFERS) != (tag is not None):
            raise ScheduleError(f"training action {text!r}: transfers name a tag and a peer, F/B not")
        action = cls(kind, int(mb), -1 if tag is None else int(tag), -1 if peer is None else int(peer))
        if str(action) != text:
            raise ScheduleError(f"training action {text!r} is not canonical; expected {action}")
        return action


@dataclass(frozen=True)
class TrainSchedule:
    """Every stage's actions of one training iteration."""

    policy: str
    microbatches: int
    stages: tuple[tuple[TrainAction, ...], ...]

    def __post_init__(self) -> None:
        if self.policy not in TRAIN_POLICIES:
            raise ScheduleError(
                f"training schedule policy must be one of {TRAIN_POLICIES}, got {self.policy!r}"
            )
        if self.microbatches < 1:
            raise ScheduleError(f"microbatches must be >= 1, got {self.microbatches}")

    def header(self) -> str:
        return f"train schedule policy={self.policy} microbatches={self.microbatches}"

    def stage_text(self, stage: int) -> str:
        return " ".join(str(a) for a in self.stages[stage])

    def to_text(self) -> str:
        lines = [self.header()]
        lines += [f"stage {k}: {self.stage_text(k)}" for k in range(len(self.stages))]
        return "\n".join(lines)

    @classmethod
    def from_text(cls, text: str) -> TrainSchedule:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        head = re.fullmatch(r"train schedule policy=(\S+) microbatches=(\d+)", lines[0]) if lines else None
        if head is None:
            raise ScheduleError(
                "a training schedule's text starts with 'train schedule policy=P microbatches=M', "
                f"got {lines[0] if lines else 'nothing'!r}"
            )
        stages = []
        for k, line in enumerate(lines[1:]):
            match = re.fullmatch(r"stage (\d+):(.*)", line)
            if match is None or int(match.group(1)) != k:
                raise ScheduleError(f"expected 'stage {k}: actions...', got {line!r}")
            stages.append(tuple(TrainAction.parse(t) for t in match.group(2).split()))
        return cls(head.group(1), int(head.group(2)), tuple(stages))

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "microbatches": self.microbatches,
            "stages": [self.stage_text(k) for k in range(len(self.stages))],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> TrainSchedule:
        parsed: dict[str, Any] = json.loads(data) if isinstance(data, str) else data
        stages = tuple(tuple(TrainAction.parse(t) for t in s.split()) for s in parsed["stages"])
        return cls(parsed["policy"], int(parsed["microbatches"]), stages)


# -- lowering -------------------------------------------------------------------------------


def _forward(stage: int, mb: int, transfers: Sequence[Transfer]) -> list[TrainAction]:
    acts = [TrainAction(TKind.RECV, mb, t.tag, t.src) for t in transfers if t.dst == stage]
    acts.append(TrainAction(TKind.FORWARD, mb))
    acts += [TrainAction(TKind.SEND, mb, t.tag, t.dst) for t in transfers if t.src == stage]
    return acts


def _backward(stage: int, mb: int, transfers: Sequence[Transfer]) -> list[TrainAction]:
    acts = [
        TrainAction(TKind.GRECV, mb, t.tag, t.dst)
        for t in transfers
        if t.src == stage and t.grad
    ]
    acts.append(TrainAction(TKind.BACKWARD, mb))
    acts += [
        TrainAction(TKind.GSEND, mb, t.tag, t.src)
        for t in transfers
        if t.dst == stage and t.grad
    ]
    return acts


def _order(stage: int, stages: int, m: int, policy: str) -> list[tuple[str, int]]:
    if policy == "gpipe":
        return [("F", j) for j in range(m)] + [("B", j) for j in range(m)]
    warmup = min(stages - stage - 1, m)
    order = [("F", j) for j in range(warmup)]
    for j in range(m - warmup):
        order += [("F", warmup + j), ("B", j)]
    order += [("B", j) for j in range(m - warmup, m)]
    return order


def lower_training(
    stages: int, transfers: Sequence[Transfer], microbatches: int, policy: str
) -> TrainSchedule:
    """Pure: the training schedule of ``stages`` stages exchanging ``transfers`` (activations
    go from a lower stage to a higher one) over ``microbatches`` microbatches."""
    for t in transfers:
        if not 0 <= t.src < t.dst < stages:
            raise ScheduleError(
                f"transfer of tag {t.tag} goes from stage {t.src} to stage {t.dst}; training "
                f"schedules need activations to flow down a pipeline of {stages} stages"
            )
    if policy not in TRAIN_POLICIES:
        raise ScheduleError(f"training schedule policy must be one of {TRAIN_POLICIES}, got {policy!r}")
    out = []
    for k in range(stages):
        acts: list[TrainAction] = []
        for what, mb in _order(k, stages, microbatches, policy):
            acts += _forward(k, mb, transfers) if what == "F" else _backward(k, mb, transfers)
        acts.append(TrainAction(TKind.REDUCE))
        out.append(tuple(acts))
    schedule = TrainSchedule(policy, microbatches, tuple(out))
    execute_training(schedule)
    return schedule


# -- checking -------------------------------------------------------------------------------


def execute_training(schedule: TrainSchedule) -> list[tuple[int, TrainAction]]:
    """Run every stage's actions together (sends buffered, a RECV/GRECV blocks until the peer's
    SEND/GSEND); returns the global order, raises ScheduleError naming each blocked stage on
    a deadlock, or on a transfer received that nobody sends."""
    sent: set[tuple[str, int, int, int, int]] = set()  # (kind, src, dst, tag, mb)
    pcs = [0] * len(schedule.stages)
    trace: list[tuple[int, TrainAction]] = []
    pending = {TKind.RECV: "SEND", TKind.GRECV: "GSEND"}
    while any(pc < len(acts) for pc, acts in zip(pcs, schedule.stages)):
        progress = False
        for k, acts in enumerate(schedule.stages):
            while pcs[k] < len(acts):
                a = acts[pcs[k]]
                if a.kind in pending and (pending[a.kind], a.peer, k, a.tag, a.mb) not in sent:
                    break
                if a.kind in (TKind.SEND, TKind.GSEND):
                    sent.add((a.kind.value, k, a.peer, a.tag, a.mb))
                trace.append((k, a))
                pcs[k] += 1
                progress = True
        if not progress:
            stuck = [
                f"stage {k} at action {pc} ({acts[pc]})"
                for k, (pc, acts) in enumerate(zip(pcs, schedule.stages))
                if pc < len(acts)
            ]
            raise ScheduleError(
                "the training schedule deadlocks: " + "; ".join(stuck)
                + ". A RECV needs the peer's SEND, a GRECV the peer's GSEND"
            )
    return trace


def in_flight(schedule: TrainSchedule, stage: int) -> int:
    """Peak count of microbatches whose forward ran on ``stage`` and whose backward has not."""
    live = peak = 0
    for a in schedule.stages[stage]:
        if a.kind is TKind.FORWARD:
            live += 1
            peak = max(peak, live)
        elif a.kind is TKind.BACKWARD:
            live -= 1
    return peak
