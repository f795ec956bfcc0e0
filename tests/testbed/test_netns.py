"""The namespace testbed for real (root only; skipped with the reason elsewhere): clusters come
up reachable and go away without a trace, links carry their configured rates, and a plan runs
across namespaces under torchrun, ending with an error, not a hang, when a device is lost."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

import dora_fx
from dora_fx import models
from dora_fx.artifact.manifest import read_plan_folder
from dora_fx.cost_models.cluster import Cluster
from dora_fx.cost_models.device import Device
from dora_fx.cost_models.network import Link, Medium, Network
from dora_fx.runtime.distributed.wiring import rank_table
from dora_fx.testbed import (
    NetnsCluster,
    TestbedError,
    available,
    node_commands,
    start_nodes,
    stop_nodes,
    wait_nodes,
)
from dora_fx.testbed.cli import main

AVAILABLE, REASON = available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=REASON)

RUN_TIMEOUT_S = 15.0  # the ranks' P2P timeout (--timeout): room for 2 busy CI cores
NODE_DEADLINE_S = 120.0  # hard limit on a whole torchrun run (startup on 2 busy cores included)


def _device(name: str) -> Device:
    # fast, so that planning is quick; only correctness is tested, never speed
    return Device(name, dense_flops_per_s=1e12, memory_bandwidth_bytes_per_s=50e9)


def _cluster(kind: str, names: tuple[str, ...], rate_bps: float) -> Cluster:
    network = Network(
        kind, media=(Medium(kind, kind),), links=tuple(Link(n, kind, rate_bps) for n in names)
    )
    return Cluster(tuple(_device(n) for n in names), network, name=f"{kind}_test")


def _switched(rate_bps: float = 20e6) -> Cluster:
    # names no interface can have: derived short ones stand in
    return _cluster("switched", ("camera/front door #1", "a"), rate_bps)


def _shared(rate_bps: float = 40e6) -> Cluster:
    return _cluster("shared", ("s0", "s1", "s2"), rate_bps)


def _leftovers(prefix: str) -> list[str]:
    """Namespaces and root-namespace links whose names start with the prefix."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10)
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    names += [line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()]
    return [name for name in names if name.startswith(f"{prefix}-")]


def _all_pairs_reach_each_other(testbed: NetnsCluster) -> None:
    devices = testbed.cluster.device_names
    for src in devices:
        for dst in devices:
            if src != dst:  # a TCP stream that arrives whole
                assert testbed.measure_rate_bps(src, dst, 10_000, timeout_s=20) > 0


@pytest.mark.parametrize(("make", "prefix"), [(_switched, "tsw"), (_shared, "tsh")])
def test_a_cluster_comes_up_reachable_and_goes_away(make, prefix):
    with NetnsCluster(make(), prefix) as testbed:
        assert len(_leftovers(prefix)) == len(testbed.cluster.devices) + 1  # and the router
        _all_pairs_reach_each_other(testbed)
        assert len(testbed.interface(testbed.cluster.device_names[0])) <= 15
    assert _leftovers(prefix) == []
    assert testbed.down() == []  # idempotent


def test_an_exception_inside_tears_everything_down_processes_too():
    with pytest.raises(RuntimeError, match="inside"), NetnsCluster(_shared(), "texc") as testbed:
        sleeper = testbed.popen("s1", ["sleep", "60"])
        raise RuntimeError("inside the with block")
    try:
        assert sleeper.wait(timeout=10) == -9  # killed with its namespace
    finally:
        sleeper.kill()
    assert _leftovers("texc") == []


def test_up_refuses_a_prefix_in_use_and_leaves_it_alone():
    with NetnsCluster(_switched(), "tdup") as first:
        with pytest.raises(TestbedError, match="already exist.*down --prefix tdup"):
            NetnsCluster(_shared(), "tdup").up()
        _all_pairs_reach_each_other(first)  # the refused one removed nothing
    assert _leftovers("tdup") == []


def test_a_failure_halfway_through_up_removes_what_was_made(monkeypatch):
    import dora_fx.testbed.netns as netns

    def broken(*args):
        return [("tc", "-n", "tpart-hub", "qdisc", "add", "dev", "nosuchdev", "clsact")]

    monkeypatch.setattr(netns, "air_commands", broken)
    with pytest.raises(TestbedError, match="nosuchdev"):
        NetnsCluster(_shared(), "tpart").up()
    assert _leftovers("tpart") == []


def test_the_command_line_brings_a_scenario_up_shows_it_and_tears_it_down(capsys):
    try:
        assert main(["up", "--scenario", "smart_home", "--prefix", "tcli"]) == 0
        assert "rpi4           namespace tcli-rpi4" in capsys.readouterr().out
        assert main(["up", "--scenario", "edge_cluster", "--prefix", "tcli"]) == 2
        assert "down --prefix tcli" in capsys.readouterr().err
        assert main(["status", "--prefix", "tcli"]) == 0
        assert "shared air of 'wifi5' (htb on tcli-air0 in tcli-hub)" in capsys.readouterr().out
    finally:
        assert main(["down", "--prefix", "tcli"]) == 0
    assert main(["status", "--prefix", "tcli"]) == 1
    assert _leftovers("tcli") == []


def test_a_switched_link_carries_its_configured_rate():
    with NetnsCluster(_switched(20e6), "trate") as testbed:
        rate = testbed.measure_rate_bps("camera/front door #1", "a", 5_000_000)
    print(f"switched 20 Mb/s: measured {rate / 1e6:.2f} Mb/s")
    assert rate == pytest.approx(20e6, rel=0.10)


def test_two_stations_of_one_access_point_get_half_the_air():
    with NetnsCluster(_shared(40e6), "tair") as testbed:
        rate = testbed.measure_rate_bps("s0", "s1", 2_500_000)
    print(f"shared 40 Mb/s stations, s0 -> s1: measured {rate / 1e6:.2f} Mb/s (model 20)")
    assert rate == pytest.approx(20e6, rel=0.15)


# -- a distributed run across namespaces ----------------------------------------------------


@pytest.fixture(scope="module")
def mlp_plan(tmp_path_factory):
    model, example = models.build("mlp", batch=4)
    cluster = _switched(20e6)
    compiled = dora_fx.compile(model, cluster, example_inputs=example, num_stages=2)
    folder = compiled.save(tmp_path_factory.mktemp("plan") / "mlp")
    return model, cluster, Path(folder)


def _requests(path: Path, rows: int, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(rows, 64, generator=generator) for _ in range(count)]
    torch.save([[x] for x in inputs], path)  # a request: the flat list of user inputs
    return inputs


def _start(testbed, folder, tmp_path, port):
    commands = node_commands(
        testbed, folder, tmp_path / "requests.pt", tmp_path / "result.pt",
        port=port, timeout_s=RUN_TIMEOUT_S,
    )  # fmt: skip
    plan = read_plan_folder(folder).plan
    assert [c.device for c in commands] == [r.device for r in rank_table(plan)]
    return commands, start_nodes(testbed, commands, tmp_path)


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("*.log")))


def test_a_plan_runs_across_namespaces_and_gives_the_models_outputs(mlp_plan, tmp_path):
    model, cluster, folder = mlp_plan
    inputs = _requests(tmp_path / "requests.pt", rows=8, count=4)
    with NetnsCluster(cluster, "trun") as testbed:
        commands, procs = _start(testbed, folder, tmp_path, port=29611)
        try:
            codes = wait_nodes(procs, NODE_DEADLINE_S)
        finally:
            stop_nodes(testbed, commands, procs)
    assert codes == [0, 0], _logs(tmp_path)
    result = torch.load(tmp_path / "result.pt", weights_only=False)
    assert len(result["outputs"]) == len(inputs)
    for x, (output,) in zip(inputs, result["outputs"]):
        torch.testing.assert_close(output, model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("victim", "port"), [(1, 29612), (0, 29613)])
def test_losing_a_device_mid_run_ends_the_run_with_an_error(mlp_plan, tmp_path, victim, port):
    """Requests of 1 MB over 20 Mb/s take 0.4 s each: when 8 MB have reached rank 1's device
    the 3 warm-up requests are done and the stream is a few requests in, far from done. Rank 0
    (which also holds torchrun's store) or rank 1 loses its device; the other ends."""
    _, cluster, folder = mlp_plan
    _requests(tmp_path / "requests.pt", rows=4096, count=100)
    survivor = 1 - victim
    with NetnsCluster(cluster, "tkill") as testbed:
        commands, procs = _start(testbed, folder, tmp_path, port=port)
        try:
            deadline = time.monotonic() + NODE_DEADLINE_S
            while testbed.bytes_received(commands[1].device) < 8_000_000:
                assert time.monotonic() < deadline, _logs(tmp_path)
                assert all(p.poll() is None for p in procs), _logs(tmp_path)
                time.sleep(0.2)
            testbed_address = testbed.address(commands[victim].device)
            testbed.kill(commands[victim].device)
            killed = time.monotonic()
            code = wait_nodes([procs[survivor]], 3 * RUN_TIMEOUT_S + 30)[0]
            ended_s = time.monotonic() - killed
        finally:
            stop_nodes(testbed, commands, procs)
    assert code not in (0, None), _logs(tmp_path)  # ended, with an error
    print(f"rank {survivor} ended {ended_s:.1f} s after rank {victim}'s device was killed")
    failure = json.loads((tmp_path / f"failure_{survivor}.json").read_text())
    assert failure["rank"] == survivor, failure
    if victim == 1:  # rank 0 names the rank it lost
        assert failure["suspect_rank"] == 1 and "device 'a'" in failure["message"], failure
        assert f"at {testbed_address}" in failure["message"], failure  # the host, too
    assert not (tmp_path / "result.pt").exists()


def test_a_rendezvous_that_never_completes_ends_with_an_error_within_the_timeout(mlp_plan, tmp_path):
    """Rank 1's host never comes up: rank 0's torchrun gives up after its rendezvous timeout
    (the run's timeout, ``--rdzv-conf timeout=``) with an error saying who joined."""
    _, cluster, folder = mlp_plan
    _requests(tmp_path / "requests.pt", rows=8, count=2)
    with NetnsCluster(cluster, "trdzv") as testbed:
        commands = node_commands(
            testbed, folder, tmp_path / "requests.pt", tmp_path / "result.pt",
            port=29614, timeout_s=RUN_TIMEOUT_S,
        )  # fmt: skip
        started = time.monotonic()
        procs = start_nodes(testbed, commands[:1], tmp_path)
        try:
            codes = wait_nodes(procs, 3 * RUN_TIMEOUT_S + 30)
        finally:
            stop_nodes(testbed, commands, procs)
        ended_s = time.monotonic() - started
    assert codes[0] not in (0, None), _logs(tmp_path)
    assert ended_s < 3 * RUN_TIMEOUT_S + 30
    assert "1/2 clients joined" in _logs(tmp_path)

