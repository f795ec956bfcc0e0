"""The adapter's plan set: the planner's Pareto set, widened with plans that compose well.

The planner returns plans compliant under the conditions it was given; the adapter needs
plans it can *mix* when those conditions change. Two cheap, exact additions:

* **single-device plans** (the whole model on one device, where it fits in memory): they
  share no device with each other, so they run side by side, and they use no network, so a
  bandwidth drop does not touch them;
* **relabelings onto identical devices**: a plan on ``jetson0, jetson1`` runs unchanged on
  ``jetson2, jetson3`` when those boards have the same spec and the same kind of link (the
  planner names one representative of each symmetric choice). Copies on disjoint devices are
  what lets a mixture of one plan serve k times its load.

Every plan added is evaluated on the problem like the planner's own; the set stays small
(``max_plans``), planner plans first.

``planner_plans`` asks the planner twice when the QoE names an offered load: for plans that
serve that load alone (the load as a throughput floor; what re-planning from scratch would
deploy) and for the plain QoE (plans that are better at less load, to mix).

``plan_set`` is what an adapter starts with: the planner's plans for the conditions now and
for the changes it should ride out without re-planning (``anticipated_conditions``: the
links at half and a quarter of their bandwidth, twice the load, each device gone), the best
few of each, widened as above. Those solves happen once, before deployment; a change the set
anticipated then costs a re-composition (milliseconds), not a re-plan (the plan a re-plan
would find for it is already in the set).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING

from ..analysis.evaluate import evaluate
from ..analysis.problem import Problem
from ..cost_models.cluster import Cluster
from ..ir.plan import Plan, Stage

if TYPE_CHECKING:
    from .traces import Conditions

__all__ = [
    "adapter_plans",
    "anticipated_conditions",
    "plan_set",
    "planner_plans",
    "single_device_plans",
    "relabelings",
]

ANTICIPATED_BANDWIDTH = (0.5, 0.25)
ANTICIPATED_LOAD = 2.0
PLANS_PER_CONDITION = 3


def planner_plans(problem: Problem) -> list[Plan]:
    """The planner's plans for ``problem``: first those that serve its offered load alone
    (named ``load-...``), then those for its QoE as stated; [] when neither solve finds one."""
    from ..errors import InfeasibleQoEError
    from ..planner import solve

    qoe, found = problem.qoe, []
    if qoe.request_rate_rps and (qoe.throughput_rps or 0.0) < qoe.request_rate_rps:
        floor = replace(problem, qoe=replace(qoe, throughput_rps=qoe.request_rate_rps))
        with suppress(InfeasibleQoEError):
            found += [replace(p, name=f"load-{p.name}") for p in solve(floor).plans]
    with suppress(InfeasibleQoEError):
        found += list(solve(problem).plans)
    return found


def single_device_plans(problem: Problem) -> list[Plan]:
    """One plan per device that holds the whole model."""
    n = len(problem.blocks)
    plans = []
    for name in problem.cluster.device_names:
        plan = Plan(f"solo-{name}", (Stage(0, 0, n, (name,)),), batch=problem.batch)
        if evaluate(plan, problem).memory_ok:
            plans.append(plan)
    return plans


def _signature(cluster: Cluster, name: str) -> str:
    device = cluster.device(name)
    link = cluster.network.link(name)
    return repr((replace(device, name="_"), replace(link, device="_")))


def relabelings(plan: Plan, cluster: Cluster, limit: int = 8) -> list[Plan]:
    """Copies of ``plan`` on disjoint sets of devices identical to its own (same spec, same
    link), greedily, up to ``limit``; the plan itself is not included."""
    classes: dict[str, list[str]] = {}
    for name in cluster.device_names:
        classes.setdefault(_signature(cluster, name), []).append(name)
    used = set(plan.devices)
    copies: list[Plan] = []
    while len(copies) < limit:
        mapping: dict[str, str] = {}
        for name in dict.fromkeys(plan.devices):
            pool = classes[_signature(cluster, name)]
            free = [d for d in pool if d not in used and d not in mapping.values()]
            if not free:
                return copies
            mapping[name] = free[0]
        used |= set(mapping.values())
        stages = tuple(
            replace(s, devices=tuple(mapping[d] for d in s.devices)) for s in plan.stages
        )
        suffix = "+".join(mapping[d] for d in dict.fromkeys(plan.devices))
        copies.append(replace(plan, name=f"{plan.name}@{suffix}", stages=stages))
    return copies


def adapter_plans(
    plans: Sequence[Plan], problem: Problem, *, max_plans: int = 16, solo: bool = True
) -> list[Plan]:
    """The planner's ``plans``, then single-device plans, then relabelings of both onto
    identical devices; duplicates (same stages on the same devices) dropped."""
    chosen: list[Plan] = []
    seen: set[tuple[tuple[int, int, tuple[str, ...]], ...]] = set()

    def add(plan: Plan) -> None:
        key = tuple((s.block_start, s.block_stop, s.devices) for s in plan.stages)
        if key not in seen and len(chosen) < max_plans:
            seen.add(key)
            chosen.append(plan)

    base = list(plans) + (single_device_plans(problem) if solo else [])
    for plan in base:
        add(plan)
    for plan in base:
        for copy in relabelings(plan, problem.cluster):
            add(copy)
    return chosen


def anticipated_conditions(problem: Problem) -> dict[str, Conditions]:
    """The changes ``plan_set`` prepares for, by a short tag: ``bw0.5``, ``bw0.25``, ``load2x``
    (when the QoE names a load) and ``no-DEVICE`` for each device (clusters of two or more)."""
    from .traces import Conditions

    qoe = problem.qoe
    rate = qoe.request_rate_rps or qoe.throughput_rps or 1.0
    out = {f"bw{f:g}": Conditions(rate, bandwidth_factor=f) for f in ANTICIPATED_BANDWIDTH}
    if qoe.request_rate_rps:
        out[f"load{ANTICIPATED_LOAD:g}x"] = Conditions(ANTICIPATED_LOAD * rate)
    names = problem.cluster.device_names
    if len(names) > 1:
        out.update({f"no-{d}": Conditions(rate, absent=frozenset({d})) for d in names})
    return out


def plan_set(problem: Problem, *, anticipate: bool = True, max_plans: int = 32) -> list[Plan]:
    """The adapter's starting plan set for ``problem`` (see the module docstring)."""
    from .traces import apply

    plans = planner_plans(problem)
    if anticipate:
        for tag, conditions in anticipated_conditions(problem).items():
            found = planner_plans(apply(problem, conditions))[:PLANS_PER_CONDITION]
            plans += [replace(p, name=f"{tag}-{p.name}") for p in found]
    return adapter_plans(plans, problem, max_plans=max_plans)
