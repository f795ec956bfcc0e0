"""Trace replay on the simulator: three ways to ride out the same changes.

The trace is cut at its change points (``Trace.segments``); each strategy adds its own switch
moments, and every resulting span is simulated under that span's conditions:

* **static** — the planner's best plan for the starting conditions, never changed (a plan
  that lost a device serves nothing; its surviving devices idle);
* **replan** — on each change, once it is *detected*, the partitioner solves the new problem
  from scratch; its measured solve time is a gap during which the old plan keeps running;
* **adapter** — on each detected change, the composition is re-decided (its measured
  decision time is the gap); when no composition meets the QoE, it re-plans as above in the
  background while the best-effort composition serves.

Detection is the same for both reacting strategies and comes from ``Monitor``: a device that
leaves is missed after the heartbeat timeout; a load change shows in the moving average of
inter-arrival times; a bandwidth change shows only to a strategy whose plans move data
(the moving average of measured transfer rates), after as many requests as the average
needs to cross the threshold.

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
from dataclasses import dataclass, field, replace
from typing import Any

from ..analysis.problem import Problem
from ..errors import InfeasibleQoEError
from ..ir.plan import Plan
from ..planner import solve
from ..sim import SimConfig, simulate
from .compose import sharing_wait_s
from .core import Adapter
from .monitor import Monitor
from .traces import Conditions, Event, Trace, apply

__all__ = ["SpanResult", "StrategyResult", "replay", "detection_delay_s", "run_span"]

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


def _best_plan(problem: Problem) -> tuple[Plan | None, float]:
    """The partitioner's best plan for ``problem`` (load as a throughput floor), timed; with
    no compliant plan, the best effort without the floor."""
    import time

    started = time.perf_counter()
    rate = problem.qoe.request_rate_rps
    try:
        plan: Plan | None = solve(
            replace(problem, qoe=replace(problem.qoe, throughput_rps=rate))
        ).best
    except InfeasibleQoEError:
        try:
            plan = solve(problem).best
        except InfeasibleQoEError:
            plan = None
    return plan, time.perf_counter() - started


_Switch = tuple[float, dict[str, float], dict[str, Plan], tuple[str, ...]]


def _spans(
    trace: Trace, switches: list[_Switch]
) -> list[tuple[float, float, Conditions, dict[str, float], dict[str, Plan], tuple[str, ...]]]:
    """Intersect the trace's segments with a strategy's switch moments."""
    cuts = sorted({0.0, trace.duration_s, *(a for a, _, _ in trace.segments()),
                   *(t for t, *_ in switches if t < trace.duration_s)})  # fmt: skip
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        active = [s for s in switches if s[0] <= a][-1]
        out.append((a, b, trace.conditions_at(a), active[1], active[2], active[3]))
    return out


def replay(
    trace: Trace,
    problem: Problem,
    *,
    monitor: Monitor | None = None,
    adapter_plans_: list[Plan] | None = None,
) -> dict[str, StrategyResult]:
    """Replay ``trace`` on ``problem`` (its QoE: latency SLO and objective) three ways."""
    monitor = monitor or Monitor()
    first = trace.conditions_at(0.0)
    start_problem = apply(problem, first)
    results: dict[str, StrategyResult] = {}

    # (a) static
    best, solve_s = _best_plan(start_problem)
    static = StrategyResult("static", notes=[f"plan {best.name if best else None}"])
    if best is not None:
        switches: list[_Switch] = [
            (0.0, {best.name: first.request_rate_rps}, {best.name: best}, ())
        ]
        for a, b, cond, rates, plans, _ in _spans(trace, switches):
            alive = all(d not in cond.absent for d in best.devices)
            idle = () if alive else tuple(d for d in best.devices if d not in cond.absent)
            rates = {best.name: cond.request_rate_rps} if alive else {}
            static.spans.append(run_span(plans, rates, problem, cond, a, b, idle))
    results["static"] = static

    # (b) re-plan from scratch on each detected change
    replan = StrategyResult("replan")
    current = best
    switch_list: list[_Switch] = [(0.0, _single(current, first), _named(current), ())]
    previous = first
    for event in trace.events:
        cond = trace.conditions_at(event.at_s)
        uses_net = current is not None and _uses_network(current, apply(problem, previous))
        detect = detection_delay_s(event, previous, uses_net, monitor)
        previous = cond
        if not math.isfinite(detect):
            continue
        plan, solve_s = _best_plan(apply(problem, cond))
        replan.notes.append(
            f"t={event.at_s:g}s {event.kind}: detected after {detect:.3f} s, solved in "
            f"{solve_s:.3f} s -> {plan.name if plan else None}"
        )
        at = event.at_s + detect + solve_s
        dead_old = current is not None and any(d in cond.absent for d in current.devices)
        if dead_old and current is not None:
            idle = tuple(d for d in current.devices if d not in cond.absent)
            switch_list.append((event.at_s, {}, {}, idle))
        current = plan
        switch_list.append((at, _single(current, cond), _named(current), ()))
    for a, b, cond, rates, plans, idle in _spans(trace, sorted(switch_list, key=lambda s: s[0])):
        rates = {p: cond.request_rate_rps for p in rates}  # a single plan takes the whole load
        replan.spans.append(run_span(plans, rates, problem, cond, a, b, idle))
    results["replan"] = replan

    # (c) the adapter
    adapter_result = StrategyResult("adapter")
    adapter = Adapter(start_problem, adapter_plans_ or [])
    comp = adapter.decide(first)
    known = {p.name: p for p in adapter.plans}
    adapter_switches: list[_Switch] = [(0.0, comp.used, dict(known), ())]
    decisions = [comp.decision_s]
    previous = first
    for event in trace.events:
        cond = trace.conditions_at(event.at_s)
        used_plans = [known[p] for p in comp.used]
        uses_net = any(_uses_network(p, apply(problem, previous)) for p in used_plans)
        detect = detection_delay_s(event, previous, uses_net, monitor)
        previous = cond
        if not math.isfinite(detect):
            adapter_result.notes.append(
                f"t={event.at_s:g}s {event.kind}: not visible to the plans in use (no transfers); "
                "nothing to do"
            )
            continue
        t = event.at_s + detect
        comp = adapter.decide(cond)
        decisions.append(comp.decision_s)
        t += comp.decision_s
        note = (
            f"t={event.at_s:g}s {event.kind}: detected after {detect:.3f} s, re-composed in "
            f"{1e3 * comp.decision_s:.2f} ms -> "
            + ", ".join(f"{p} {r:.2f}" for p, r in comp.used.items())
        )
        if not comp.feasible:
            adapter_switches.append((t, comp.used, dict(known), ()))
            _, solve_s = adapter.replan(cond)
            comp = adapter.decide(cond)
            known.update({p.name: p for p in adapter.plans})
            t += solve_s
            note += f"; no composition met the QoE: re-planned in the background ({solve_s:.3f} s)"
        adapter_switches.append((t, comp.used, dict(known), ()))
        adapter_result.notes.append(note)
    for a, b, cond, rates, plans, idle in _spans(
        trace, sorted(adapter_switches, key=lambda s: s[0])
    ):
        adapter_result.spans.append(
            run_span(plans, _scaled(rates, cond), problem, cond, a, b, idle)
        )
    adapter_result.notes.append("decision ms: " + ", ".join(f"{1e3 * d:.2f}" for d in decisions))
    results["adapter"] = adapter_result
    return results


def _scaled(rates: Mapping[str, float], cond: Conditions) -> dict[str, float]:
    """Before a re-decision, the router keeps its weights: the load splits by them."""
    total = sum(rates.values())
    if total <= 0:
        return {}
    return {p: r / total * cond.request_rate_rps for p, r in rates.items()}


def _single(plan: Plan | None, cond: Conditions) -> dict[str, float]:
    return {} if plan is None else {plan.name: cond.request_rate_rps}


def _named(plan: Plan | None) -> dict[str, Plan]:
    return {} if plan is None else {plan.name: plan}


def _uses_network(plan: Plan, problem: Problem) -> bool:
    from ..analysis.work import plan_work

    if any(d not in problem.cluster for d in plan.devices):
        return False
    work = plan_work(plan, problem)
    transfers = [t for s in work.stages for t in s.inputs] + list(work.outputs)
    return any(t.src != t.dst and t.nbytes > 0 for t in transfers)
