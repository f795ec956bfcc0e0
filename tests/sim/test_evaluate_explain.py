import pytest
from simcases import chain_problem, pipeline

from dora_fx.analysis.evaluate import evaluate
from dora_fx.analysis.problem import Problem
from dora_fx.qoe import QoE
from dora_fx.scenarios import smart_home, traffic_analytics
from dora_fx.sim.explain import predicted_lines


def test_predicted_lines_show_simulated_and_analytic_figures():
    problem = chain_problem(smart_home())
    lines = predicted_lines(pipeline(["phone", "laptop"], 6), problem)
    text = "\n".join(lines)
    assert "p50" in text and "p95" in text and "capacity" in text and "J/request" in text
    assert sum(line.strip().startswith(("phone", "laptop")) for line in lines) == 2


def test_evaluate_energy_follows_the_operating_point():
    base = chain_problem(traffic_analytics())
    plan = pipeline(["cam0", "edge_server"], 6)
    closed = evaluate(plan, base)
    assert closed.period_s == closed.latency_s
    slow = evaluate(plan, base, request_rate_rps=0.5 / closed.latency_s)
    # a slower request stream leaves the devices idle longer: more idle energy per request
    assert slow.period_s == pytest.approx(2 * closed.latency_s)
    assert slow.energy_j > closed.energy_j
    loaded = Problem(base.blocks, base.cluster, QoE(request_rate_rps=2 * closed.throughput_rps), base.batch, base.input_bytes)
    over = evaluate(plan, loaded)
    assert over.saturated and over.period_s == pytest.approx(1 / over.throughput_rps)


def test_evaluate_flags_memory_over_capacity():
    problem = chain_problem(smart_home())
    plan = pipeline(["rpi4"], 6)
    big = Problem(tuple(b.__class__(**{**b.__dict__, "param_bytes": 1e9, "bytes": 2e9}) for b in problem.blocks),
                  problem.cluster, problem.qoe, problem.batch, problem.input_bytes)
    metrics = evaluate(plan, big)
    assert not metrics.memory_ok and metrics.over_memory == ["rpi4"]
    assert metrics.memory_bytes["rpi4"] > 6e9
