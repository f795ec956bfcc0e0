"""What a simulation run returns: figures and the timeline of every compute and transfer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cost_models.energy import EnergyBreakdown
from .events import ComputeEvent, FlowEvent
from .timeline import chrome_trace, write_chrome_trace, write_gantt_png

if TYPE_CHECKING:
    from .config import SimConfig

__all__ = ["ComputeEvent", "FlowEvent", "SimResult"]


@dataclass
class SimResult:
    plan_name: str
    config: SimConfig
    latencies_s: list[float]
    makespan_s: float
    busy_s: dict[str, float]
    energy: EnergyBreakdown
    peak_memory_bytes: dict[str, float]
    compute_events: list[ComputeEvent] = field(default_factory=list)
    flow_events: list[FlowEvent] = field(default_factory=list)
    medium_of: dict[str, str] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    @property
    def latency_p50_s(self) -> float:
        return float(np.percentile(self.latencies_s, 50))

    @property
    def latency_p95_s(self) -> float:
        return float(np.percentile(self.latencies_s, 95))

    @property
    def latency_mean_s(self) -> float:
        return float(np.mean(self.latencies_s))

    @property
    def throughput_rps(self) -> float:
        """Requests completed per second over the run (first arrival to last completion)."""
        return self.requests / self.makespan_s if self.makespan_s > 0 else float("inf")

    @property
    def energy_j(self) -> float:
        """Energy per request: the plan's devices over the whole run, plus radio, / requests."""
        return self.energy.total_j / self.requests

    @property
    def utilization(self) -> dict[str, float]:
        span = self.makespan_s
        return {d: (b / span if span > 0 else 0.0) for d, b in self.busy_s.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan_name,
            "requests": self.requests,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
            "latency_mean_s": self.latency_mean_s,
            "throughput_rps": self.throughput_rps,
            "energy_j": self.energy_j,
            "makespan_s": self.makespan_s,
            "utilization": self.utilization,
            "peak_memory_bytes": dict(self.peak_memory_bytes),
            "energy_per_device_j": {
                k: v / self.requests for k, v in self.energy.per_device_j().items()
            },
        }

    def summary(self) -> str:
        lines = [
            f"plan {self.plan_name}: {self.requests} requests, makespan {self.makespan_s:.4g} s",
            f"  latency p50 {self.latency_p50_s * 1e3:.3f} ms, p95 {self.latency_p95_s * 1e3:.3f} ms",
            f"  throughput {self.throughput_rps:.4g} req/s, energy {self.energy_j:.4g} J/request",
            f"  {'device':<14} {'util':>6} {'peak memory MB':>15} {'J/request':>10}",
        ]
        per_device = self.energy.per_device_j()
        for name, util in self.utilization.items():
            lines.append(
                f"  {name:<14} {util:>6.1%} {self.peak_memory_bytes[name] / 1e6:>15.1f} "
                f"{per_device.get(name, 0.0) / self.requests:>10.4g}"
            )
        return "\n".join(lines)

    def chrome_trace(self) -> dict[str, Any]:
        return chrome_trace(self)

    def write_chrome_trace(self, path: str | Path) -> Path:
        return write_chrome_trace(self, path)

    def write_gantt_png(self, path: str | Path, max_requests: int = 20) -> Path:
        return write_gantt_png(self, path, max_requests)
