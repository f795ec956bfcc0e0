"""Property tests on random problems and plans (hypothesis, derandomized in conftest)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from simcases import NAMES, clusters, plans, problems

from dora_fx.analysis.evaluate import evaluate
from dora_fx.analysis.problem import Problem
from dora_fx.ir.plan import Plan, Stage
from dora_fx.sim import simulate
from dora_fx.sim.fluid import arrival_times_s


@st.composite
def problem_and_plan(draw):
    problem = draw(problems())
    return problem, draw(plans(problem))


def _faster(problem: Problem, factor: float) -> Problem:
    cluster = problem.cluster.with_network(problem.cluster.network.scaled(factor))
    return Problem(problem.blocks, cluster, problem.qoe, problem.batch, problem.input_bytes)


@given(problem_and_plan(), st.integers(1, 3), st.integers(1, 4))
def test_throughput_never_exceeds_the_slowest_stage_bound(case, microbatches, concurrency):
    problem, plan = case
    result = simulate(plan, problem, requests=12, concurrency=concurrency, microbatches=microbatches, record_timeline=False)
    # every request needs busy_s[d] seconds of device d: no run can beat 1 / max_d busy_s[d]
    bound = 1.0 / max(evaluate(plan, problem, microbatches=microbatches).busy_s.values())
    assert result.throughput_rps <= bound * (1 + 1e-9)


@given(problem_and_plan(), st.floats(0.1, 10.0))
def test_energy_is_never_below_busy_energy(case, rate):
    problem, plan = case
    result = simulate(plan, problem, requests=8, request_rate_rps=rate, record_timeline=False)
    busy_j = sum(problem.cluster.device(d).busy_power_w * s for d, s in result.busy_s.items())
    assert result.energy.total_j >= busy_j * (1 - 1e-12)
    metrics = evaluate(plan, problem, request_rate_rps=rate)
    assert metrics.energy_j >= sum(problem.cluster.device(d).busy_power_w * s for d, s in metrics.busy_s.items()) * (1 - 1e-12)


flows = st.lists(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES), st.floats(0, 1e7), st.floats(0, 0.1)),
    min_size=1,
    max_size=6,
)


@given(clusters(), flows, flows)
def test_adding_contending_flows_never_speeds_up_a_transfer(cluster, base, extra):
    alone = arrival_times_s(cluster.network, base)
    crowded = arrival_times_s(cluster.network, base + extra)[: len(base)]
    assert all(c >= a * (1 - 1e-9) - 1e-12 for a, c in zip(alone, crowded, strict=True))


@given(clusters(), flows, st.floats(1.0, 8.0))
def test_more_bandwidth_never_slows_a_transfer(cluster, base, factor):
    slow = arrival_times_s(cluster.network, base)
    fast = arrival_times_s(cluster.network.scaled(factor), base)
    assert all(f <= s * (1 + 1e-9) + 1e-12 for s, f in zip(slow, fast, strict=True))


@given(problem_and_plan(), st.floats(1.0, 8.0), st.integers(1, 3))
def test_more_bandwidth_never_slows_a_plan_analytically(case, factor, microbatches):
    problem, plan = case
    slow = evaluate(plan, problem, microbatches=microbatches)
    fast = evaluate(plan, _faster(problem, factor), microbatches=microbatches)
    assert fast.latency_s <= slow.latency_s * (1 + 1e-9)
    assert fast.throughput_rps >= slow.throughput_rps * (1 - 1e-9)


@st.composite
def chain_cases(draw):
    """Pipelines of distinct single devices: no data parallelism."""
    problem = draw(problems())
    n = len(problem.blocks)
    k = draw(st.integers(1, min(n, len(NAMES))))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), unique=True, min_size=k - 1, max_size=k - 1))) if n > 1 else []
    bounds = [0, *cuts, n]
    devices = draw(st.permutations(NAMES))[: len(bounds) - 1]
    plan = Plan("chain", tuple(Stage(i, bounds[i], bounds[i + 1], (d,)) for i, d in enumerate(devices)))
    return problem, plan


@given(problem_and_plan(), st.floats(1.0, 8.0))
def test_more_bandwidth_never_slows_a_plan_in_the_simulator(case, factor):
    problem, plan = case
    for requests, concurrency in ((1, 1), (6, 3)):
        slow = simulate(plan, problem, requests=requests, concurrency=concurrency, record_timeline=False)
        fast = simulate(plan, _faster(problem, factor), requests=requests, concurrency=concurrency, record_timeline=False)
        assert fast.makespan_s <= slow.makespan_s * (1 + 1e-9)


@given(chain_cases())
def test_simulated_single_request_equals_evaluate_on_chains(case):
    problem, plan = case
    assert simulate(plan, problem, requests=1).latencies_s[0] == pytest.approx(evaluate(plan, problem).latency_s, rel=1e-9)


@given(problem_and_plan())
def test_runs_are_deterministic(case):
    problem, plan = case
    a = simulate(plan, problem, requests=5, concurrency=2)
    b = simulate(plan, problem, requests=5, concurrency=2)
    assert a.latencies_s == b.latencies_s and a.compute_events == b.compute_events
