from .cluster import Cluster, Network, as_cluster
from .device import Device

__all__ = ["Cluster", "Device", "Network", "as_cluster"]
