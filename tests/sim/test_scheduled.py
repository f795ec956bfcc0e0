"""The simulator of schedules (``sim.scheduled``) honours a requested microbatch count, one
included, and keeps every other field of the caller's SimConfig."""

from __future__ import annotations

import dataclasses

from simcases import chain_problem, pipeline

from dora_fx.ir.lowering import Step, lower, relower
from dora_fx.scenarios import edge_cluster
from dora_fx.sim import SimConfig
from dora_fx.sim.scheduled import schedule_config, simulate_schedule


def test_a_requested_microbatch_count_relowers_the_schedule():
    problem = chain_problem(edge_cluster(4), n_blocks=8, flops=2e10)
    plan = pipeline(["jetson0", "jetson1", "jetson2", "jetson3"], 8)
    steps = [[Step("compute", 0)] for _ in plan.stages]
    schedule = lower(steps, 2, "overlap", "fair")

    compiled = simulate_schedule(schedule, plan, problem, SimConfig(requests=2))
    assert compiled.config.microbatches == 2  # SimConfig's default: the schedule's count
    four = simulate_schedule(schedule, plan, problem, SimConfig(requests=2, microbatches=4))
    assert four.config.microbatches == 4
    relowered = simulate_schedule(relower(schedule, 4), plan, problem, SimConfig(requests=2))
    assert four.latencies_s == relowered.latencies_s
    assert four.latencies_s[0] < compiled.latencies_s[0]  # finer microbatches overlap more
    one = simulate_schedule(relower(schedule, 1), plan, problem, SimConfig(requests=2))
    assert one.config.microbatches == 1 and one.latencies_s[0] > compiled.latencies_s[0]
    asked_one = simulate_schedule(schedule, plan, problem, SimConfig(requests=2, microbatches=1))
    assert asked_one.config.microbatches == 1 and asked_one.latencies_s == one.latencies_s


def test_schedule_config_keeps_every_field_the_schedule_does_not_set():
    config = SimConfig(
        requests=7,
        request_rate_rps=3.0,
        arrivals="poisson",
        concurrency=3,
        microbatches=5,
        overlap=False,
        source="jetson1",
        sink="jetson2",
        seed=11,
        record_timeline=False,
    )
    default = SimConfig()
    # every field off its default, so a copy that drops one (falls back to the default) shows;
    # a field added to SimConfig fails here until it is given a value above
    unset = [f.name for f in dataclasses.fields(SimConfig)
             if getattr(config, f.name) == getattr(default, f.name)]
    assert not unset, f"give these SimConfig fields a non-default value in this test: {unset}"
    schedule = lower([[Step("compute", 0)]], 2, "overlap", "fair")

    scheduled = schedule_config(schedule, config)
    assert (scheduled.microbatches, scheduled.overlap) == (2, True)  # the schedule's
    for f in dataclasses.fields(SimConfig):
        if f.name not in ("microbatches", "overlap"):
            assert getattr(scheduled, f.name) == getattr(config, f.name), f.name
