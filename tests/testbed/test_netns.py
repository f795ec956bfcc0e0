"""The namespace testbed for real (root only; skipped with the reason elsewhere): clusters come
up reachable and go away without a trace, and links carry their configured rates."""

from __future__ import annotations

import subprocess

import pytest

from dora_fx.cost_models.cluster import Cluster
from dora_fx.cost_models.device import Device
from dora_fx.cost_models.network import Link, Medium, Network
from dora_fx.testbed import NetnsCluster, TestbedError, available

AVAILABLE, REASON = available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=REASON)


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
