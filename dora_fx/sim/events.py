"""The timeline a simulation records: one event per compute task and per transfer."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ComputeEvent", "FlowEvent"]


class ComputeEvent(NamedTuple):
    device: str
    start_s: float
    end_s: float
    request: int
    microbatch: int
    stage: int


class FlowEvent(NamedTuple):
    """A transfer: bits leave ``src`` over ``[start_s, end_s)`` and are all at ``dst`` at
    ``arrive_s`` (``end_s`` + path latency). ``to_stage`` is past the last stage for the sink."""

    src: str
    dst: str
    start_s: float
    end_s: float
    arrive_s: float
    request: int
    microbatch: int
    to_stage: int
    nbytes: float
