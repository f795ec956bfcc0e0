"""Spans of a trace replay (``replay``): one span simulated under its conditions, and what a
strategy's spans add up to.

A span of a mixture simulates each used plan on its own at its rate (``sim.simulate``,
periodic arrivals): exact for plans that share no device or medium. Where plans share a
device, a request may find the others' jobs in service there: each plan's p95 is charged,
on its most shared device, one job of every other plan using that device (its seconds per
request there) before it is compared with the SLO. Contention on a shared medium between
plans is not charged (the composition keeps media under the utilization cap). A span *violates* the QoE when some offered load is not routed, a plan
falls behind its arrivals, or a plan's p95 latency exceeds the SLO; its whole length then
counts as violation time. Energy of a span: every device that is on (used by a plan of the span,
or idling in a dead static plan) pays idle power for the span and busy power for its busy time,
plus radio energy; the queue left over by one span is not carried into the next.

Energy of a strategy: the library never drops a request, so the requests a strategy did not
serve in time (``unserved``: load not routed, load on a plan that lost a device, and the part a
plan falls behind) are still owed after the trace. ``StrategyResult.energy_j`` is the spans'
energy (``served_energy_j``) plus ``backlog_j``, the energy to serve that backlog at the
marginal J per request (busy power x busy seconds per request on each device, plus radio J per
request) of the strategy's last span that served anything. The totals then compare the same
work: every offered request served. ``backlog_j`` charges no idle power and assumes the last
serving plans can still drain it, so it is a lower bound on the true cost of catching up,
favourable to the strategy that fell behind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..analysis.problem import Problem
from ..ir.plan import Plan
from ..sim import SimConfig, simulate
from .compose import sharing_wait_s
from .monitor import Monitor
from .traces import Conditions, Event, apply

__all__ = ["MAX_SPAN_REQUESTS", "SpanResult", "StrategyResult", "detection_delay_s", "run_span"]

MAX_SPAN_REQUESTS = 400


@dataclass(frozen=True)
class SpanResult:
    start_s: float
    end_s: float
    conditions: Conditions
    rates_rps: dict[str, float]
    violated: bool
    energy_j: float
    served: float
    p95_s: float
    why: str = ""
    unserved: float = 0.0  # requests offered in the span but not served in it
    j_per_request: float = 0.0  # marginal J per served request (busy + radio; 0: none served)


@dataclass
class StrategyResult:
    name: str
    spans: list[SpanResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def violation_s(self) -> float:
        return sum(s.end_s - s.start_s for s in self.spans if s.violated)

    @property
    def served_energy_j(self) -> float:
        """The spans' energy: what serving ``served`` requests during the trace cost."""
        return sum(s.energy_j for s in self.spans)

    @property
    def served(self) -> float:
        return sum(s.served for s in self.spans)

    @property
    def unserved(self) -> float:
        """Requests offered during the trace and not served in it (still owed)."""
        return sum(s.unserved for s in self.spans)

    @property
    def offered(self) -> float:
        return self.served + self.unserved

    @property
    def drain_j_per_request(self) -> float:
        """Marginal J per request of the last span that served anything (inf: none did)."""
        serving = [s for s in self.spans if s.served > 0]
        return serving[-1].j_per_request if serving else math.inf

    @property
    def backlog_j(self) -> float:
        """Energy to serve the unserved requests after the trace, at
        ``drain_j_per_request`` (busy + radio, no idle power, and assuming the last serving
        plans can still drain it): a lower bound on the true cost of catching up, so
        favourable to the strategy that fell behind."""
        if self.unserved <= 0:
            return 0.0
        return self.unserved * self.drain_j_per_request

    @property
    def energy_j(self) -> float:
        """Energy to serve every offered request: ``served_energy_j + backlog_j``."""
        return self.served_energy_j + self.backlog_j

    def to_json(self) -> dict[str, Any]:
        return {
            "violation_s": self.violation_s,
            "energy_j": self.energy_j,
            "served_energy_j": self.served_energy_j,
            "backlog_j": self.backlog_j,
            "served": self.served,
            "unserved": self.unserved,
            "spans": [
                {
                    "start_s": s.start_s,
                    "end_s": s.end_s,
                    "rates_rps": s.rates_rps,
                    "violated": s.violated,
                    "energy_j": s.energy_j,
                    "served": s.served,
                    "unserved": s.unserved,
                    "j_per_request": s.j_per_request,
                    "p95_s": s.p95_s,
                    "why": s.why,
                }
                for s in self.spans
            ],  # fmt: skip
            "notes": self.notes,
        }


def detection_delay_s(
    event: Event, before: Conditions, uses_network: bool, monitor: Monitor
) -> float:
    """How long ``monitor`` takes to notice ``event`` (inf: it cannot, and need not)."""
    if event.kind == "leave":
        return monitor.heartbeat_timeout_s
    if event.kind == "join":
        return 0.0  # a device announces itself
    probe = Monitor(monitor.threshold, monitor.alpha, monitor.min_samples)
    if event.kind == "load":
        assert event.rate_rps is not None
        probe.rebase({"load": before.request_rate_rps})
        probe.observe_arrival(event.at_s)
        for i in range(1, 10_000):
            if probe.observe_arrival(event.at_s + i / event.rate_rps) is not None:
                return i / event.rate_rps
        return math.inf
    if not uses_network:
        return math.inf
    assert event.factor is not None
    probe.rebase({"link": before.bandwidth_factor})
    for i in range(1, 10_000):
        if probe.observe("link", event.factor) is not None:
            return i / before.request_rate_rps
    return math.inf


def run_span(
    plans: Mapping[str, Plan],
    rates: Mapping[str, float],
    problem: Problem,
    conditions: Conditions,
    start_s: float,
    end_s: float,
    idle_devices: tuple[str, ...] = (),
) -> SpanResult:
    """Simulate ``rates`` (plan -> req/s) over ``[start_s, end_s)`` under ``conditions``."""
    now = apply(problem, conditions)
    duration = end_s - start_s
    slo = problem.qoe.latency_s
    offered = conditions.request_rate_rps
    used = {p: r for p, r in rates.items() if r > 1e-9}
    reasons = []
    if sum(used.values()) < offered * (1 - 1e-3):
        reasons.append(f"{offered - sum(used.values()):.2f} req/s not routed")
    busy: dict[str, float] = {d: 0.0 for d in idle_devices if d in now.cluster}
    radio_j, served, p95 = 0.0, 0.0, 0.0
    sims = {}
    for name, rate in used.items():
        plan = plans[name]
        if any(d not in now.cluster for d in plan.devices):
            reasons.append(f"{name} lost a device")
            continue
        n = max(20, min(MAX_SPAN_REQUESTS, round(rate * duration)))
        config = SimConfig(requests=n, request_rate_rps=rate, record_timeline=False)
        sims[name] = simulate(plan, now, config)
    job_s = {
        name: {d: b / sim.requests for d, b in sim.busy_s.items()} for name, sim in sims.items()
    }
    for name, sim in sims.items():
        rate = used[name]
        achieved = min(rate, sim.throughput_rps)
        if sim.throughput_rps < rate * 0.97:
            reasons.append(f"{name} falls behind ({sim.throughput_rps:.2f} < {rate:.2f} req/s)")
        latency_p95_s = sim.latency_p95_s + sharing_wait_s(name, job_s)
        p95 = max(p95, latency_p95_s)
        if slo is not None and latency_p95_s > slo * (1 + 1e-6):
            reasons.append(f"{name} p95 {1e3 * latency_p95_s:.1f} ms > SLO")
        count = achieved * duration
        served += count
        for d, seconds in sim.busy_s.items():
            busy[d] = busy.get(d, 0.0) + seconds / sim.requests * count
        radio_j += sum(sim.energy.radio_j.values()) / sim.requests * count
    return SpanResult(
        start_s,
        end_s,
        conditions,
        dict(used),
        violated=bool(reasons),
        energy_j=_span_energy_j(now, busy, radio_j, duration),
        served=served,
        p95_s=p95,
        why="; ".join(reasons),
        unserved=_unserved(offered * duration, served),
        j_per_request=_marginal_j_per_request(now, busy, radio_j, served),
    )


def _span_energy_j(
    problem: Problem, busy_s: Mapping[str, float], radio_j: float, duration_s: float
) -> float:
    """Idle power over the span and busy power over the busy time of every device that is on,
    plus radio energy."""
    energy_j = radio_j
    for d, seconds in busy_s.items():
        device = problem.cluster.device(d)
        seconds = min(seconds, duration_s)
        energy_j += device.busy_power_w * seconds + device.idle_power_w * (duration_s - seconds)
    return energy_j


def _marginal_j_per_request(
    problem: Problem, busy_s: Mapping[str, float], radio_j: float, served: float
) -> float:
    """Busy + radio J per served request of the span's plans (no idle power; 0: none served)."""
    if served <= 0:
        return 0.0
    busy_j = sum(problem.cluster.device(d).busy_power_w * s for d, s in busy_s.items())
    return (busy_j + radio_j) / served


def _unserved(offered: float, served: float) -> float:
    """Offered minus served requests; a rounding-sized remainder counts as none."""
    missing = offered - served
    return missing if missing > 1e-9 * max(offered, 1.0) else 0.0


