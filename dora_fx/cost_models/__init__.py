"""Cost models: devices (roofline), networks (links and shared media), energy, presets,
calibration of the host."""

from .cluster import Cluster, as_cluster
from .device import Device
from .energy import EnergyBreakdown, energy_breakdown
from .network import Link, Medium, Network

__all__ = [
    "Cluster",
    "Device",
    "EnergyBreakdown",
    "Link",
    "Medium",
    "Network",
    "as_cluster",
    "energy_breakdown",
]
