"""Runs over kernel-shaped links: the clusters a testbed is shaped with (pure), the runtime's
``network="kernel"`` mode refusing a dilation it would have to guess, and (root only; skipped
with the reason elsewhere) a plan with a data-parallel stage run over the namespaces with
compute emulated, giving the model's outputs by request id; and a lost host re-routed by the
dispatcher with nothing lost or duplicated."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import dora_fx
from dora_fx import models
from dora_fx.adapter import MultiPlanDispatcher
from dora_fx.adapter.compose import Composition
from dora_fx.cost_models.cluster import Cluster
from dora_fx.cost_models.device import Device
from dora_fx.cost_models.network import Link, Medium, Network
from dora_fx.runtime.distributed.config import RunConfig
from dora_fx.runtime.distributed.emulation import _check_network
from dora_fx.sim import SimConfig
from dora_fx.testbed import (
    TestbedError,
    available,
    dilated,
    run_plan,
    shaped_for,
    unpaced,
    without_latency,
)
from dora_fx.testbed.executor import TestbedExecutor

AVAILABLE, REASON = available()
needs_namespaces = pytest.mark.skipif(not AVAILABLE, reason=REASON)


def _device(name: str) -> Device:
    return Device(name, dense_flops_per_s=1e12, memory_bandwidth_bytes_per_s=50e9)


def _cluster(names: tuple[str, ...] = ("alpha", "bravo", "carol"), rate_bps: float = 50e6) -> Cluster:
    network = Network(
        "switch", media=(Medium("switch", "switched"),),
        links=tuple(Link(n, "switch", rate_bps, rate_bps / 2, 2e-3) for n in names),
    )  # fmt: skip
    return Cluster(tuple(_device(n) for n in names), network, name="runs_test")


# -- pure ------------------------------------------------------------------------------------


def test_a_dilated_cluster_has_every_rate_over_the_time_scale():
    cluster = _cluster()
    slow = dilated(cluster, 10.0)
    for name in cluster.device_names:
        assert slow.link(name).up_bps == pytest.approx(cluster.link(name).up_bps / 10)
        assert slow.link(name).down == pytest.approx(cluster.link(name).down / 10)
        assert slow.link(name).latency_s == pytest.approx(cluster.link(name).latency_s * 10)
    assert [d.name for d in slow.devices] == cluster.device_names
    with pytest.raises(TestbedError, match="at least 1"):
        dilated(cluster, 0.5)


def test_latency_can_be_left_out_and_a_peer_network_costs_nothing():
    cluster = _cluster()
    assert all(without_latency(cluster).link(n).latency_s == 0 for n in cluster.device_names)
    assert without_latency(cluster).link("alpha").up_bps == cluster.link("alpha").up_bps
    free = unpaced(cluster).network
    assert free.flow_rates_bps([("alpha", "bravo")])[0] >= 1e14


def test_a_kernel_network_needs_the_time_scale_the_testbed_was_shaped_for():
    config = RunConfig(plan_dir="p", requests_path="r", emulate=True, network="kernel")
    with pytest.raises(ValueError, match="fixed time_scale"):
        _check_network(config)
    config.time_scale = 20.0
    _check_network(config)
    config.network = "tc"
    with pytest.raises(ValueError, match="emulated.*kernel"):
        _check_network(config)


# -- over the namespaces (root) --------------------------------------------------------------


def _data_parallel(folder: Path, stage: int, devices: list[str], shares: list[float]) -> Path:
    """Rewrite a saved plan so ``stage`` runs on a data-parallel group."""
    manifest = json.loads((folder / "plan.json").read_text())
    manifest["plan"]["stages"][stage].update(devices=devices, shares=shares)
    (folder / "plan.txt").write_text(dora_fx.Plan.from_json(manifest["plan"]).to_text() + "\n")
    manifest["files"]["plan.txt"] = hashlib.sha256((folder / "plan.txt").read_bytes()).hexdigest()
    (folder / "plan.json").write_text(json.dumps(manifest, indent=2))
    return folder


@needs_namespaces
def test_a_plan_with_a_data_parallel_stage_gives_eager_outputs_by_request_id(tmp_path):
    model, example = models.build("mlp", batch=4)
    cluster = _cluster()
    compiled = dora_fx.compile(model, cluster, example_inputs=example, num_stages=2)
    folder = _data_parallel(compiled.save(tmp_path / "mlp"), 1, ["bravo", "carol"], [0.5, 0.5])
    requests, result = _run_eager_check(model, cluster, folder, (7, 3, 12, 40, 5), "teq", 29631)
    assert result.time_scale == 5.0
    assert [r["device"] for r in result.ranks] == ["alpha", "bravo", "carol"]
    assert all(r["rows"] > 0 for r in result.ranks[1:])  # both members computed rows


def _run_eager_check(model, cluster, folder, ids, prefix, port):  # type: ignore[no-untyped-def]
    """Run the plan folder over a testbed at time scale 5 on random requests ``ids``; the
    outputs by request id equal eager's. Returns the requests and the result."""
    generator = torch.Generator().manual_seed(port)
    requests = {rid: (torch.randn(4, 64, generator=generator),) for rid in ids}
    host = Device("host", dense_flops_per_s=2e10, memory_bandwidth_bytes_per_s=1e10)
    with shaped_for(cluster, 5.0, prefix=prefix) as testbed:
        result = run_plan(
            testbed, folder, requests, time_scale=5.0, host=host, warmup=1, timeout_s=20,
            deadline_s=180, port=port,
        )  # fmt: skip
    assert result.request_ids == list(requests)
    with torch.no_grad():
        for rid, output in zip(result.request_ids, result.outputs):
            torch.testing.assert_close(output, model(*requests[rid]), atol=1e-5, rtol=1e-4)
    return requests, result


@needs_namespaces
def test_a_killed_host_is_routed_around_with_nothing_lost_or_duplicated(tmp_path):
    """plan-a (alpha -> bravo) serves every request over 2 Mb/s links; bravo's namespace is killed after
    two answers; the dispatcher re-sends exactly the unanswered ids to plan-b (alpha -> carol)."""
    model, example = models.build("mlp", batch=4)
    cluster = _cluster(rate_bps=2e6)
    folders = {}
    for plan, gone in (("plan-a", "carol"), ("plan-b", "bravo")):
        sub = cluster.without_device(gone)
        folders[plan] = dora_fx.compile(
            model, sub, example_inputs=example, num_stages=2
        ).save(tmp_path / plan)
    generator = torch.Generator().manual_seed(4)
    requests = {rid: (torch.randn(256, 64, generator=generator),) for rid in range(12)}

    def composition(rates: dict[str, float]) -> Composition:
        return Composition(rates, 1.0, "throughput", None, 0.0, ())

    with shaped_for(cluster, 1.0, prefix="tlost") as testbed:
        executor = TestbedExecutor(
            testbed, folders, kill={"plan-a": ("bravo", 2)}, emulate=False, time_scale=1.0,
            warmup=1, timeout_s=15.0, deadline_s=180, port=29640,
        )  # fmt: skip
        dispatcher = MultiPlanDispatcher(
            {"plan-a": ["alpha", "bravo"], "plan-b": ["alpha", "carol"]},
            composition({"plan-a": 1.0, "plan-b": 0.0}), executor,
            lambda dead: composition({"plan-a": 0.0, "plan-b": 1.0}),
        )  # fmt: skip
        result = dispatcher.run(requests)
        address = testbed.address("bravo")
    assert result.lost == [] and result.duplicates == 0
    assert sorted(result.outputs) == sorted(requests)
    assert result.resent and set(result.served_by.values()) == {"plan-a", "plan-b"}
    error = str(executor.errors[0])
    # the rank that died heads the error (not the first rank that noticed)
    assert f"stopped: rank 1 (stage 1, device 'bravo', host {address})" in error, error
    with torch.no_grad():
        for rid, output in result.outputs.items():
            torch.testing.assert_close(output, model(*requests[rid]), atol=1e-5, rtol=1e-4)


@needs_namespaces
def test_results_computed_on_the_sink_reach_rank_0_after_the_run_not_over_the_links(tmp_path):
    """bravo asks and bravo gets the answer (the cluster's source), rank 0 runs stage 0 on
    alpha: the results stay off the shaped links during the run (a notice tells rank 0 they
    arrived), and their payloads follow at the end, equal to eager by request id."""
    from dataclasses import replace

    model, example = models.build("mlp", batch=4)
    cluster = replace(_cluster(("alpha", "bravo")), source="bravo")
    compiled = dora_fx.compile(model, cluster, example_inputs=example, num_stages=2)
    assert [s.devices for s in compiled.plan.stages] == [("alpha",), ("bravo",)]
    folder = compiled.save(tmp_path / "mlp")
    requests, result = _run_eager_check(model, cluster, folder, (4, 9, 1, 30), "tsink", 29661)
    # the plan's return is free (computed on the sink): only the notice crossed, at once
    simulated = compiled.simulate(SimConfig(requests=len(requests), concurrency=2))
    returns = [a for a in result.action_report(simulated) if a.action == "return"]
    assert returns and all(a.measured_s is not None and a.measured_s < 2e-3 for a in returns)
