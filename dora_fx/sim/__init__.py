"""Discrete-event simulation of plans: the single source of predicted latency (p50/p95),
throughput, energy, utilization, peak memory, and timelines (Gantt PNG, Chrome trace)."""

from .result import ComputeEvent, FlowEvent, SimResult
from .simulator import SimConfig, simulate
from .work import PlanWork, StageWork, Transfer, plan_work

__all__ = [
    "ComputeEvent",
    "FlowEvent",
    "PlanWork",
    "SimConfig",
    "SimResult",
    "StageWork",
    "Transfer",
    "plan_work",
    "simulate",
]
