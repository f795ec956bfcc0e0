"""The training planner against exhaustive enumeration, its bound, and its bad input."""

from __future__ import annotations

import math
import statistics

import pytest

from dora_fx import scenarios
from dora_fx.analysis.problem import Block, Problem, TrainingSpec
from dora_fx.errors import InfeasibleQoEError, PlanError
from dora_fx.planner import solve
from dora_fx.qoe import QoE

from .train_cases import exhaustive_training_best, random_training_problem


def _value(plan_set, objective: str) -> float:  # type: ignore[no-untyped-def]
    return min(m.energy_j if objective == "energy" else m.iteration_s for m in plan_set.training)


def test_training_planner_matches_exhaustive_enumeration() -> None:
    gaps = []
    for seed in range(10):
        problem = random_training_problem(seed, 2 + seed % 4, 1 + seed % 3, batch=(1, 2, 4)[seed % 3])
        best = exhaustive_training_best(problem)
        if not math.isfinite(best):
            with pytest.raises(InfeasibleQoEError):
                solve(problem)
            continue
        plan_set = solve(problem)
        value = _value(plan_set, problem.qoe.objective)
        gaps.append(value / best - 1)
        assert plan_set.bound <= best * (1 + 1e-9)  # a certified lower bound
        assert plan_set.training[0].memory_ok
    assert gaps and statistics.median(gaps) <= 0.01


def _chain(n: int, params: float = 1e7, acts: float = 4e6) -> tuple[Block, ...]:
    return tuple(
        Block(
            flops=2e10, bytes=4e7, out_bytes=1e5, param_bytes=params, backward_flops=4e10,
            backward_bytes=8e7, activation_bytes=acts, grad_bytes=params, name=f"b{i}",
        )  # fmt: skip
        for i in range(n)
    )


def test_training_plan_set_says_schedule_and_microbatches() -> None:
    problem = Problem(
        _chain(8), scenarios.edge_cluster(4), QoE(objective="throughput", batch=8), 8, 1e5,
        training=TrainingSpec(),
    )  # fmt: skip
    plan_set = solve(problem)
    best = plan_set.training[0]
    assert best.schedule in ("gpipe", "1f1b") and best.microbatches in (1, 2, 4, 8)
    assert plan_set.plans[0].predicted["iteration_s"] == pytest.approx(best.iteration_s)
    assert "simulated_iteration_s" in plan_set.plans[0].predicted
    assert len(plan_set.plans[0].stages) > 1  # pipelining beats one Jetson


def test_training_memory_that_fits_nowhere_names_device_and_bytes() -> None:
    problem = Problem(
        _chain(2, params=3e9), scenarios.edge_cluster(2), QoE(objective="throughput", batch=2),
        2, 1e5, training=TrainingSpec(optimizer="adamw"),
    )  # fmt: skip
    with pytest.raises(InfeasibleQoEError, match=r"jetson0.*weights.*grads.*optimizer \(adamw\).*activations"):
        solve(problem)


def test_training_qoe_bounds_the_iteration_not_a_request() -> None:
    cluster = scenarios.edge_cluster(2)
    with pytest.raises(PlanError, match="iteration_ms"):
        solve(Problem(_chain(2), cluster, QoE(latency_ms=10, batch=2), 2, 1e5, training=TrainingSpec()))
    with pytest.raises(InfeasibleQoEError, match="per iteration"):
        solve(Problem(_chain(2), cluster, QoE(iteration_ms=0.001, batch=2), 2, 1e5, training=TrainingSpec()))
    plan_set = solve(Problem(_chain(4), cluster, QoE(iteration_ms=1e4, batch=2), 2, 1e5, training=TrainingSpec()))
    assert plan_set.training[0].iteration_s <= 10.0


def test_bad_training_spec_and_qoe_are_refused() -> None:
    from dora_fx.errors import QoEError

    with pytest.raises(PlanError, match="optimizer"):
        TrainingSpec(optimizer="lion")
    with pytest.raises(PlanError, match="schedule"):
        TrainingSpec(schedule="zb")
    with pytest.raises(QoEError, match="iteration_ms"):
        QoE(iteration_ms=-1)
    assert "iteration_ms" not in QoE().to_json()  # inference JSON unchanged
    assert QoE.from_json(QoE(iteration_ms=5).to_json()).iteration_ms == 5
