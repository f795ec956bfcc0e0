import pytest

from dora_fx import scenarios
from dora_fx.cost_models import Cluster, presets
from dora_fx.errors import ClusterError


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_scenarios_print_and_round_trip_through_json(name, tmp_path):
    cluster = scenarios.SCENARIOS[name]()
    text = str(cluster)
    for device in cluster.devices:
        assert device.name in text
    path = cluster.save(tmp_path / f"{name}.json")
    assert Cluster.load(path) == cluster
    assert Cluster.loads(cluster.dumps()) == cluster


def test_smart_home_shares_one_wifi_access_point():
    cluster = scenarios.smart_home()
    assert cluster.device_names == ["phone", "laptop", "rpi4", "jetson"]
    media = {cluster.link(d).medium for d in cluster.device_names}
    assert media == {"wifi5"} and cluster.network.medium("wifi5").kind == "shared"
    assert cluster.link("rpi4").up_bps < cluster.link("phone").up_bps  # single-stream radio
    assert scenarios.smart_home("wifi6").network.medium("wifi6").kind == "shared"
    with pytest.raises(ClusterError, match="must be 'wifi5' or 'wifi6'"):
        scenarios.smart_home("wifi7")


def test_traffic_analytics_is_wired_jetsons_and_an_edge_server():
    cluster = scenarios.traffic_analytics(cameras=4)
    assert [d.kind for d in cluster.devices] == ["jetson"] * 4 + ["server"]
    assert {cluster.network.medium(cluster.link(d).medium).kind for d in cluster.device_names} == {"switched"}


@pytest.mark.parametrize("n", [4, 6, 8])
def test_edge_cluster_sizes(n):
    cluster = scenarios.edge_cluster(n)
    assert len(cluster.devices) == n and cluster.network.slowdown("jetson0", "jetson1") == 1.0


def test_bad_scenario_arguments():
    with pytest.raises(ClusterError, match="edge_cluster needs n >= 1"):
        scenarios.edge_cluster(0)
    with pytest.raises(ClusterError, match="traffic_analytics needs cameras >= 1"):
        scenarios.traffic_analytics(cameras=0)


def test_scenarios_can_be_edited():
    cluster = scenarios.smart_home()
    pi5 = presets.raspberry_pi_5("rpi5")
    bigger = cluster.with_device(pi5, link=presets.wifi5_ap(["rpi5"]).link("rpi5"))
    assert "rpi5" in bigger and bigger.link("rpi5").medium == "wifi5"
    smaller = bigger.without_device("phone")
    assert "phone" not in smaller and "phone" not in smaller.network.linked_devices
    slower = cluster.with_device(cluster.device("laptop").replace(dense_efficiency=0.1))
    assert slower.device_names == cluster.device_names
    assert slower.device("laptop").dense_efficiency == 0.1
