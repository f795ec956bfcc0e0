"""Distributed runs on 127.0.0.1 (gloo) give the model's outputs: pipelines, data-parallel
stages (single -> group -> single, group -> group), emulation on and off, microbatches."""

from __future__ import annotations

import pytest
import torch

import dora_fx
from dora_fx.errors import PlanFolderError, RankFailedError
from dora_fx.runtime.distributed.launch import _check_port, run_local
from dora_fx.runtime.distributed.wiring import rank_table

from .conftest import close, copy_plan, data_parallel


def _requests(example, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    (x,) = example
    if x.dtype == torch.int64:
        return [(torch.randint(0, 100, x.shape, generator=generator),) for _ in range(count)]
    return [(torch.randn(x.shape, generator=generator),) for _ in range(count)]


def test_gpt2_group_to_group_with_emulation(gpt2_plan, tmp_path, host):
    """Stage 0 on two devices (inputs scattered), stage 1 on two others with other shares
    (pieces cross between overlapping slices), outputs gathered; emulated, 2 microbatches."""
    model, example, folder = gpt2_plan
    folder = data_parallel(
        copy_plan(folder, tmp_path / "dp"),
        {0: (["phone", "laptop"], [0.5, 0.5]), 1: (["rpi4", "jetson"], [0.25, 0.75])},
    )
    requests = _requests((torch.zeros(8, 16, dtype=torch.int64),), 3)
    result = run_local(
        folder, requests, microbatches=2, emulate=True, host=host, time_scale=4.0, timeout_s=30
    )
    assert [r["device"] for r in result.ranks] == ["phone", "laptop", "rpi4", "jetson"]
    for request, output in zip(requests, result.outputs):
        assert close(output["logits"], model(*request).logits)
    assert result.time_scale == 4.0
    assert len(result.latency_s) == 3 and result.throughput_rps > 0
    assert all(r["busy_s"] > 0 for r in result.ranks)
    assert all(r["items_open"] == 0 for r in result.ranks)  # every item's batch forgotten


def test_mobilenetv2_scatter_and_gather(mobilenet_plan, tmp_path):
    model, example, folder = mobilenet_plan
    folder = data_parallel(
        copy_plan(folder, tmp_path / "dp"), {1: (["laptop", "jetson"], [0.3, 0.7])}
    )
    requests = _requests(example, 3)
    result = run_local(folder, requests, emulate=False, in_flight=2, timeout_s=30)
    assert len(result.ranks) == 4
    for request, output in zip(requests, result.outputs):
        assert close(output["logits"], model(*request).logits)


def _run_equal_to_model(plan, rows: int, count: int, microbatches: int):
    """Run ``count`` MLP requests of ``rows`` rows; every output equals the model's."""
    model, _, folder = plan
    requests = _requests((torch.zeros(rows, 64),), count)
    result = run_local(folder, requests, microbatches=microbatches, emulate=False, timeout_s=30)
    for request, output in zip(requests, result.outputs):
        assert close(output, model(*request))
    return result


def test_pipeline_of_three_with_microbatches(mlp_plan):
    result = _run_equal_to_model(mlp_plan, rows=6, count=4, microbatches=3)
    assert "latency p50" in result.table()


def test_rank_table_is_stage_major():
    plan = dora_fx.Plan.from_text(
        "plan p\nstage 0 blocks=0:1 devices=a\nstage 1 blocks=1:2 devices=b,c shares=0.4,0.6"
    )
    table = rank_table(plan)
    assert [(r.rank, r.stage, r.slot, r.device) for r in table] == [
        (0, 0, 0, "a"),
        (1, 1, 0, "b"),
        (2, 1, 1, "c"),
    ]
    assert table[2].describe() == "rank 2 (stage 1 slot 1 on device 'c')"


def test_wrong_number_of_ranks_is_named(mlp_plan):
    from dora_fx.artifact.manifest import read_plan_folder
    from dora_fx.runtime.distributed.rank import _check_world
    from dora_fx.runtime.distributed.wiring import StageWiring

    folder = read_plan_folder(mlp_plan[2])
    with pytest.raises(PlanFolderError, match="plan for 3 ranks .* but 2 were started"):
        _check_world(folder, StageWiring.from_folder(folder), 2)


def test_taken_port_is_a_clear_error():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(RankFailedError, match=f"port {port} on 127.0.0.1 is taken"):
            _check_port(port)


def test_ranks_execute_their_schedule_with_microbatches_and_chunks(tmp_path, monkeypatch):
    """A three-stage plan whose schedule has 2 microbatches and chunked sends: every rank
    executes its stage's actions, in the schedule's order for every request (the SENTs that
    end a request run after the next request's first segment), the chunks are joined again
    and the outputs are the model's."""
    from dora_fx.ir.schedule import Kind, Schedule

    monkeypatch.setattr("dora_fx.ir.schedule.CHUNK_BYTES", 256)
    monkeypatch.setattr("dora_fx.compiler.passes.schedule_comm.CHUNK_BYTES", 256)
    model, example = dora_fx.models.build("mlp", batch=6)
    compiled = dora_fx.compile(
        model, dora_fx.scenarios.smart_home(), example_inputs=example, num_stages=3,
        microbatches=2,
    )  # fmt: skip
    schedule = compiled.state.schedule
    assert schedule.microbatches == 2 and schedule.overlaps
    assert any(a.chunks > 1 for s in schedule.stages for a in s.actions), "nothing is chunked"
    requests = _requests(example, 3)
    result = run_local(compiled.save(tmp_path / "mlp"), requests, emulate=False, timeout_s=30)
    for request, output in zip(requests, result.outputs):
        assert close(output, model(*request))
    assert Schedule.from_text(result.schedule) == schedule and not result.notes
    warmup = 3
    for rank in result.ranks:
        actions = [str(a) for a in schedule.stages[rank["stage"]].actions]
        trace = [(r, text) for r, text, _, _ in rank["trace"]]
        requests_seen = sorted({r for r, _ in trace})
        assert requests_seen == list(range(warmup + len(requests)))
        for r in requests_seen:  # each request: exactly its schedule, in order
            assert [text for q, text in trace if q == r] == actions
        # the warm-up's requests, then the stream's (each drains its SENTs at its end)
        assert trace == _pipelined(actions, range(warmup)) + _pipelined(
            actions, range(warmup, warmup + len(requests))
        )
        assert rank["microbatches"] == 2 and rank["contention"] == "critical-first"
    # a chunked value arrives whole: the receiver logs one transfer of the full tensor
    chunked = {
        (r.peer, r.index)
        for s in schedule.stages
        for r in s.actions
        if r.kind is Kind.SEND and r.chunks > 1
    }
    assert chunked
    received = [
        t for r in result.ranks for t in r["received"] if t["tag"] in {tag for _, tag in chunked}
    ]
    assert received and {t["bytes"] for t in received} == {3 * 64 * 4}, received


def test_a_run_with_another_microbatch_count_relowers_the_schedule(mlp2_plan):
    result = _run_equal_to_model(mlp2_plan, rows=4, count=2, microbatches=4)
    assert "microbatches=4" in result.schedule
    assert any("relowered for 4 microbatch(es)" in n for n in result.notes)
    from dora_fx.errors import InputError

    with pytest.raises(InputError, match="fewer than the schedule's 4 microbatches"):
        run_local(mlp2_plan[2], [(torch.zeros(2, 64),)], microbatches=4, emulate=False)


def _pipelined(actions, requests):
    """The order a rank runs requests back to back: each request's list, the SENTs of its
    last microbatch that close it moved after the next request's first segment."""
    last = max(i for i, a in enumerate(actions) if "F" in a)
    last_mb = max(int(a.split("F")[0]) for a in actions if "F" in a and "SENT" not in a)
    closing = [
        i
        for i in range(last + 1, len(actions))
        if "SENT" in actions[i] and actions[i].startswith(f"{last_mb}SENT")
    ]
    order, deferred = [], []
    for r in requests:
        flushed = not deferred
        for i, text in enumerate(actions):
            if i in closing:
                continue
            order.append((r, text))
            if not flushed and "F" in text:
                order += deferred
                flushed = True
        deferred = [(r, actions[i]) for i in closing]
    return order + deferred


class _DeadPeerWork:
    """A gloo send whose receiver died: never completed, waiting it fails."""

    def is_completed(self):
        return False

    def wait(self, timeout):
        raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234")


def _lonely_transport():
    """Rank 0 of a two-rank table with no links (so no receiver threads, no gloo calls)."""
    from dora_fx.runtime.distributed.links import _MAX_PENDING
    from dora_fx.runtime.distributed.transport import DistTransport
    from dora_fx.runtime.distributed.wiring import RankInfo, StageWiring

    table = [RankInfo(0, 0, 0, "a", (1.0,)), RankInfo(1, 1, 0, "b", (1.0,))]
    wiring = StageWiring(table, {0: {}, 1: {}}, {0: {}, 1: {}}, {}, {0: [], 1: []}, {0: [], 1: []})
    return DistTransport(table[0], wiring, timeout_s=1.0), _MAX_PENDING


@pytest.mark.parametrize("where", ["reap", "close"])
def test_a_dead_peer_found_waiting_a_send_is_named(where):
    """Waiting un-waited sends (reaping the oldest, closing) names the receiving rank as the
    suspect, as SENT does, rather than raising gloo's error."""
    from dora_fx.runtime.distributed.links import _Pending

    transport, limit = _lonely_transport()
    links = transport.links
    links._pending = [_Pending(_DeadPeerWork(), 1, 7, ()) for _ in range(limit + 1)]
    with pytest.raises(
        RankFailedError, match=r"item 7 for rank 1 \(stage 1 on device 'b'\)"
    ) as info:
        links._reap() if where == "reap" else transport.close()
    assert info.value.suspect_rank == 1


def test_an_item_is_forgotten_once_done():
    transport, _ = _lonely_transport()
    transport.scatter_inputs(3, [torch.zeros(4, 2)])
    assert transport.batch == {3: 4}
    transport.forget(3)
    transport.forget(3)  # twice: no harm
    assert transport.batch == {}


def test_measured_and_simulated_actions_pair_up_per_action_class(host):
    """The report pairs what the ranks ran with what the simulator predicts for the same plan,
    schedule and load: every microbatch's compute per stage, the cut's transfer, and the
    return of the results to the sink (the phone; the last stage runs elsewhere)."""
    from dora_fx import models
    from dora_fx.runtime.distributed.report import format_action_report
    from dora_fx.sim import SimConfig

    model, example = models.build("mlp", batch=4)
    cluster = dora_fx.scenarios.smart_home()
    plan = "plan p\nstage 0 blocks=0:4 devices=phone\nstage 1 blocks=4:9 devices=laptop"
    compiled = dora_fx.compile(model, cluster, dora_fx.QoE(batch=4), example_inputs=example, plan=plan)
    requests = 3
    result = compiled.run_distributed(
        [example] * requests, emulate=True, host=host, in_flight=2, time_scale=4.0, timeout_s=30
    )
    sim = compiled.simulate(SimConfig(requests=requests, concurrency=2))
    rows = {(r.action, r.stage): r for r in result.action_report(sim)}
    m = compiled.state.schedule.microbatches
    assert set(rows) == {("compute", 0), ("compute", 1), ("transfer", 1), ("return", 1)}
    for row in rows.values():
        assert row.measured_count == row.simulated_count == requests * m
        assert row.error is not None and row.measured_s > 0 and row.simulated_s > 0
    assert "return stage 1" in format_action_report(list(rows.values()))


def test_requests_by_id_arrive_on_a_trace_and_answers_stream_back(mlp2_plan, host):
    """Open loop on a trace of arrival times (device seconds); each answer is handed out as
    it comes, by the caller's request id, and the result maps ids to outputs."""
    model, _, folder = mlp2_plan
    ids = [7, 3, 11, 5]
    requests = {rid: (torch.randn(4, 64),) for rid in ids}
    arrivals_s = [0.0, 0.001, 0.001, 0.01]
    streamed = []
    result = run_local(
        folder, requests, emulate=True, host=host, arrivals_s=arrivals_s, timeout_s=30,
        on_answer=lambda rid, outputs: streamed.append(rid),
    )  # fmt: skip
    assert streamed == ids and result.request_ids == ids
    with torch.no_grad():
        for rid, output in result.by_id().items():
            assert close(output, model(*requests[rid]))
    assert len(result.latency_s) == 4


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"arrivals_s": [0.0, 0.1]}, r"arrivals_s has 2 times for 3 requests; give one each"),
        ({"arrivals_s": [0.0, 0.2, 0.1]}, r"non-decreasing; arrival 2 is 0.1 after 0.2"),
        ({"arrivals_s": [-1.0, 0.0, 0.1]}, r"non-negative"),
        ({"arrivals_s": [0.0, 0.1, 0.2], "rate_rps": 5.0}, r"give rate_rps or arrivals_s, not both"),
    ],
)
def test_bad_arrivals_are_refused_before_any_rank_starts(mlp2_plan, options, match):
    _, _, folder = mlp2_plan
    with pytest.raises(ValueError, match=match):
        run_local(folder, [(torch.randn(4, 64),)] * 3, emulate=False, **options)


def test_a_host_that_is_not_the_planned_device_is_refused(monkeypatch):
    """A host says which device it is (DORA_DEVICE): the rank the plan puts on another
    device refuses to run there, naming both and the right mapping."""
    from dora_fx.runtime.distributed.rank import _check_host
    from dora_fx.runtime.distributed.wiring import RankInfo, StageWiring

    table = [RankInfo(0, 0, 0, "phone", (1.0,)), RankInfo(1, 1, 0, "laptop", (1.0,))]
    wiring = StageWiring(table, {}, {}, {}, {}, {})
    monkeypatch.setenv("DORA_DEVICE", "laptop")
    _check_host(wiring, 1)
    with pytest.raises(PlanFolderError, match=r"rank 0 is planned for device 'phone' but was "
                       r"started on the host of device 'laptop' .*rank 0: phone, rank 1: laptop"):
        _check_host(wiring, 0)
