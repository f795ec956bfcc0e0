import pytest

from dora_fx.cost_models import presets
from dora_fx.cost_models.energy import compute_energy_j, energy_breakdown, radio_energy_j
from dora_fx.scenarios import smart_home


def test_busy_and_idle_energy():
    assert compute_energy_j(10.0, 2.0, busy_s=1.0, window_s=3.0) == (10.0, 4.0)
    # busy longer than the window (saturated): no idle time, never negative
    assert compute_energy_j(10.0, 2.0, busy_s=5.0, window_s=3.0) == (50.0, 0.0)


def test_radio_energy_charges_sender_and_receiver():
    net = presets.gigabit_switch(["a", "b"])
    spent = radio_energy_j(net, [("a", "b", 1e6), ("b", "b", 1e9)])
    per_byte = net.link("a").tx_j_per_byte
    assert spent == {"a": pytest.approx(1e6 * per_byte), "b": pytest.approx(1e6 * per_byte)}


def test_breakdown_of_a_cluster():
    cluster = smart_home()
    e = energy_breakdown(cluster, {"laptop": 0.1, "jetson": 0.05}, window_s=0.2, transfers=[("laptop", "jetson", 1e6)])
    laptop, jetson = cluster.device("laptop"), cluster.device("jetson")
    assert e.busy_j == {"laptop": pytest.approx(0.1 * laptop.busy_power_w), "jetson": pytest.approx(0.05 * jetson.busy_power_w)}
    assert e.idle_j["jetson"] == pytest.approx(0.15 * jetson.idle_power_w)
    assert e.total_j == pytest.approx(sum(e.per_device_j().values()))
    assert "phone" not in e.per_device_j()  # devices outside the plan cost nothing
