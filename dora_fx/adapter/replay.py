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

How a span is simulated and what a strategy's energy counts: ``spans``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from ..analysis.problem import Problem
from ..errors import InfeasibleQoEError
from ..ir.plan import Plan
from ..planner import solve
from .core import Adapter
from .monitor import Monitor
from .spans import StrategyResult, detection_delay_s, run_span
from .traces import Conditions, Trace, apply

__all__ = ["replay"]


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
