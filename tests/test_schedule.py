"""The communication schedule: text/JSON round trip, lowering, the verifier's checks, the
reorder, and equivalence of scheduled runs (microbatches, chunks) with the model."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dora_fx
from dora_fx.api import CompiledModel
from dora_fx.compiler.passes.verify import verify_schedule
from dora_fx.compiler.pipeline import run_passes
from dora_fx.compiler.state import CompileState
from dora_fx.ir.comm_ops import SEND
from dora_fx.ir.execute import execute
from dora_fx.ir.lowering import Step, lower, lower_stage, relower
from dora_fx.ir.schedule import Action, Kind, Schedule, ScheduleError, StageSchedule
from dora_fx.models import build

CLUSTER = dora_fx.Cluster(tuple(dora_fx.Device(f"dev{i}", (i + 1) * 1e11) for i in range(4)))


def compile_scheduled(model, inputs, num_stages, microbatches, kwargs=None, plan=None):
    state = CompileState(
        model=model,
        example_inputs=inputs,
        example_kwargs=dict(kwargs or {}),
        cluster=CLUSTER,
        qoe=dora_fx.QoE(),
        num_stages=None if plan else num_stages,
        given_plan=dora_fx.Plan.from_text(plan) if plan else None,
        microbatches=microbatches,
    )
    run_passes(state)
    return CompiledModel(state, [])


# -- the IR ---------------------------------------------------------------------------------

actions = st.one_of(
    st.builds(Action, st.just(Kind.COMPUTE), st.integers(0, 20), st.integers(0, 20)),
    st.builds(
        Action, st.sampled_from([Kind.POST, Kind.WAIT, Kind.SENT]), st.integers(0, 20),
        st.integers(0, 999), st.integers(0, 9),
    ),
    st.builds(
        Action, st.just(Kind.SEND), st.integers(0, 20), st.integers(0, 999), st.integers(0, 9),
        st.integers(1, 8),
    ),
)


@given(st.lists(st.lists(actions, max_size=12), min_size=1, max_size=4), st.integers(1, 8),
       st.sampled_from(["naive", "overlap"]), st.sampled_from(["fair", "critical-first"]))
def test_text_and_json_round_trip(stage_actions, m, policy, contention):
    schedule = Schedule(
        policy, m, contention,
        tuple(StageSchedule(k, tuple(a)) for k, a in enumerate(stage_actions)),
    )
    assert Schedule.from_text(schedule.to_text()) == schedule
    assert Schedule.from_json(schedule.to_json()) == schedule
    entries = [schedule.stage_entry(k) for k in range(len(stage_actions))]
    assert Schedule.from_stage_entries(entries) == schedule


def test_action_text():
    assert [str(Action.parse(t)) for t in ["0F1", "3POST4<0", "1SEND9>2x4", "1SENT9>2"]] == [
        "0F1", "3POST4<0", "1SEND9>2x4", "1SENT9>2",
    ]
    for bad, match in [("0SEND4>1x1", "not canonical"), ("0POST4>1", "not canonical"),
                       ("0F1<2", "not canonical"), ("F1", "cannot parse")]:
        with pytest.raises(ScheduleError, match=match):
            Action.parse(bad)


STEPS = [Step("recv", 4, 0), Step("compute", 0), Step("send", 9, 2, 4 << 20),
         Step("recv", 7, 0), Step("compute", 1)]


def test_naive_lowering_computes_everything_then_sends_blocking():
    assert lower_stage(1, STEPS, 1, "naive").to_text() == (
        "0POST4<0 0POST7<0 0WAIT4<0 0WAIT7<0 0F0 0F1 0SEND9>2 0SENT9>2"
    )


def test_overlap_lowering_posts_early_waits_late_and_chunks():
    text = lower_stage(1, STEPS, 2, "overlap", chunk_bytes=1 << 20).to_text()
    assert text == (
        "0POST4<0 0POST7<0 1POST4<0 1POST7<0 0WAIT4<0 0F0 0SEND9>2x2 0WAIT7<0 0F1 "
        "1WAIT4<0 1F0 1SEND9>2x2 1WAIT7<0 1F1 0SENT9>2 1SENT9>2"
    )


@pytest.mark.parametrize("policy", ["naive", "overlap"])
def test_relowering_keeps_steps_segments_and_chunks(policy):
    sender = [Step("compute", 0), Step("send", 4, 1, 4 << 20), Step("compute", 1),
              Step("send", 7, 1, 1 << 10)]
    steps = [sender, [Step("recv", 4, 0), Step("compute", 0), Step("recv", 7, 0), Step("compute", 1)]]
    two = lower(steps, 2, policy, "critical-first", chunk_bytes=1 << 20)
    three = relower(two, 3)
    assert three.microbatches == 3 and (three.policy, three.contention) == (policy, "critical-first")
    assert relower(three, 2) == two and relower(two, 2) is two
    fixed = [[Step(s.kind, s.index, s.peer, chunks=2 if s.index == 4 else 1)
              if s.kind == "send" else s for s in sender], steps[1]]
    assert three == lower(fixed, 3, policy, "critical-first")
    execute(three)


def test_a_cycle_of_waits_deadlocks():
    schedule = Schedule("overlap", 1, "fair", (
        StageSchedule.from_text(0, "0POST1<1 0WAIT1<1 0SEND2>1 0SENT2>1"),
        StageSchedule.from_text(1, "0POST2<0 0WAIT2<0 0SEND1>0 0SENT1>0"),
    ))
    with pytest.raises(ScheduleError, match=r"deadlocks.*stage 0 at action 1 \(0WAIT1<1\)"):
        execute(schedule)


def test_blocking_sends_before_posts_deadlock():
    # each sends first and waits for its send before posting: rendezvous never happens
    schedule = Schedule("naive", 1, "fair", (
        StageSchedule.from_text(0, "0SEND1>1 0SENT1>1 0POST2<1 0WAIT2<1"),
        StageSchedule.from_text(1, "0SEND2>0 0SENT2>0 0POST1<0 0WAIT1<0"),
    ))
    with pytest.raises(ScheduleError, match="deadlocks"):
        execute(schedule)


# -- the verifier ---------------------------------------------------------------------------


def _three_stage_mlp(microbatches=2):
    model, inputs = build("mlp")
    return compile_scheduled(model, inputs, 3, microbatches)


def _verify(compiled, schedule):
    verify_schedule(schedule, [p.gm.graph for p in compiled.state.programs], [True] * 3)


def _edit(schedule, stage, text):
    stages = list(schedule.stages)
    stages[stage] = StageSchedule.from_text(stage, text)
    return Schedule(schedule.policy, schedule.microbatches, schedule.contention, tuple(stages))


def test_the_chosen_schedule_verifies():
    compiled = _three_stage_mlp()
    _verify(compiled, compiled.state.schedule)
    assert compiled.state.schedule.microbatches == 2


@pytest.mark.parametrize(
    "stage1, match",
    [
        ("1POST0<0 0POST0<0 0WAIT0<0 0F0 0SEND4>2 1WAIT0<0 1F0 1SEND4>2 0SENT4>2 1SENT4>2", None),
        ("0WAIT0<0 0POST0<0 1POST0<0 0F0 0SEND4>2 1WAIT0<0 1F0 1SEND4>2 0SENT4>2 1SENT4>2",
         "0WAIT0<0 waits for a receive it has not posted"),
        ("0POST0<0 1POST0<0 0F0 0WAIT0<0 0SEND4>2 1WAIT0<0 1F0 1SEND4>2 0SENT4>2 1SENT4>2",
         r"0F0 uses tag 0 from stage 0 before 0WAIT0<0"),
        ("0POST0<0 1POST0<0 0WAIT0<0 0SEND4>2 0F0 1WAIT0<0 1F0 1SEND4>2 0SENT4>2 1SENT4>2",
         "0SEND4>2 sends before segment F0 produced it"),
        ("0POST0<0 1POST0<0 0WAIT0<0 0F0 0SEND4>2 1WAIT0<0 1F0 0SENT4>2",
         r"missing \['1SEND4>2', '1SENT4>2'\]"),
        ("0POST0<0 1POST0<0 0WAIT0<0 0F0 0SENT4>2 0SEND4>2 1WAIT0<0 1F0 1SEND4>2 1SENT4>2",
         "0SENT4>2 waits for a send it has not started"),
        ("0POST0<0 1POST0<0 1WAIT0<0 1F0 1SEND4>2 0WAIT0<0 0F0 0SEND4>2 0SENT4>2 1SENT4>2",
         None),  # microbatches may go out of order
    ],
)
def test_verifier_checks_each_stage(stage1, match):
    compiled = _three_stage_mlp()
    schedule = _edit(compiled.state.schedule, 1, stage1)
    if match is None:
        _verify(compiled, schedule)
    else:
        with pytest.raises(dora_fx.VerificationError, match=match):
            _verify(compiled, schedule)


def test_verifier_finds_a_deadlock_between_stages():
    compiled = _three_stage_mlp()
    # stage 1 waits for its microbatch-0 send to leave before it sends microbatch 1; stage 2
    # posts microbatch 0 only after microbatch 1 arrived: each waits on the other
    schedule = _edit(compiled.state.schedule, 1,
                     "0POST0<0 1POST0<0 0WAIT0<0 0F0 0SEND4>2 0SENT4>2 1WAIT0<0 1F0 1SEND4>2 "
                     "1SENT4>2")
    schedule = _edit(schedule, 2, "1POST4<1 1WAIT4<1 0POST4<1 0WAIT4<1 0F0 1F0")
    with pytest.raises(dora_fx.VerificationError,
                       match=r"deadlocks.*stage 1 at action 5 \(0SENT4>2\).*stage 2 at action 1"):
        _verify(compiled, schedule)


def test_verifier_catches_a_send_with_no_wait():
    compiled = _three_stage_mlp(microbatches=1)
    schedule = _edit(compiled.state.schedule, 0, "0F0 0SEND0>1 0SEND3>1 0SENT0>1 0SENT3>1")
    with pytest.raises(dora_fx.VerificationError, match="unexpected or repeated"):
        _verify(compiled, schedule)
    schedule = _edit(compiled.state.schedule, 2, "0F0")
    schedule = _edit(schedule, 1, "0POST0<0 0WAIT0<0 0F0")
    with pytest.raises(dora_fx.VerificationError, match="missing"):
        _verify(compiled, schedule)


# -- the reorder ----------------------------------------------------------------------------


class TwoHeads(torch.nn.Module):
    """Stage 0 owns a costly local branch and a cheap value the next stage needs."""

    def __init__(self):
        super().__init__()
        self.local = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(4)])
        self.shared = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 16)

    def forward(self, x):
        return self.local(x), self.head(torch.relu(self.shared(x)))


def test_reorder_produces_what_the_next_stage_waits_for_first():
    model, x = TwoHeads().eval(), torch.randn(4, 16)
    probe = dora_fx.compile(model, CLUSTER, example_inputs=(x,), num_stages=1)
    names = [n.name for n in probe.state.chain.nodes]
    shared_block = probe.state.chain.block_of_node()[
        next(n for n in probe.state.chain.nodes if n.name.startswith("linear_4"))
    ]
    blocks = len(probe.state.chain.blocks)
    assert names and 0 < shared_block + 1 < blocks
    plan = (f"plan two batch=4\nstage 0 blocks=0:{shared_block + 1} devices=dev0\n"
            f"stage 1 blocks={shared_block + 1}:{blocks} devices=dev1")
    compiled = compile_scheduled(model, (x,), None, 2, plan=plan)
    order = [n for n in compiled.state.programs[0].gm.graph.nodes]
    send = next(i for i, n in enumerate(order) if n.target is SEND)
    local_linears = [i for i, n in enumerate(order)
                     if n.op == "call_function" and "linear" in str(n.target) and i > send]
    assert local_linears, "the local branch should run after the send"
    assert "def segment_1(" in compiled.stages[0].code
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


# -- equivalence with microbatches and chunks ------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "mobilenetv2", "bert", "transformer", "mlp"])
def test_scheduled_runs_equal_the_model(name, monkeypatch, debug_verifier):
    monkeypatch.setattr("dora_fx.ir.schedule.CHUNK_BYTES", 512)
    monkeypatch.setattr("dora_fx.compiler.passes.schedule_comm.CHUNK_BYTES", 512)
    model, inputs = build(name, batch=5)
    with torch.no_grad():
        expected = model(*inputs)
    compiled = compile_scheduled(model, inputs, 3, 2)
    schedule = compiled.state.schedule
    assert schedule.microbatches == 2 and schedule.overlaps
    assert any(a.chunks > 1 for s in schedule.stages for a in s.actions), "nothing was chunked"
    torch.testing.assert_close(compiled(*inputs), expected)
    three = compile_scheduled(model, inputs, 3, 3)  # uneven microbatches: 2, 2, 1
    torch.testing.assert_close(three(*inputs), expected)
    one = tuple(x[:1] if isinstance(x, torch.Tensor) else x for x in inputs)
    with torch.no_grad():
        torch.testing.assert_close(three(*one), model(*one))  # batch 1 < 3 microbatches


def test_scheduled_data_parallel_stage_equals_the_model():
    model, inputs = build("transformer", batch=6)
    blocks = len(compile_scheduled(model, inputs, 1, 1).state.chain.blocks)
    third = blocks // 3
    plan = (f"plan hybrid batch=6\nstage 0 blocks=0:{third} devices=dev0\n"
            f"stage 1 blocks={third}:{2 * third} devices=dev1,dev2 shares=0.4,0.6\n"
            f"stage 2 blocks={2 * third}:{blocks} devices=dev3")
    compiled = compile_scheduled(model, inputs, None, 2, plan=plan)
    assert compiled.state.schedule.stages[1].segments_used() == 1
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs))


def test_the_chosen_microbatch_count_is_the_simulated_best():
    model, inputs = build("mlp", batch=8)
    compiled = compile_scheduled(model, inputs, 3, None)
    choice = compiled.state.schedule_choice
    assert set(choice.tried) <= {1, 2, 4, 8} and choice.tried
    assert choice.schedule.microbatches == min(choice.tried, key=lambda m: (choice.tried[m], m))
    assert choice.predicted.latencies_s[0] == choice.tried[choice.schedule.microbatches]


def test_a_loaded_plan_runs_its_schedule_segment_by_segment(tmp_path):
    """plan.json keeps each stage's schedule and the loader hands it to the runtime as one
    object; a loaded stage runs its generated segment methods one at a time, as the
    distributed ranks do, and computes what the compiled model and the model compute."""
    from dora_fx.runtime.segments import SegmentProgram

    model, inputs = build("gpt2", batch=4)
    compiled = compile_scheduled(model, inputs, 3, 2)
    loaded = dora_fx.load(compiled.save(tmp_path / "gpt2"))
    assert loaded.schedule == compiled.state.schedule
    assert [SegmentProgram(s.module).count for s in loaded.stages] == [
        s.segments_used() for s in compiled.state.schedule.stages
    ]
    assert max(s.segments_used() for s in loaded.schedule.stages) > 1
    with torch.no_grad():
        ours = loaded(*inputs)
        torch.testing.assert_close(ours, compiled(*inputs), rtol=0, atol=0)
        torch.testing.assert_close(ours, model(*inputs))


# -- the planner's figures are the schedule's ---------------------------------------------


def test_the_chosen_plan_reports_its_schedules_simulated_figures():
    """planner and scheduler agree: the chosen plan's predicted figures are those of the
    schedule compile chose, simulated; the analytic ones stay beside them."""
    from dora_fx.sim import SimConfig
    from dora_fx.sim.scheduled import simulate_schedule

    model, inputs = build("gpt2", batch=4)
    qoe = dora_fx.QoE(batch=4, objective="throughput")
    compiled = dora_fx.compile(model, dora_fx.scenarios.smart_home(), qoe, example_inputs=inputs)
    state, plan = compiled.state, compiled.plan
    assert len(plan.stages) > 1 and state.plan_set.best is plan
    schedule = state.schedule
    idle = simulate_schedule(schedule, plan, state.problem, SimConfig(requests=1))
    assert plan.predicted["latency_s"] == pytest.approx(idle.latencies_s[0], rel=1e-9)
    assert plan.predicted["latency_s"] == pytest.approx(
        compiled.simulate(SimConfig(requests=1)).latencies_s[0], rel=1e-9
    )
    # throughput: the schedule's simulated steady state with the pipeline full
    full = simulate_schedule(schedule, plan, state.problem, SimConfig(requests=64, concurrency=16))
    assert plan.predicted["throughput_rps"] == pytest.approx(full.throughput_rps, rel=0.1)
    assert plan.predicted["energy_j"] == pytest.approx(idle.energy_j, rel=1e-9)
    analytic = state.plan_set.metrics[0]
    assert plan.predicted["analytic_latency_s"] == analytic.latency_s
    assert state.plan_set.scheduled.latency_s == plan.predicted["latency_s"]
    assert "under its policy=overlap" in state.plan_set.describe()
    assert "the plan's figures under its schedule" in compiled.explain()


def test_the_microbatch_count_serves_the_objective():
    """Under a throughput objective the count of best simulated throughput is chosen, not the
    one of least latency."""
    from dora_fx.compiler.passes.schedule_comm import choose_schedule, plan_steps
    from dora_fx.sim.scheduled import schedule_metrics

    model, inputs = build("gpt2", batch=4)
    compiled = dora_fx.compile(model, dora_fx.scenarios.smart_home(), dora_fx.QoE(batch=4),
                               example_inputs=inputs, num_stages=3)
    state = compiled.state
    steps = plan_steps([p.gm.graph for p in state.programs], state.plan)
    problem = state.problem
    for objective, figure in [("latency", lambda m: m.latency_s),
                              ("throughput", lambda m: -m.throughput_rps)]:
        problem = type(problem)(problem.blocks, problem.cluster,
                                dora_fx.QoE(batch=4, objective=objective), 4, problem.input_bytes)
        choice = choose_schedule(steps, state.plan, problem, 4)
        figures = {m: figure(schedule_metrics(relower(choice.schedule, m), state.plan, problem)[0])
                   for m in choice.tried}
        best = min(figures.values())
        tied = [m for m in sorted(figures) if figures[m] <= best + 1e-9 * abs(best)]
        assert choice.schedule.microbatches == tied[0]


def test_microbatch_counts_keep_the_planned_rows_of_a_data_parallel_group():
    from dora_fx.compiler.passes.schedule_comm import _splits_evenly
    from dora_fx.ir.plan import Plan, Stage

    group = Plan("g", (Stage(0, 0, 4, ("a", "b", "c"), (0.125, 0.125, 0.75)),), batch=8)
    assert _splits_evenly(group, 8, 1) and not _splits_evenly(group, 8, 2)
    halves = Plan("h", (Stage(0, 0, 4, ("a", "b"), (0.25, 0.75)),), batch=8)
    assert _splits_evenly(halves, 8, 2) and not _splits_evenly(halves, 8, 4)
    chain = Plan("c", (Stage(0, 0, 2, ("a",)), Stage(1, 2, 4, ("b",))), batch=6)
    assert _splits_evenly(chain, 6, 4)  # single devices: any count, uneven microbatches too
