"""Energy model.

Over a window of length ``T`` (one request period in the analytic model, the whole run in the
simulator), a device of the plan that computes for ``busy_s`` spends

    E_d = busy_power_w * busy_s + idle_power_w * (T - busy_s)

and every byte on the network costs its sender ``tx_j_per_byte`` and its receiver
``rx_j_per_byte`` (the link's radio or PHY energy). Devices outside the plan are off the books:
leaving a device out is how a plan saves energy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import ClusterError
from .cluster import Cluster
from .network import Network

__all__ = ["EnergyBreakdown", "compute_energy_j", "radio_energy_j", "energy_breakdown"]


@dataclass(frozen=True)
class EnergyBreakdown:
    """Joules per device, split into busy, idle and radio parts."""

    busy_j: dict[str, float] = field(default_factory=dict)
    idle_j: dict[str, float] = field(default_factory=dict)
    radio_j: dict[str, float] = field(default_factory=dict)

    @property
    def total_j(self) -> float:
        return sum(self.busy_j.values()) + sum(self.idle_j.values()) + sum(self.radio_j.values())

    def per_device_j(self) -> dict[str, float]:
        names = dict.fromkeys([*self.busy_j, *self.idle_j, *self.radio_j])
        return {
            n: self.busy_j.get(n, 0.0) + self.idle_j.get(n, 0.0) + self.radio_j.get(n, 0.0)
            for n in names
        }

    def scaled(self, factor: float) -> EnergyBreakdown:
        return EnergyBreakdown(
            {k: v * factor for k, v in self.busy_j.items()},
            {k: v * factor for k, v in self.idle_j.items()},
            {k: v * factor for k, v in self.radio_j.items()},
        )


def compute_energy_j(
    busy_power_w: float, idle_power_w: float, busy_s: float, window_s: float
) -> tuple[float, float]:
    """(busy joules, idle joules) of one device over a window."""
    if busy_s < 0 or window_s < 0:
        raise ClusterError(f"busy_s and window_s must be >= 0, got {busy_s!r}, {window_s!r}")
    # A device busy for longer than the window (a saturated plan) has no idle time left.
    idle_s = max(window_s - busy_s, 0.0)
    return busy_power_w * busy_s, idle_power_w * idle_s


def radio_energy_j(
    network: Network, transfers: Iterable[tuple[str, str, float]]
) -> dict[str, float]:
    """Joules per device for ``(src, dst, nbytes)`` transfers: senders pay tx, receivers rx."""
    spent: dict[str, float] = {}
    for src, dst, nbytes in transfers:
        if src == dst or nbytes <= 0:
            continue
        spent[src] = spent.get(src, 0.0) + nbytes * network.link(src).tx_j_per_byte
        spent[dst] = spent.get(dst, 0.0) + nbytes * network.link(dst).rx_j_per_byte
    return spent


def energy_breakdown(
    cluster: Cluster,
    busy_s: Mapping[str, float],
    window_s: float,
    transfers: Iterable[tuple[str, str, float]] = (),
) -> EnergyBreakdown:
    """Energy of the devices in ``busy_s`` (the plan's) over ``window_s``, plus radio."""
    busy_j, idle_j = {}, {}
    for name, seconds in busy_s.items():
        device = cluster.device(name)
        busy_j[name], idle_j[name] = compute_energy_j(
            device.busy_power_w, device.idle_power_w, seconds, window_s
        )
    return EnergyBreakdown(busy_j, idle_j, radio_energy_j(cluster.network, transfers))
