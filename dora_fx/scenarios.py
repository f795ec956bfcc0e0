"""Built-in clusters. Spine placeholders with rough figures; the cost-model issue replaces them
with sourced presets and shared-medium networks."""

from __future__ import annotations

from .cost_models.cluster import Cluster, Network
from .cost_models.device import Device

__all__ = ["smart_home", "traffic_analytics", "edge_cluster", "SCENARIOS"]

_GIB = 2**30


def smart_home() -> Cluster:
    devices = (
        Device("phone", 200e9, memory_bytes=6 * _GIB, kind="phone"),
        Device("laptop", 400e9, memory_bytes=16 * _GIB, kind="laptop"),
        Device("rpi4", 8e9, memory_bytes=4 * _GIB, kind="rpi"),
        Device("jetson", 470e9, memory_bytes=4 * _GIB, kind="jetson"),
    )
    return Cluster(devices, Network("wifi5", 280e6, 2e-3), name="smart_home")


def traffic_analytics() -> Cluster:
    devices = tuple(
        Device(f"orin{i}", 1.2e12, memory_bytes=8 * _GIB, kind="jetson") for i in range(3)
    ) + (Device("edge_server", 20e12, memory_bytes=32 * _GIB, kind="server"),)
    return Cluster(devices, Network("ethernet", 940e6, 0.2e-3), name="traffic_analytics")


def edge_cluster(n: int = 4) -> Cluster:
    devices = tuple(Device(f"jetson{i}", 470e9, memory_bytes=4 * _GIB, kind="jetson") for i in range(n))
    return Cluster(devices, Network("gige", 940e6, 0.1e-3), name=f"edge_cluster{n}")


SCENARIOS = {
    "smart_home": smart_home,
    "traffic_analytics": traffic_analytics,
    "edge_cluster": edge_cluster,
}
