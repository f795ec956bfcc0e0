"""Collectives over the network model: the ring all-reduce that reduces a data-parallel
group's gradients.

A ring all-reduce of ``G`` bytes over ``n`` devices runs ``2 (n - 1)`` steps (reduce-scatter,
then all-gather); in each, every device sends a chunk of ``G / n`` bytes to the next device of
the ring, all at once. So each device sends ``2 (n - 1) / n * G`` bytes, the ``n`` flows run
concurrently (``Network.flow_rates_bps``: on a shared Wi-Fi medium each flow's airtime counts
twice, device -> AP -> device, and the ``n`` flows split the medium and pay its contention
loss; on a switch each device's ports carry one flow each way), and each step pays the path
latency once::

    t = 2 (n - 1) * max_latency + max_f 8 * (2 (n - 1) / n) G / rate_f
"""

from __future__ import annotations

from collections.abc import Sequence

from .network import Network

__all__ = ["ring_allreduce_flows", "ring_allreduce_s"]


def ring_allreduce_flows(devices: Sequence[str], nbytes: float) -> list[tuple[str, str, float]]:
    """``(src, dst, bytes)`` each ring member sends over the whole all-reduce."""
    n = len(devices)
    if n < 2 or nbytes <= 0:
        return []
    per_device = 2.0 * (n - 1) / n * nbytes
    return [(devices[i], devices[(i + 1) % n], per_device) for i in range(n)]


def ring_allreduce_s(network: Network, devices: Sequence[str], nbytes: float) -> float:
    """Seconds of a ring all-reduce of ``nbytes`` over ``devices`` (see the module docstring)."""
    flows = ring_allreduce_flows(devices, nbytes)
    if not flows:
        return 0.0
    n = len(devices)
    rates = network.flow_rates_bps([(s, d) for s, d, _ in flows])
    latency = max(network.path_latency_s(s, d) for s, d, _ in flows)
    return 2 * (n - 1) * latency + max(8.0 * b / r for (_, _, b), r in zip(flows, rates))
