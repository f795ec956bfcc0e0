"""Solver invariants on small random problems, checked against exhaustive enumeration under
``evaluate`` (the benchmark runs 200 such problems; here a derandomized handful)."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dora_fx
from dora_fx import scenarios
from dora_fx.analysis.evaluate import evaluate
from dora_fx.analysis.problem import Problem
from dora_fx.errors import InfeasibleQoEError
from dora_fx.ir.plan import Plan
from dora_fx.planner import PlanSet, enumerate_plans, plan_space, solve
from dora_fx.planner.dp import dense
from dora_fx.planner.measure import measure_path
from dora_fx.planner.plan_set import objective_value
from dora_fx.planner.synthetic import random_blocks, random_problem
from dora_fx.planner.tables import build_tables
from dora_fx.qoe import QoE


def _meets(m, qoe: QoE) -> bool:  # type: ignore[no-untyped-def]
    if qoe.latency_s is not None and m.latency_s > qoe.latency_s * (1 + 1e-9):
        return False
    if qoe.throughput_rps is not None and m.throughput_rps < qoe.throughput_rps * (1 - 1e-9):
        return False
    return not (qoe.energy_j is not None and m.energy_j > qoe.energy_j * (1 + 1e-9))


def _exhaustive_best(problem: Problem) -> float:
    best = math.inf
    for plan in enumerate_plans(problem):
        m = evaluate(plan, problem)
        if m.memory_ok and _meets(m, problem.qoe):
            best = min(best, objective_value(m, problem.qoe.objective))
    return best


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n_blocks=st.integers(2, 7), n_devices=st.integers(1, 3))
def test_solver_matches_exhaustive_enumeration(seed: int, n_blocks: int, n_devices: int) -> None:
    problem = random_problem(seed, n_blocks, n_devices)
    best = _exhaustive_best(problem)
    if not math.isfinite(best):
        with pytest.raises(InfeasibleQoEError):
            solve(problem)
        return
    plan_set = solve(problem)
    m = evaluate(plan_set.best, problem)
    assert m.memory_ok and _meets(m, problem.qoe)
    value = objective_value(m, problem.qoe.objective)
    assert value <= best * 1.01 + 1e-12
    assert plan_set.bound <= best * (1 + 1e-9)  # the bound never exceeds the optimum
    assert plan_set.best.gap is not None and value <= plan_set.bound * (1 + plan_set.best.gap) * (1 + 1e-9)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_tables_agree_with_evaluate(seed: int) -> None:
    problem = random_problem(seed, 5, 3)
    space = plan_space(problem)
    tables = build_tables(problem, space)
    d = dense(tables)
    index = {g.counts: i for i, g in enumerate(space.groups)}
    cls = {m: c.index for c in space.classes for m in c.members}
    plans = list(enumerate_plans(problem, space))
    for plan in random.Random(seed).sample(plans, min(25, len(plans))):
        stages = []
        for stage in plan.stages:
            counts = [0] * len(space.classes)
            for device in stage.devices:
                counts[cls[device]] += 1
            stages.append((stage.block_start, stage.block_stop, index[tuple(counts)]))
        m = evaluate(plan, problem)
        if not all(math.isfinite(d.compute_s[g, a, b]) for a, b, g in stages):
            assert not m.memory_ok
            continue
        path = measure_path(d, stages, problem.qoe, tables.contention)
        assert path.latency_s == pytest.approx(m.latency_s, rel=1e-9)
        assert path.throughput_rps == pytest.approx(m.throughput_rps, rel=1e-9)
        assert path.energy_j == pytest.approx(m.energy_j, rel=1e-9)


def test_milp_and_dp_agree_on_a_small_problem() -> None:
    problem = random_problem(3, 6, 3, qoe=QoE(objective="latency"))
    by_milp = solve(problem, exact=True)
    by_dp = solve(problem, exact=False)
    assert by_milp.metrics[0].latency_s == pytest.approx(by_dp.metrics[0].latency_s, rel=1e-6)
    assert by_milp.method == "dp+milp" and by_dp.method == "dp"


def test_plan_set_is_compact_pareto_and_best_first() -> None:
    problem = random_problem(7, 10, 4, batch=2, qoe=QoE(objective="energy", batch=2))
    plan_set = solve(problem)
    assert 1 <= len(plan_set) <= 8
    values = [objective_value(m, "energy") for m in plan_set.metrics]
    assert values[0] == min(values)
    keys = [(m.latency_s, 1 / m.throughput_rps, m.energy_j) for m in plan_set.metrics]
    for i, a in enumerate(keys):
        for j, b in enumerate(keys):
            assert i == j or not all(x <= y for x, y in zip(a, b)) or a == b
    for plan in plan_set.plans:
        assert Plan.from_text(plan.to_text()) == plan
        assert plan.gap is not None and plan.gap >= 0


def test_describe_says_why() -> None:
    problem = random_problem(11, 8, 3, qoe=QoE(objective="latency"))
    text = solve(problem).describe()
    assert "chosen: dora-latency" in text
    assert "certified lower bound" in text
    assert "gap" in text


def test_infeasible_qoe_names_the_binding_constraint() -> None:
    blocks = random_blocks(random.Random(0), 6)
    problem = Problem(tuple(blocks), scenarios.smart_home(), QoE(latency_ms=1e-3), 1, 1e5)
    with pytest.raises(InfeasibleQoEError, match=r"Binding: latency <= 0.001 ms \(best achievable"):
        solve(problem)


def test_gpt2_sized_problem_solves_on_edge_cluster() -> None:
    blocks = random_blocks(random.Random(1), 83)
    problem = Problem(tuple(blocks), scenarios.edge_cluster(8), QoE(objective="throughput"), 1, 1e5)
    plan_set = solve(problem)
    assert isinstance(plan_set, PlanSet)
    assert plan_set.method == "dp"
    assert plan_set.best.gap is not None and plan_set.best.gap < 0.05
    assert evaluate(plan_set.best, problem).memory_ok


def test_data_parallel_groups_appear_when_the_batch_allows() -> None:
    blocks = random_blocks(random.Random(2), 12, batch=8)
    problem = Problem(tuple(blocks), scenarios.edge_cluster(4), dora_fx.QoE(objective="throughput", batch=8), 8, 1e6)
    space = plan_space(problem)
    assert max(g.size for g in space.groups) == 4
    one = Problem(tuple(blocks), scenarios.edge_cluster(4), dora_fx.QoE(), 1, 1e6)
    assert max(g.size for g in plan_space(one).groups) == 1


def test_a_milp_cut_short_by_its_time_limit_is_noted():
    problem = random_problem(1, 64, 8, batch=1, qoe=QoE(objective="energy"))
    plan_set = solve(problem, exact=True, time_limit_s=0.01)
    assert plan_set.plans and plan_set.method == "dp+milp"
    assert any("MILP found no integral plan in its 0.01 s time limit" in n for n in plan_set.notes)
    assert "note: the energy MILP" in plan_set.describe()


def test_group_shares_are_whole_rows_the_runtime_splits_as_planned():
    from dora_fx.ir import batch_split
    from dora_fx.planner.space import group_shares

    speed = {"phone": 0.104, "laptop": 0.185, "rpi4": 0.0167, "jetson": 0.694}  # smart_home, GPT-2
    devices = tuple(speed)
    shares = group_shares(devices, speed, batch=8)
    rows = [round(8 * s) for s in shares]
    assert sum(shares) == 1.0 and all(abs(8 * s - r) < 1e-9 for s, r in zip(shares, rows))
    assert rows == [1, 1, 1, 5]  # a row each, then each row to whoever finishes it first
    # no other integral split (a row each) finishes sooner
    finish = max(r / speed[d] for r, d in zip(rows, devices))
    for other in itertools.product(range(1, 6), repeat=4):
        if sum(other) == 8:
            assert max(r / speed[d] for r, d in zip(other, devices)) >= finish - 1e-12
    assert batch_split.split_sizes(8, shares) == rows
    with pytest.raises(dora_fx.errors.PlanError, match="needs a row per device"):
        group_shares(devices, speed, batch=3)


def _with_ends(problem: Problem, seed: int) -> Problem:
    """``problem`` with requests entering at one random device and results due at another
    (or the same)."""
    from dataclasses import replace

    rng = random.Random(seed)
    names = problem.cluster.device_names
    return replace(problem, source=rng.choice(names), sink=rng.choice(names))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_tables_price_the_source_and_the_sink_as_evaluate_does(seed: int) -> None:
    """Latency is exact; the bottleneck never above evaluate's (a port two transfers share is
    bounded per transfer), equal when no port is shared."""
    problem = _with_ends(random_problem(seed, 5, 3), seed)
    space = plan_space(problem)
    tables = build_tables(problem, space)
    d = dense(tables)
    index = {g.counts: i for i, g in enumerate(space.groups)}
    cls = {m: c.index for c in space.classes for m in c.members}
    plans = list(enumerate_plans(problem, space))
    for plan in random.Random(seed).sample(plans, min(25, len(plans))):
        stages = []
        for stage in plan.stages:
            counts = [0] * len(space.classes)
            for device in stage.devices:
                counts[cls[device]] += 1
            stages.append((stage.block_start, stage.block_stop, index[tuple(counts)]))
        if not all(math.isfinite(d.compute_s[g, a, b]) for a, b, g in stages):
            continue
        m = evaluate(plan, problem)
        path = measure_path(d, stages, problem.qoe, tables.contention)
        assert path.latency_s == pytest.approx(m.latency_s, rel=1e-9)
        assert path.throughput_rps >= m.throughput_rps * (1 - 1e-9)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n_blocks=st.integers(2, 6), n_devices=st.integers(1, 3))
def test_solver_with_a_source_and_a_sink_matches_exhaustive_enumeration(
    seed: int, n_blocks: int, n_devices: int
) -> None:
    problem = _with_ends(random_problem(seed, n_blocks, n_devices), seed + 1)
    best = _exhaustive_best(problem)
    if not math.isfinite(best):
        with pytest.raises(InfeasibleQoEError):
            solve(problem)
        return
    plan_set = solve(problem)
    value = objective_value(evaluate(plan_set.best, problem), problem.qoe.objective)
    assert value <= best * 1.01 + 1e-12
    assert plan_set.bound <= best * (1 + 1e-9)


def test_results_that_must_return_to_the_phone_move_the_plan():
    """GPT-2's logits are ~100x its hidden states: with the phone as sink, planning for it
    beats ignoring it, measured the same way (evaluate with the sink)."""
    from dataclasses import replace

    from dora_fx.planner.synthetic import random_blocks

    blocks = random_blocks(random.Random(1), 8, batch=4)
    last = replace(blocks[-1], out_bytes=blocks[-1].out_bytes * 200)
    blocks = [*blocks[:-1], last]
    cluster = scenarios.smart_home()
    qoe = QoE(objective="latency", batch=4)
    with_sink = Problem(tuple(blocks), cluster, qoe, 4, 1e5, source="phone", sink="phone")
    unaware = Problem(tuple(blocks), cluster.replace(source=None), qoe, 4, 1e5)
    assert with_sink.sink == "phone" and unaware.sink is None
    planned = evaluate(solve(with_sink).best, with_sink).latency_s
    ignored = evaluate(solve(unaware).best, with_sink).latency_s
    assert planned <= ignored * (1 + 1e-9)
