"""Every baseline returns a valid plan of the problem, and follows its own policy."""

from __future__ import annotations

import random

import pytest

from dora_fx import scenarios
from dora_fx.analysis.evaluate import evaluate
from dora_fx.analysis.problem import Problem
from dora_fx.planner import baselines, solve
from dora_fx.planner.synthetic import random_blocks
from dora_fx.qoe import QoE


def _problem(objective: str = "latency", cluster=None) -> Problem:  # type: ignore[no-untyped-def]
    blocks = random_blocks(random.Random(5), 16)
    return Problem(tuple(blocks), cluster or scenarios.smart_home(), QoE(objective=objective), 1, 1e5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_baseline_plans_cover_the_chain(name: str) -> None:
    problem = _problem()
    plan = baselines.BASELINES[name](problem)
    assert plan.num_blocks == len(problem.blocks)
    assert len(set(plan.devices)) == len(plan.devices)
    evaluate(plan, problem)  # raises on a malformed plan


def test_equal_layer_splits_evenly_in_cluster_order() -> None:
    plan = baselines.equal_layer(_problem())
    assert [s.block_stop - s.block_start for s in plan.stages] == [4, 4, 4, 4]
    assert plan.devices == ["phone", "laptop", "rpi4", "jetson"]


def test_parameter_balanced_minimizes_the_heaviest_stage() -> None:
    problem = _problem()
    plan = baselines.parameter_balanced(problem)
    weights = [sum(b.param_bytes for b in problem.blocks[s.block_start : s.block_stop]) for s in plan.stages]
    even = baselines.equal_layer(problem)
    even_weights = [sum(b.param_bytes for b in problem.blocks[s.block_start : s.block_stop]) for s in even.stages]
    assert max(weights) <= max(even_weights)


def test_single_device_is_one_stage() -> None:
    plan = baselines.best_single_device(_problem())
    assert len(plan.stages) == 1 and len(plan.stages[0].devices) == 1


def test_neurosurgeon_uses_at_most_two_devices() -> None:
    plan = baselines.neurosurgeon(_problem())
    assert len(plan.stages) <= 2


def test_dora_never_loses_to_a_baseline_on_its_objective_beyond_its_gap() -> None:
    for objective in ("latency", "throughput", "energy"):
        problem = _problem(objective)
        plan_set = solve(problem)
        ours = plan_set.metrics[0]
        for name, planner in baselines.BASELINES.items():
            theirs = evaluate(planner(problem), problem)
            if not theirs.memory_ok:
                continue
            key = {
                "latency": lambda m: m.latency_s,
                "throughput": lambda m: 1 / m.throughput_rps,
                "energy": lambda m: m.energy_j,
            }[objective]
            assert key(ours) <= key(theirs) * (1 + (plan_set.best.gap or 0)) * (1 + 1e-9), name
