"""Built-in clusters: the deployments the Dora paper evaluates, from sourced presets
(docs/devices.md). Each is a ``Cluster``: print it, ``save()``/``load()`` it as JSON, edit it with
``with_device`` / ``without_device`` / ``with_network``.
"""

from __future__ import annotations

from collections.abc import Callable

from .cost_models import presets
from .cost_models.cluster import Cluster
from .errors import ClusterError

__all__ = ["smart_home", "traffic_analytics", "edge_cluster", "SCENARIOS"]


def smart_home(wifi: str = "wifi5") -> Cluster:
    """A phone, a laptop, a Raspberry Pi 4 and a Jetson Orin Nano on one home Wi-Fi AP.

    The Pi has a single-stream radio; the others two streams. ``wifi`` is ``wifi5`` or
    ``wifi6``. Requests come from the phone, and the answers go back to it.
    """
    devices = (
        presets.phone_snapdragon_8_gen_2("phone"),
        presets.laptop_core_i7_1165g7("laptop"),
        presets.raspberry_pi_4("rpi4"),
        presets.jetson_orin_nano("jetson"),
    )
    names = [d.name for d in devices]
    if wifi == "wifi5":
        network = presets.wifi5_ap(names, streams={"rpi4": 1})
    elif wifi == "wifi6":
        network = presets.wifi6_ap(names, streams={"rpi4": 1})
    else:
        raise ClusterError(f"smart_home(wifi=...) must be 'wifi5' or 'wifi6', got {wifi!r}")
    return Cluster(devices, network, name="smart_home", source="phone")


def traffic_analytics(cameras: int = 3) -> Cluster:
    """Camera-side Jetson Orin Nano boards and a roadside T4 edge server on a Gigabit switch;
    requests (frames) come from the first camera's board, and its results go back there."""
    if not isinstance(cameras, int) or cameras < 1:
        raise ClusterError(f"traffic_analytics needs cameras >= 1, got {cameras!r}")
    devices = tuple(presets.jetson_orin_nano(f"cam{i}") for i in range(cameras)) + (
        presets.edge_server_t4("edge_server"),
    )
    network = presets.gigabit_switch([d.name for d in devices])
    return Cluster(devices, network, name="traffic_analytics", source="cam0")


def edge_cluster(n: int = 4) -> Cluster:
    """``n`` Jetson Orin Nano boards (4 to 8 in the paper's setting) on a Gigabit switch;
    requests come from the first board, and its results go back there."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ClusterError(f"edge_cluster needs n >= 1 boards (4 to 8 is typical), got {n!r}")
    devices = tuple(presets.jetson_orin_nano(f"jetson{i}") for i in range(n))
    return Cluster(
        devices, presets.gigabit_switch([d.name for d in devices]), name=f"edge_cluster{n}",
        source=devices[0].name,
    )


SCENARIOS: dict[str, Callable[..., Cluster]] = {
    "smart_home": smart_home,
    "traffic_analytics": traffic_analytics,
    "edge_cluster": edge_cluster,
}
