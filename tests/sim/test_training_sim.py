"""The training simulator against the closed form, and 1F1B's memory against GPipe's."""

from __future__ import annotations

import pytest

from dora_fx import scenarios
from dora_fx.analysis.problem import Block, Problem, TrainingSpec
from dora_fx.analysis.training import evaluate_training, in_flight_count
from dora_fx.ir.plan import Plan, Stage
from dora_fx.ir.train_schedule import in_flight
from dora_fx.qoe import QoE
from dora_fx.sim.training import chain_schedule, simulate_training


def _problem(n: int, cluster=None, out_bytes: float = 1e5) -> Problem:  # type: ignore[no-untyped-def]
    blocks = tuple(
        Block(
            flops=2e10, bytes=4e7, out_bytes=out_bytes, param_bytes=1e7, backward_flops=4e10,
            backward_bytes=8e7, activation_bytes=4e6, grad_bytes=1e7, name=f"b{i}",
        )  # fmt: skip
        for i in range(n)
    )
    cluster = cluster or scenarios.edge_cluster(n)
    return Problem(blocks, cluster, QoE(batch=8), 8, 1e5, training=TrainingSpec())


def _chain_plan(n: int, names: list[str]) -> Plan:
    return Plan("chain", tuple(Stage(k, k, k + 1, (names[k],), (1.0,)) for k in range(n)), batch=8)


@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_gpipe_simulation_equals_the_closed_form_on_a_uniform_chain(m: int) -> None:
    problem = _problem(4)
    plan = _chain_plan(4, problem.cluster.device_names)
    closed = evaluate_training(plan, problem, microbatches=m, schedule="gpipe")
    simulated = simulate_training(plan, problem, microbatches=m, schedule="gpipe")
    # the closed form sums the stages' optimizer steps (a bound); the simulator overlaps them
    # with the backward still running upstream, so only the first stage's is on its path
    assert all(s > 0 for s in closed.optimizer_s)
    overlapped = closed.iteration_s - sum(closed.optimizer_s) + closed.optimizer_s[0]
    assert simulated.iteration_s == pytest.approx(overlapped, rel=1e-9)
    assert simulated.peak_in_flight == (m,) * 4


@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_1f1b_simulation_is_close_to_the_closed_form_and_holds_less(m: int) -> None:
    problem = _problem(4)
    plan = _chain_plan(4, problem.cluster.device_names)
    closed = evaluate_training(plan, problem, microbatches=m, schedule="1f1b")
    one = simulate_training(plan, problem, microbatches=m, schedule="1f1b")
    gpipe = simulate_training(plan, problem, microbatches=m, schedule="gpipe")
    # the steady state's alternation waits on each cut's transfer: within 3% here
    overlapped = closed.iteration_s - sum(closed.optimizer_s) + closed.optimizer_s[0]
    assert one.iteration_s == pytest.approx(overlapped, rel=0.03)
    assert one.peak_in_flight == tuple(min(m, 4 - k) for k in range(4))
    if m > 1:
        assert sum(one.peak_memory_bytes.values()) < sum(gpipe.peak_memory_bytes.values())
    # the closed form's memory is the simulator's peak
    for device, parts in closed.memory.items():
        assert parts.total == pytest.approx(one.peak_memory_bytes[device])


def test_in_flight_count_is_the_lowered_schedules() -> None:
    for policy in ("gpipe", "1f1b"):
        for stages in (1, 2, 3, 5):
            for m in (1, 2, 3, 8):
                schedule = chain_schedule(stages, m, policy)
                for k in range(stages):
                    assert in_flight(schedule, k) == in_flight_count(policy, stages, k, m)


def test_data_parallel_allreduce_counts_shared_wifi_twice() -> None:
    from dora_fx.cost_models.collectives import ring_allreduce_s

    home = scenarios.smart_home()
    network = home.network
    g = 4e7
    t = ring_allreduce_s(network, ["laptop", "jetson"], g)
    # two flows, each 2(n-1)/n * G = G bytes, device -> AP -> device over one medium
    per_bit = sum(c for _, c in network.path("laptop", "jetson")) + sum(
        c for _, c in network.path("jetson", "laptop")
    )
    eta = network.medium(network.link("laptop").medium).contention_efficiency
    assert t == pytest.approx(2 * network.path_latency_s("laptop", "jetson") + 8 * g * per_bit / eta, rel=1e-9)
    problem = _problem(2, home)
    dp = Plan("dp", (Stage(0, 0, 2, ("laptop", "jetson"), (0.5, 0.5)),), batch=8)
    metrics = evaluate_training(dp, problem, microbatches=2, schedule="1f1b")
    assert metrics.allreduce_s[0] == pytest.approx(ring_allreduce_s(network, ["laptop", "jetson"], 2e7))
    simulated = simulate_training(dp, problem, microbatches=2, schedule="1f1b")
    assert simulated.iteration_s == pytest.approx(metrics.iteration_s, rel=0.05)
