"""Latency, bottleneck and energy of a path of stage options, from the dense tables: the same
figures ``evaluate`` gives for one microbatch, without building a Plan (the search scores
thousands of neighbours this way; every plan it returns is scored again by ``evaluate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..qoe import QoE
from .dp import Dense, Stages

__all__ = ["PathMetrics", "measure_path"]


@dataclass(frozen=True)
class PathMetrics:
    latency_s: float
    bottleneck_s: float  # 1 / throughput
    energy_j: float

    @property
    def throughput_rps(self) -> float:
        return math.inf if self.bottleneck_s <= 0 else 1.0 / self.bottleneck_s

    def value(self, objective: str) -> float:
        """The minimized figure of ``objective`` (throughput as the bottleneck time)."""
        return {
            "latency": self.latency_s,
            "throughput": self.bottleneck_s,
            "energy": self.energy_j,
        }[objective]


def measure_path(d: Dense, stages: Stages, qoe: QoE, contention: np.ndarray) -> PathMetrics:
    """Exact one-microbatch metrics of ``stages`` (``(start, stop, group)``, in order)."""
    first = stages[0][2]
    latency = d.scatter_s[first]
    busy_j = d.scatter_radio_j[first]
    idle_w = 0.0
    terms = [d.scatter_port_s[first]]
    air = d.scatter_air_s[:, first].copy()
    flows = d.scatter_air_flows[:, first].copy()
    for k, (a, b, g) in enumerate(stages):
        compute = d.compute_s[g, a, b]
        latency += compute
        busy_j += d.busy_energy_j[g, a, b]
        idle_w += d.idle_w[g]
        terms.append(compute)
        if k + 1 < len(stages):
            g2 = stages[k + 1][2]
            latency += d.move_s[g, g2, b]
            busy_j += d.move_radio_j[g, g2, b]
            terms.append(d.move_port_s[g, g2, b])
            up = d.move_first_up_s[g, g2, b] + (d.scatter_up_s[g] if k == 0 else 0.0)
            terms.append(up)
            air += d.move_air_s[:, g, g2, b]
            flows += d.move_air_flows[:, g, g2, b]
    last = stages[-1][2]
    latency += d.gather_s[last]
    busy_j += d.gather_radio_j[last]
    terms.append(d.gather_port_s[last])
    air += d.gather_air_s[:, last]
    flows += d.gather_air_flows[:, last]
    usable = np.where(flows > 1, contention, 1.0)
    terms += list(air / usable)
    bottleneck = float(max(terms))
    rate = qoe.request_rate_rps or qoe.throughput_rps
    if rate is None:
        period = latency
    else:
        capacity = math.inf if bottleneck <= 0 else 1.0 / bottleneck
        period = 1.0 / min(rate, capacity)
    return PathMetrics(float(latency), bottleneck, float(busy_j + idle_w * period))
