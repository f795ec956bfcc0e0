import pytest
from hypothesis import given
from hypothesis import strategies as st

from dora_fx.cost_models import Cluster, Device, Link, Medium, Network, presets
from dora_fx.errors import ClusterError


def test_switch_is_full_duplex_and_private():
    net = presets.gigabit_switch(["a", "b", "c", "d"])
    assert net.flow_rates_bps([("a", "b")]) == [940e6]
    # a->b and b->a use different directions; c->d other ports: nobody is slowed
    assert net.flow_rates_bps([("a", "b"), ("b", "a"), ("c", "d")]) == [940e6] * 3
    # two flows out of one port split it
    assert net.flow_rates_bps([("a", "b"), ("a", "c")]) == [470e6, 470e6]
    assert net.slowdown("a", "b") == 1.0


def test_device_to_device_through_an_access_point_spends_airtime_twice():
    net = presets.wifi5_ap(["a", "b"])
    rate = net.link("a").up_bps
    assert net.flow_rates_bps([("a", "b")]) == [pytest.approx(rate / 2)]
    assert net.slowdown("a", "b") == pytest.approx(2.0)


def test_concurrent_flows_divide_the_medium_with_contention_loss():
    net = presets.wifi5_ap(["a", "b", "c", "d"])
    r = net.link("a").up_bps
    eta = net.medium("wifi5").contention_efficiency
    rates = net.flow_rates_bps([("a", "b"), ("c", "d")])
    # each flow spends 2/r of air per bit, two flows: eta / (4 / r)
    assert rates == [pytest.approx(eta * r / 4)] * 2


def test_performance_anomaly_slow_station_drags_everyone():
    net = presets.wifi5_ap(["fast", "slow", "x"], streams={"slow": 1})
    fast, slow = net.link("fast").up_bps, net.link("slow").up_bps
    rates = net.flow_rates_bps([("fast", "x"), ("slow", "x")])
    air_per_bit = 1 / fast + 1 / net.link("x").down + 1 / slow + 1 / net.link("x").down
    assert rates[0] == rates[1] == pytest.approx(net.medium("wifi5").contention_efficiency / air_per_bit)


def test_cross_medium_flow_uses_one_hop_on_each():
    net = presets.merge_networks("home", presets.wifi5_ap(["phone"]), presets.gigabit_switch(["server"]))
    path = dict(net.path("phone", "server"))
    assert path == {("air", "wifi5"): pytest.approx(1 / net.link("phone").up_bps), ("down", "server"): 1 / 940e6}
    assert net.path_latency_s("phone", "server") == pytest.approx(1e-3 + 0.1e-3)


def test_transfer_time_is_latency_plus_bits_over_shared_rate():
    net = presets.gigabit_switch(["a", "b", "c"])
    alone = net.transfer_time_s("a", "b", 1e6)
    assert alone == pytest.approx(0.2e-3 + 8e6 / 940e6)
    assert net.transfer_time_s("a", "b", 1e6, concurrent=[("c", "b")]) == pytest.approx(0.2e-3 + 16e6 / 940e6)
    assert net.transfer_time_s("a", "a", 1e9) == 0.0


def test_default_network_gives_every_device_a_private_link():
    cluster = Cluster((Device("x", 1e9), Device("y", 1e9)))
    link = cluster.link("x")
    assert (link.up_bps, link.down, link.latency_s) == (100e6, 100e6, 1e-3)
    assert cluster.network.flow_rates_bps([("x", "y")]) == [100e6]


@pytest.mark.parametrize("field", ["up_bps", "down_bps"])
@pytest.mark.parametrize("value", [0, -1.0, float("inf")])
def test_bad_link_bandwidth_is_refused(field, value):
    spec = {"up_bps": 1e6, "down_bps": 1e6, field: value}
    with pytest.raises(ClusterError, match=rf"link of device 'a' on medium 'm': {field} must be positive and finite"):
        Link("a", "m", **spec)


def test_network_errors():
    with pytest.raises(ClusterError, match="bandwidth_bps must be positive"):
        Network(bandwidth_bps=0)
    with pytest.raises(ClusterError, match="names medium 'nowhere', which is not one of"):
        Network(links=(Link("a", "nowhere", 1e6),))
    with pytest.raises(ClusterError, match="device 'a' has two links"):
        Network(media=(Medium("m"),), links=(Link("a", "m", 1e6), Link("a", "m", 2e6)))
    with pytest.raises(ClusterError, match="contention_efficiency is the usable fraction"):
        Medium("w", "shared", 0.0)
    with pytest.raises(ClusterError, match="kind must be one of"):
        Medium("w", "bus")
    with pytest.raises(ClusterError, match=r"has links for \['ghost'\], which are not devices"):
        Cluster((Device("a", 1e9),), presets.gigabit_switch(["a", "ghost"]))


def test_network_json_round_trip_and_edits():
    net = presets.merge_networks("n", presets.wifi6_ap(["a", "b"]), presets.cellular_5g(["c"]))
    assert Network.from_json(net.to_json()) == net
    faster = net.scaled(2.0)
    assert faster.link("a").up_bps == 2 * net.link("a").up_bps
    edited = net.with_link(Link("a", "5g", 1e6))
    assert edited.link("a").medium == "5g"


# -- properties ------------------------------------------------------------------------------

DEVICES = ["a", "b", "c", "d", "e"]


@st.composite
def networks(draw):
    shared = draw(st.lists(st.sampled_from(DEVICES), unique=True, max_size=5))
    rest = [d for d in DEVICES if d not in shared]
    eta = draw(st.floats(0.3, 1.0))
    links = [Link(d, "air", draw(st.floats(1e6, 1e9)), draw(st.floats(1e6, 1e9))) for d in shared]
    links += [Link(d, "sw", draw(st.floats(1e6, 1e9)), draw(st.floats(1e6, 1e9))) for d in rest]
    return Network("n", media=(Medium("air", "shared", eta), Medium("sw", "switched")), links=tuple(links))


pairs = st.tuples(st.sampled_from(DEVICES), st.sampled_from(DEVICES)).filter(lambda p: p[0] != p[1])


@given(networks(), st.lists(pairs, min_size=1, max_size=6), pairs)
def test_adding_a_contending_flow_never_speeds_up_a_flow(net, flows, extra):
    before = net.flow_rates_bps(flows)
    after = net.flow_rates_bps([*flows, extra])[: len(flows)]
    assert all(a <= b * (1 + 1e-12) for a, b in zip(after, before, strict=True))


@given(networks(), st.lists(pairs, min_size=1, max_size=6), st.floats(1.0, 10.0))
def test_more_bandwidth_never_slows_a_flow(net, flows, factor):
    before = net.flow_rates_bps(flows)
    after = net.scaled(factor).flow_rates_bps(flows)
    assert all(a >= b * (1 - 1e-12) for a, b in zip(after, before, strict=True))
