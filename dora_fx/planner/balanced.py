"""Pass 4, partition: choose a plan for the block chain. Pure: ``Problem -> Plan``.

Spine partitioner, labelled as such: **balanced by FLOPs**. Stage k gets a share of the model's
FLOPs proportional to its device's dense FLOP/s; devices are taken in cluster order. It ignores
the network, memory and the QoE; the QoE-aware solver (convex relaxation, Pareto set, certified
gap) replaces it.
"""

from __future__ import annotations

import numpy as np

from ..analysis.problem import Problem
from ..errors import PlanError
from ..ir.plan import Plan, Stage

__all__ = ["balanced_flops_plan", "check_plan", "BALANCED_FLOPS"]

BALANCED_FLOPS = "balanced-flops"


def balanced_flops_plan(problem: Problem, num_stages: int | None = None) -> Plan:
    devices = problem.cluster.devices
    num_stages = len(devices) if num_stages is None else num_stages
    if not isinstance(num_stages, int) or num_stages < 1:
        raise PlanError(f"num_stages must be a positive int, got {num_stages!r}")
    if num_stages > len(devices):
        raise PlanError(
            f"asked for {num_stages} stages but the cluster has {len(devices)} devices "
            f"({', '.join(d.name for d in devices)}); each stage needs its own device: ask for at "
            f"most {len(devices)} stages or add devices"
        )
    blocks = problem.blocks
    if num_stages > len(blocks):
        raise PlanError(
            f"asked for {num_stages} stages but the model coarsened into {len(blocks)} blocks; "
            f"ask for at most {len(blocks)} stages"
        )
    chosen = devices[:num_stages]
    speeds = np.array([d.dense_flops_per_s for d in chosen])
    targets = np.cumsum(speeds)[:-1] / speeds.sum()
    # +1 per block so FLOP-free blocks still spread; the share targets are cumulative.
    work = np.cumsum(np.array([b.flops for b in blocks]) + 1e-9 * (1 + sum(b.flops for b in blocks)))
    fractions = work / work[-1]
    bounds = [0]
    for k, target in enumerate(targets):
        stop = int(np.searchsorted(fractions, target)) + 1
        # leave at least one block for each remaining stage, and take at least one
        stop = min(max(stop, bounds[-1] + 1), len(blocks) - (num_stages - 1 - k))
        bounds.append(stop)
    bounds.append(len(blocks))
    stages = tuple(
        Stage(k, start, stop, (device.name,))
        for k, (start, stop, device) in enumerate(zip(bounds[:-1], bounds[1:], chosen))
    )
    return Plan(BALANCED_FLOPS, stages, batch=problem.batch)


def check_plan(plan: Plan, problem: Problem) -> Plan:
    """A plan given by the user must cover this problem's blocks and name its devices, each at
    most once."""
    if plan.num_blocks != len(problem.blocks):
        raise PlanError(
            f"plan {plan.name!r} covers {plan.num_blocks} blocks but this model has "
            f"{len(problem.blocks)} (with this max_blocks); write the plan for "
            f"blocks 0:{len(problem.blocks)}"
        )
    known = set(problem.cluster.device_names)
    used = plan.devices
    unknown = sorted(set(used) - known)
    if unknown:
        raise PlanError(
            f"plan {plan.name!r} uses devices {unknown} that are not in cluster "
            f"{problem.cluster.name!r} ({', '.join(problem.cluster.device_names)})"
        )
    repeated = sorted({d for d in used if used.count(d) > 1})
    if repeated:
        raise PlanError(f"plan {plan.name!r} puts devices {repeated} in more than one stage")
    return plan
