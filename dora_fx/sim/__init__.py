"""Discrete-event simulation of plans: the single source of predicted latency (p50/p95),
throughput, energy, utilization, peak memory, and timelines (Gantt PNG, Chrome trace)."""

from .config import SimConfig
from .events import ComputeEvent, FlowEvent
from .result import SimResult
from .simulator import simulate

__all__ = [
    "ComputeEvent",
    "FlowEvent",
    "SimConfig",
    "SimResult",
    "simulate",
]
