import math

import pytest
from simcases import chain_problem, pipeline

from dora_fx.analysis.evaluate import evaluate
from dora_fx.analysis.work import plan_work
from dora_fx.cost_models import Cluster, Device, Link, Medium, Network
from dora_fx.errors import PlanError
from dora_fx.ir.plan import Plan, Stage
from dora_fx.scenarios import edge_cluster, smart_home
from dora_fx.sim import SimConfig, simulate


def test_one_device_plan_latency_is_the_sum_of_block_times():
    problem = chain_problem(smart_home().replace(source=None))  # nothing to send or return
    plan = pipeline(["laptop"], len(problem.blocks))
    laptop = problem.cluster.device("laptop")
    analytic = sum(laptop.block_time_s(b.flops, b.dense, b.bytes, b.ops) for b in problem.blocks)
    result = simulate(plan, problem, requests=1)
    assert result.latencies_s == [pytest.approx(analytic, rel=1e-12)]
    assert evaluate(plan, problem).latency_s == pytest.approx(analytic, rel=1e-12)


def test_pipeline_without_sharing_matches_evaluate_exactly():
    problem = chain_problem(edge_cluster(4), n_blocks=8)
    plan = pipeline(["jetson0", "jetson1", "jetson2", "jetson3"], 8)
    result = simulate(plan, problem, requests=1)
    assert result.latencies_s[0] == pytest.approx(evaluate(plan, problem).latency_s, rel=1e-12)


def test_data_parallel_single_request_is_no_slower_than_evaluate():
    problem = chain_problem(smart_home())
    plan = Plan("dp", (Stage(0, 0, 2, ("laptop",)), Stage(1, 2, 4, ("jetson", "phone"), (0.7, 0.3)), Stage(2, 4, 6, ("rpi4",))))
    simulated = simulate(plan, problem, requests=1).latencies_s[0]
    # evaluate holds a scatter's flows together for the whole step and waits for the slowest
    # member before the gather: an upper bound for one request
    assert simulated <= evaluate(plan, problem).latency_s * (1 + 1e-12)


def test_contention_wifi_access_point_vs_switch_at_the_same_nominal_rate():
    """Two stages exchanging through one Wi-Fi AP take longer than over a switch with the same
    link rate, by the factor the network model states (twice the airtime: 2x the transfer)."""
    rate, latency, out = 200e6, 1e-3, 8e6
    devices = (Device("a", 1e12), Device("b", 1e12))
    networks = {
        kind: Network(kind, media=(Medium("m", kind),), links=(Link("a", "m", rate, latency_s=latency), Link("b", "m", rate, latency_s=latency)))
        for kind in ("shared", "switched")
    }
    plan = pipeline(["a", "b"], 2)
    transfer, end_to_end = {}, {}
    for kind, net in networks.items():
        result = simulate(plan, chain_problem(Cluster(devices, net), n_blocks=2, out_bytes=out), requests=1)
        (flow,) = result.flow_events
        transfer[kind] = flow.end_s - flow.start_s
        end_to_end[kind] = result.latencies_s[0]
    factor = networks["shared"].slowdown("a", "b")
    assert factor == pytest.approx(2.0)
    assert transfer["switched"] == pytest.approx(8 * out / rate)
    assert transfer["shared"] == pytest.approx(factor * transfer["switched"])
    # end to end, the Wi-Fi plan is slower by exactly the extra transfer time
    assert end_to_end["shared"] - end_to_end["switched"] == pytest.approx((factor - 1) * 8 * out / rate)


def test_throughput_never_exceeds_evaluate_capacity_and_approaches_it():
    problem = chain_problem(smart_home())
    plan = pipeline(["phone", "laptop", "jetson"], 6)
    metrics = evaluate(plan, problem)
    result = simulate(plan, problem, requests=300, concurrency=6)
    # hard bounds: the slowest stage, and the medium's airtime per request without contention loss
    air = sum(8 * t.nbytes * c for s in plan_work(plan, problem).stages for t in s.inputs
              for _, c in problem.cluster.network.path(t.src, t.dst))
    assert result.throughput_rps <= 1 / max(max(metrics.stage_compute_s), air) * (1 + 1e-9)
    # evaluate's capacity assumes the request's flows contend; the run is close to it
    assert result.throughput_rps == pytest.approx(metrics.throughput_rps, rel=0.1)


def test_open_loop_below_capacity_serves_the_offered_rate():
    problem = chain_problem(edge_cluster(4))
    plan = pipeline(["jetson0", "jetson1", "jetson2"], 6)
    rate = 0.5 * evaluate(plan, problem).throughput_rps
    result = simulate(plan, problem, requests=200, request_rate_rps=rate)
    assert result.throughput_rps == pytest.approx(rate, rel=0.05)
    # no queueing below capacity: every request sees the unloaded latency
    assert result.latency_p95_s == pytest.approx(evaluate(plan, problem).latency_s, rel=1e-9)


def test_poisson_arrivals_are_deterministic_per_seed():
    problem = chain_problem(smart_home())
    plan = pipeline(["phone", "laptop"], 6)
    cfg = SimConfig(requests=50, request_rate_rps=3.0, arrivals="poisson", seed=7)
    assert simulate(plan, problem, cfg).latencies_s == simulate(plan, problem, cfg).latencies_s
    other = simulate(plan, problem, SimConfig(requests=50, request_rate_rps=3.0, arrivals="poisson", seed=8))
    assert other.latencies_s != simulate(plan, problem, cfg).latencies_s


def test_blocking_sends_are_never_faster_than_overlapped_ones():
    problem = chain_problem(edge_cluster(4), out_bytes=2e7)
    plan = pipeline(["jetson0", "jetson1", "jetson2"], 6)
    overlapped = simulate(plan, problem, requests=40, concurrency=4, microbatches=2)
    blocking = simulate(plan, problem, requests=40, concurrency=4, microbatches=2, overlap=False)
    assert blocking.makespan_s >= overlapped.makespan_s
    assert blocking.throughput_rps < overlapped.throughput_rps


def test_microbatches_overlap_stages_of_one_request():
    problem = chain_problem(edge_cluster(4), n_blocks=8, flops=2e10)
    plan = pipeline(["jetson0", "jetson1", "jetson2", "jetson3"], 8)
    one = simulate(plan, problem, requests=1).latencies_s[0]
    four = simulate(plan, problem, requests=1, microbatches=4).latencies_s[0]
    assert four < one
    estimate = evaluate(plan, problem, microbatches=4).latency_s
    assert four == pytest.approx(estimate, rel=0.05)


def test_energy_memory_and_utilization():
    problem = chain_problem(smart_home())
    plan = pipeline(["laptop", "jetson"], 6)
    result = simulate(plan, problem, requests=20)
    busy_j = sum(problem.cluster.device(d).busy_power_w * s for d, s in result.busy_s.items()) / 20
    assert result.energy_j >= busy_j
    # closed loop, one request at a time: the same figure evaluate gives
    assert result.energy_j == pytest.approx(evaluate(plan, problem).energy_j, rel=1e-9)
    weights = {"laptop": 3 * 1e7, "jetson": 3 * 1e7}
    for device, peak in result.peak_memory_bytes.items():
        assert peak >= weights[device]
        assert peak == pytest.approx(evaluate(plan, problem).memory_bytes[device])
    assert set(result.utilization) == {"laptop", "jetson"}
    assert all(0 < u <= 1 for u in result.utilization.values())
    assert math.isclose(sum(result.latencies_s) / 20, result.latency_mean_s)


def test_a_device_in_two_stages_runs_one_task_at_a_time():
    problem = chain_problem(smart_home())
    plan = pipeline(["laptop", "jetson", "laptop"], 6)
    result = simulate(plan, problem, requests=10, concurrency=3)
    spans = sorted((e.start_s, e.end_s) for e in result.compute_events if e.device == "laptop")
    assert all(a[1] <= b[0] + 1e-12 for a, b in zip(spans, spans[1:]))


def test_source_and_sink_add_their_transfers():
    problem = chain_problem(smart_home().replace(source=None))
    plan = pipeline(["laptop", "jetson"], 6)
    local = simulate(plan, problem, requests=1).latencies_s[0]
    remote = simulate(plan, problem, requests=1, source="phone", sink="phone")
    assert remote.latencies_s[0] > local
    assert {(f.src, f.dst) for f in remote.flow_events} == {("phone", "laptop"), ("laptop", "jetson"), ("jetson", "phone")}
    # smart_home's own source is the phone: its problems send from and return to it
    by_default = simulate(plan, chain_problem(smart_home()), requests=1)
    assert by_default.latencies_s == remote.latencies_s


def test_bad_plans_and_configs_are_refused():
    problem = chain_problem(smart_home())
    ghost = Plan("ghost", (Stage(0, 0, 6, ("toaster",)),))
    with pytest.raises(PlanError, match=r"stage 0 uses device 'toaster', which is not in cluster 'smart_home' \(devices: \['phone'"):
        simulate(ghost, problem, requests=1)
    with pytest.raises(PlanError, match="uses device 'toaster'"):
        evaluate(ghost, problem)
    short = Plan("short", (Stage(0, 0, 3, ("laptop",)),))
    with pytest.raises(PlanError, match="covers blocks 0:3 but the problem has 6 blocks"):
        simulate(short, problem)
    with pytest.raises(PlanError, match="SimConfig.requests must be a positive int"):
        SimConfig(requests=0)
    with pytest.raises(PlanError, match="request_rate_rps must be positive"):
        SimConfig(request_rate_rps=-1.0)
    with pytest.raises(PlanError, match="source device 'toaster' is not in cluster"):
        simulate(pipeline(["laptop"], 6), problem, source="toaster")


def test_memory_is_released_when_a_device_hands_a_tensor_to_itself():
    problem = chain_problem(smart_home())
    plan = pipeline(["laptop", "laptop", "jetson"], 6)
    few = simulate(plan, problem, requests=2).peak_memory_bytes
    many = simulate(plan, problem, requests=30).peak_memory_bytes
    assert many == few
