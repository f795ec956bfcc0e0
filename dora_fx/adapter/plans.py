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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..cost_models.cluster import Cluster
from ..evaluate import evaluate
from ..ir import Plan, Stage
from ..problem import Problem

__all__ = ["adapter_plans", "single_device_plans", "relabelings"]


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
