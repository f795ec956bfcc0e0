"""Training baselines on the same cost model and simulator as the training planner, each
``Problem -> (Plan, policy, microbatches)``, and a comparison table.

* ``asteroid_training``: Asteroid (MobiCom'24)'s policy: hybrid stages of data-parallel groups
  (shares by speed) minimizing the slowest stage's forward + backward per microbatch (the
  min-max DP over the training tables, transfers left out as Asteroid's planner prices them
  apart), under memory with the microbatches in flight, run with 1F1B at the count that is
  fastest in the closed form.
* ``equal_layer_1f1b``: one stage per device in cluster order, equal block counts, 1F1B.
* ``best_single_device_training``: the fastest device alone that holds the whole iteration.
* ``data_parallel_all``: every device one data-parallel replica of the whole model (shares
  by speed), gradients ring-all-reduced.

Each gets the microbatch count (of 1, 2, 4, ... up to the batch) its closed form is fastest
at among those that fit memory, then one simulation (``sim.training``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..analysis.problem import Problem
from ..analysis.training import evaluate_training, splits_evenly
from ..ir.plan import Plan
from ..sim.training import simulate_training
from .baselines import equal_layer
from .dp import run_dp
from .space import GroupType, make_plan, plan_space
from .train_solve import microbatch_counts, solve_training
from .train_tables import train_base, train_tables

__all__ = ["TrainBaselineRow", "TRAINING_BASELINES", "compare_training"]


def _best_count(plan: Plan, problem: Problem, policy: str) -> tuple[int, float] | None:
    best: tuple[int, float] | None = None
    for m in microbatch_counts(problem):
        if not splits_evenly(plan, problem.batch, m):
            continue
        e = evaluate_training(plan, problem, microbatches=m, schedule=policy)
        if e.memory_ok and (best is None or e.iteration_s < best[1]):
            best = (m, e.iteration_s)
    return best


def asteroid_training(problem: Problem) -> Plan | None:
    space = plan_space(problem)
    base = train_base(problem, space)
    m = max(microbatch_counts(problem))
    tt = train_tables(problem, space, base, m)
    d = tt.d
    compute = np.where(tt.fits_all, d.compute_s, np.inf)
    moves = np.where(np.isfinite(d.move_s), 0.0, np.inf)
    result = run_dp(d, compute, moves, np.zeros(d.scatter_s.size), "max", np.zeros(d.scatter_s.size))
    if not np.isfinite(result.value).any():
        return None
    stages = result.paths(int(np.argmin(result.value)))
    return make_plan("asteroid-train", problem, space, [(a, b, space.groups[g]) for a, b, g in stages])


def equal_layer_1f1b(problem: Problem) -> Plan | None:
    plan = equal_layer(problem)
    return Plan("equal-layer-1f1b", plan.stages, batch=plan.batch)


def best_single_device_training(problem: Problem) -> Plan | None:
    space = plan_space(problem)
    best: tuple[float, Plan] | None = None
    for name in problem.cluster.device_names:
        counts = [0] * len(space.classes)
        for c in space.classes:
            if name in c.members:
                counts[c.index] = 1
        plan = make_plan("single", problem, space, [(0, len(problem.blocks), GroupType(tuple(counts)))])
        plan = Plan("best-single-device", plan.stages, batch=problem.batch)
        found = _best_count(plan, problem, "1f1b")
        if found is not None and (best is None or found[1] < best[0]):
            best = (found[1], plan)
    return None if best is None else best[1]


def data_parallel_all(problem: Problem) -> Plan | None:
    space = plan_space(problem)
    counts = tuple(c.size for c in space.classes)
    if sum(counts) > problem.batch:
        return None  # not every device gets a row
    plan = make_plan("dp", problem, space, [(0, len(problem.blocks), GroupType(counts))])
    return Plan("data-parallel-all", plan.stages, batch=problem.batch)


TRAINING_BASELINES: dict[str, Callable[[Problem], Plan | None]] = {
    "asteroid": asteroid_training,
    "equal-layer-1f1b": equal_layer_1f1b,
    "best-single-device": best_single_device_training,
    "data-parallel-all": data_parallel_all,
}


@dataclass(frozen=True)
class TrainBaselineRow:
    name: str
    plan: Plan | None
    schedule: str
    microbatches: int
    iteration_s: float  # closed form
    simulated_s: float  # math.inf: no plan fits memory


def compare_training(problem: Problem) -> list[TrainBaselineRow]:
    """Dora's training plan and every baseline on ``problem``: closed-form and simulated
    iteration times (inf where a baseline has no plan that fits memory)."""
    rows = []
    plan_set = solve_training(problem)
    best = plan_set.training[0]
    sim = simulate_training(plan_set.best, problem, microbatches=best.microbatches, schedule=best.schedule)
    rows.append(TrainBaselineRow("dora", plan_set.best, best.schedule, best.microbatches, best.iteration_s, sim.iteration_s))
    for name, planner in TRAINING_BASELINES.items():
        plan = planner(problem)
        policy = "1f1b"
        found = None if plan is None else _best_count(plan, problem, policy)
        if plan is None or found is None:
            rows.append(TrainBaselineRow(name, plan, policy, 0, math.inf, math.inf))
            continue
        m, closed = found
        simulated = simulate_training(plan, problem, microbatches=m, schedule=policy).iteration_s
        rows.append(TrainBaselineRow(name, plan, policy, m, closed, simulated))
    return rows
