"""Scenario traces: what changes, and when, while a deployment serves requests.

A trace is the starting load plus time-stamped events; its text form round-trips::

    trace bandwidth_drop scenario=smart_home duration_s=30.0 rate_rps=25.0
    at 10.0 bandwidth factor=0.25
    at 12.0 leave device=phone
    at 20.0 join device=phone
    at 25.0 load rate_rps=50.0

``bandwidth`` scales every link of the network (relative to the start, not to the previous
event); ``leave`` / ``join`` take a device out of / back into the cluster; ``load`` sets the
offered request rate. ``segments()`` cuts the trace at its change points into spans of
constant ``Conditions``, which ``apply`` turns into the ``Problem`` as it is during the span:
the simulator replays a trace that way (``adapter.replay``), and the emulated distributed run
turns a ``leave`` into a killed rank.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..analysis.problem import Problem
from ..errors import PlanError
from ..ir.plan import parse_fields

__all__ = ["Event", "Conditions", "Trace", "apply", "builtin_traces"]

EventKind = Literal["bandwidth", "leave", "join", "load"]
_KINDS = ("bandwidth", "leave", "join", "load")


@dataclass(frozen=True)
class Event:
    at_s: float
    kind: EventKind
    device: str | None = None
    factor: float | None = None
    rate_rps: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise PlanError(f"trace event kind must be one of {_KINDS}, got {self.kind!r}")
        if self.at_s < 0:
            raise PlanError(f"trace event time must be >= 0, got {self.at_s!r}")
        need = {"bandwidth": "factor", "leave": "device", "join": "device", "load": "rate_rps"}
        key = need[self.kind]
        if getattr(self, key) is None:
            raise PlanError(f"a {self.kind!r} event needs {key}=..., got none at {self.at_s} s")
        for name in ("factor", "rate_rps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise PlanError(f"trace event {name} must be positive, got {value!r}")

    def to_text(self) -> str:
        value = {
            "bandwidth": f"factor={self.factor!r}",
            "leave": f"device={self.device}",
            "join": f"device={self.device}",
            "load": f"rate_rps={self.rate_rps!r}",
        }[self.kind]
        return shlex.join(["at", repr(float(self.at_s)), self.kind, value])

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class Conditions:
    """The state of the deployment during one span of a trace."""

    request_rate_rps: float
    bandwidth_factor: float = 1.0
    absent: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> str:
        parts = [f"load {self.request_rate_rps:g} req/s"]
        if self.bandwidth_factor != 1.0:
            parts.append(f"bandwidth x{self.bandwidth_factor:g}")
        if self.absent:
            parts.append("without " + ",".join(sorted(self.absent)))
        return ", ".join(parts)


@dataclass(frozen=True)
class Trace:
    name: str
    duration_s: float
    request_rate_rps: float
    events: tuple[Event, ...] = ()
    scenario: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(sorted(self.events, key=lambda e: e.at_s)))
        if self.duration_s <= 0 or self.request_rate_rps <= 0:
            raise PlanError(
                f"trace {self.name!r}: duration_s and rate_rps must be positive, got "
                f"{self.duration_s!r} and {self.request_rate_rps!r}"
            )
        late = [e for e in self.events if e.at_s >= self.duration_s]
        if late:
            raise PlanError(
                f"trace {self.name!r}: event at {late[0].at_s} s is past the end "
                f"({self.duration_s} s)"
            )

    def conditions_at(self, t_s: float) -> Conditions:
        state = Conditions(self.request_rate_rps)
        for event in self.events:
            if event.at_s > t_s:
                break
            state = _step(state, event)
        return state

    def segments(self) -> list[tuple[float, float, Conditions]]:
        """Spans ``(start_s, end_s, conditions)`` of constant conditions, in order."""
        cuts = sorted({0.0, *(e.at_s for e in self.events)})
        ends = cuts[1:] + [self.duration_s]
        return [(a, b, self.conditions_at(a)) for a, b in zip(cuts, ends, strict=True) if b > a]

    # -- text / JSON -------------------------------------------------------------------------

    def to_text(self) -> str:
        head = ["trace", self.name]
        if self.scenario:
            head.append(f"scenario={self.scenario}")
        head += [
            f"duration_s={float(self.duration_s)!r}",
            f"rate_rps={float(self.request_rate_rps)!r}",
        ]
        return "\n".join([shlex.join(head)] + [e.to_text() for e in self.events])

    @classmethod
    def from_text(cls, text: str) -> Trace:
        lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("#")]
        if not lines or not lines[0].startswith("trace "):
            raise PlanError("a trace text starts with 'trace NAME duration_s=... rate_rps=...'")
        head = shlex.split(lines[0])
        fields = parse_fields(head[2:], lines[0])
        events = []
        for line in lines[1:]:
            tokens = shlex.split(line)
            if len(tokens) != 4 or tokens[0] != "at":
                raise PlanError(f"expected 'at TIME KIND key=value', got {line!r}")
            values = parse_fields(tokens[3:], line)
            events.append(
                Event(
                    at_s=float(tokens[1]),
                    kind=tokens[2],  # type: ignore[arg-type]  # checked by Event
                    device=values.get("device"),
                    factor=float(values["factor"]) if "factor" in values else None,
                    rate_rps=float(values["rate_rps"]) if "rate_rps" in values else None,
                )
            )
        return cls(
            name=head[1],
            duration_s=float(fields["duration_s"]),
            request_rate_rps=float(fields["rate_rps"]),
            events=tuple(events),
            scenario=fields.get("scenario", ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scenario": self.scenario,
            "duration_s": self.duration_s,
            "rate_rps": self.request_rate_rps,
            "events": [e.to_json() for e in self.events],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trace:
        return cls(
            name=data["name"],
            duration_s=float(data["duration_s"]),
            request_rate_rps=float(data["rate_rps"]),
            events=tuple(Event(**e) for e in data.get("events", ())),
            scenario=data.get("scenario", ""),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def loads(cls, text: str) -> Trace:
        return cls.from_json(json.loads(text))


def _step(state: Conditions, event: Event) -> Conditions:
    if event.kind == "bandwidth":
        assert event.factor is not None
        return replace(state, bandwidth_factor=event.factor)
    if event.kind == "load":
        assert event.rate_rps is not None
        return replace(state, request_rate_rps=event.rate_rps)
    assert event.device is not None
    if event.kind == "leave":
        return replace(state, absent=state.absent | {event.device})
    return replace(state, absent=state.absent - {event.device})


def apply(problem: Problem, conditions: Conditions) -> Problem:
    """``problem`` as it is under ``conditions``: devices gone, links scaled, load set."""
    cluster = problem.cluster
    for name in sorted(conditions.absent):
        if name in cluster:
            cluster = cluster.without_device(name)
    if conditions.bandwidth_factor != 1.0:
        cluster = cluster.with_network(cluster.network.scaled(conditions.bandwidth_factor))
    rate = conditions.request_rate_rps
    floor = problem.qoe.throughput_rps
    qoe = replace(
        problem.qoe,
        request_rate_rps=rate,
        throughput_rps=None if floor is None else min(floor, rate),
    )
    # a source or sink that left takes its role along: requests then enter at the first stage
    ends = {r: getattr(problem, r) for r in ("source", "sink")}
    ends = {r: (d if d in cluster else None) for r, d in ends.items()}
    qoe = replace(qoe, **ends)
    return replace(problem, cluster=cluster, qoe=qoe, **ends)


def builtin_traces() -> dict[str, Trace]:
    """The three acceptance traces (issue 7)."""
    return {
        "bandwidth_drop": Trace(
            "bandwidth_drop", 30.0, 100.0, (Event(10.0, "bandwidth", factor=0.25),), "smart_home"
        ),
        "device_leave": Trace(
            "device_leave",
            30.0,
            60.0,
            (Event(10.0, "leave", device="edge_server"),),
            "traffic_analytics",
        ),
        "load_double": Trace(
            "load_double", 30.0, 10.0, (Event(10.0, "load", rate_rps=20.0),), "edge_cluster"
        ),
    }
