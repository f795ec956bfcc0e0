"""A plan's figures under the conditions now (``plan_figures``: latency, seconds of every
device and network resource per request, dynamic energy per request) and the utilization it
may run at under the arrivals' queueing model (``headroom``: ``PERIODIC_CAP``,
``POISSON_CAP``): what the composition program (``compose_program``) is written over."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..analysis.evaluate import evaluate, resource_busy_s
from ..analysis.problem import Problem
from ..analysis.work import plan_work
from ..errors import PlanError
from ..ir.plan import Plan

__all__ = ["PlanFigures", "plan_figures", "headroom", "PERIODIC_CAP", "POISSON_CAP"]

PERIODIC_CAP = 0.98  # periodic arrivals: a margin for measurement noise only
POISSON_CAP = 0.9  # random arrivals: queueing grows without bound near 1
DEFAULT_UTILIZATION_CAP = PERIODIC_CAP
Arrivals = Literal["periodic", "poisson"]


def headroom(latency_s: float, bottleneck_s: float, slo_s: float | None, arrivals: str) -> float:
    """The utilization a plan may run at: its queueing delay (``arrivals``' model) must fit in
    the SLO's slack ``slo_s - latency_s``."""
    if arrivals == "periodic":
        return PERIODIC_CAP
    if arrivals != "poisson":
        raise PlanError(f"arrivals must be 'periodic' or 'poisson', got {arrivals!r}")
    if slo_s is None or bottleneck_s <= 0:
        return POISSON_CAP
    slack = max(slo_s - latency_s, 0.0)
    return min(POISSON_CAP, 2 * slack / (bottleneck_s + 2 * slack))


@dataclass(frozen=True)
class PlanFigures:
    """One plan under the conditions now. ``busy_s``: seconds per request on each resource
    (``device:NAME`` or a network resource such as ``air:wifi5``); ``dynamic_j``: energy per
    request above the devices' idle power (busy - idle power times busy time, plus radio)."""

    name: str
    latency_s: float
    busy_s: dict[str, float]
    dynamic_j: float
    alive: bool = True
    missing: tuple[str, ...] = ()

    @property
    def devices(self) -> list[str]:
        return [r.split(":", 1)[1] for r in self.busy_s if r.startswith("device:")]

    @property
    def bottleneck_s(self) -> float:
        """Seconds per request on the plan's busiest resource."""
        return max(self.busy_s.values(), default=0.0)

    @property
    def capacity_rps(self) -> float:
        worst = self.bottleneck_s
        return math.inf if worst <= 0 else 1.0 / worst


def plan_figures(plan: Plan, problem: Problem) -> PlanFigures:
    """``plan``'s figures on ``problem`` (the cluster as it is now); a plan that names a device
    the cluster lost is not alive."""
    missing = tuple(sorted({d for d in plan.devices if d not in problem.cluster}))
    if missing:
        return PlanFigures(plan.name, math.inf, {}, math.inf, alive=False, missing=missing)
    metrics = evaluate(plan, problem, request_rate_rps=None)
    network = problem.cluster.network
    busy = {f"device:{d}": s for d, s in metrics.busy_s.items()}
    busy.update(resource_busy_s(network, plan_work(plan, problem)))
    dynamic = sum(metrics.energy.radio_j.values())
    for name, seconds in metrics.busy_s.items():
        device = problem.cluster.device(name)
        dynamic += (device.busy_power_w - device.idle_power_w) * seconds
    return PlanFigures(plan.name, metrics.latency_s, busy, dynamic)


