"""The testbed's names and tc commands, without making anything (no root needed): device names
become safe interface names, every name carries the prefix, and a shared medium's htb charges
each hop to its station's class."""

from __future__ import annotations

import pytest

import dora_fx
from dora_fx.testbed.layout import Layout, TestbedError, check_prefix, short_names
from dora_fx.testbed.shaping import (
    WIRE_BYTES_PER_PAYLOAD_BYTE,
    air_commands,
    cap_commands,
    wire_rate_bps,
)


def test_device_names_become_short_unique_interface_names():
    names = short_names(["Jetson Orin #2", "jetson orin #3", "lo", "hub", "42", "", "air0", "a"])
    assert names == ["jetsonor", "jetson_1", "lo_2", "hub_3", "d42", "dev5", "air0_6", "a"]
    assert len(set(names)) == len(names)
    assert all(len(n) <= 8 and n[0].isalpha() and n.replace("_", "").isalnum() for n in names)


def test_a_clash_after_numbering_is_numbered_again():
    assert short_names(["ab_2", "ab", "ab"]) == ["ab_2", "ab", "ab_2x1"]
    assert short_names(["x", "x_1", "x"]) == ["x", "x_1", "x_2"]


@pytest.mark.parametrize("prefix", ["", "Dora", "do-ra", "dora_x", "toolong7", "1dora", None])
def test_a_bad_prefix_is_refused(prefix):
    with pytest.raises(TestbedError, match="prefix must be"):
        check_prefix(prefix)


def test_layout_of_smart_home():
    layout = Layout.of(dora_fx.scenarios.smart_home(), "t")
    assert [s.namespace for s in layout.devices] == ["t-phone", "t-laptop", "t-rpi4", "t-jetson"]
    assert [s.address for s in layout.devices][:2] == ["10.77.0.1", "10.77.0.2"]
    assert all(len(s.router_interface) <= 15 for s in layout.devices)
    (medium,) = layout.shared_media
    assert (medium.medium, medium.ifb, len(medium.stations)) == ("wifi5", "t-air0", 4)
    assert Layout.from_json(layout.to_json()) == layout
    with pytest.raises(TestbedError, match="no device 'fridge'"):
        layout.slot("fridge")


def test_a_switched_link_is_capped_at_its_wire_rate_both_ways():
    (qdisc, klass) = cap_commands("ns", "eth", 20e6)
    assert qdisc[-2:] == ("default", "1")
    rate = klass[klass.index("rate") + 1]
    assert rate == klass[klass.index("ceil") + 1] == f"{round(20e6 * 1514 / 1448)}bit"
    assert klass[klass.index("burst") + 1] == f"{round(20e6 * 1514 / 1448 / 8 * 2e-3)}b"  # 2 ms
    slow = cap_commands("ns", "eth", 1e6)[1]
    assert slow[slow.index("burst") + 1] == "3028b"  # two frames at least
    assert wire_rate_bps(1448.0) == pytest.approx(1514.0)
    assert WIRE_BYTES_PER_PAYLOAD_BYTE > 1


def test_a_shared_medium_sorts_each_hop_into_its_station_class():
    layout = Layout.of(dora_fx.scenarios.smart_home(), "t")
    stations = list(layout.devices)
    commands = [" ".join(c) for c in air_commands("t-hub", layout.shared_media[0], stations)]
    parent = next(c for c in commands if "classid 1:1 " in c)
    assert f"rate {round(wire_rate_bps(563.29e6))}bit" in parent  # the fastest hop
    rpi4 = stations[2]
    up = next(c for c in commands if "classid 1:1002" in c)  # rpi4's uplink
    # a slower hop's ceiling: the model's rate of a flow alone from it to a fastest station
    ceil = 1 / (1 / wire_rate_bps(rpi4.up_bps) + 1 / wire_rate_bps(563.29e6))
    assert f"ceil {round(ceil)}bit burst " in up and f"cburst {round(ceil / 8 * 2e-3)}b " in up
    assert "match u8 64 0xff at 8 match ip src 10.77.0.3/32 flowid 1:1002" in " | ".join(commands)
    assert "match u8 63 0xff at 8 match ip dst 10.77.0.3/32 flowid 1:2002" in " | ".join(commands)
    redirects = [c for c in commands if "mirred egress redirect dev t-air0" in c]
    assert len(redirects) == 2 * len(stations)  # every station, both directions


def test_the_rank_blamed_is_the_one_that_died_not_the_first_that_noticed():
    from dora_fx.testbed.runs import _culprit

    # rank 0 saw its connection closed (no suspect), rank 2 waited on rank 1, rank 1 is silent
    reports = {0: {"suspect_rank": None}, 2: {"suspect_rank": 1}}
    assert _culprit(reports, [1, -9, 1]) == 1
    # a rank that failed on its own and is suspected by the others
    assert _culprit({1: {"suspect_rank": None}, 2: {"suspect_rank": 1}}, [1, 1, 1]) == 1
    # nobody reported: the first node that ended badly
    assert _culprit({}, [0, -9, 0]) == 1
