"""A cluster: devices plus the network joining them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ClusterError
from .device import Device

__all__ = ["Cluster", "Network", "as_cluster"]


@dataclass(frozen=True)
class Network:
    """Spine placeholder: every pair of devices joined by one link of this rate.

    The cost-model issue replaces it with links and shared media.
    """

    name: str = "default"
    bandwidth_bps: float = 100e6
    latency_s: float = 1e-3

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "bandwidth_bps": self.bandwidth_bps, "latency_s": self.latency_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Network:
        return cls(**data)


@dataclass(frozen=True)
class Cluster:
    devices: tuple[Device, ...]
    network: Network = field(default_factory=Network)
    name: str = "cluster"

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        if not self.devices:
            raise ClusterError("the cluster has no devices: give at least one dora_fx.Device")
        for device in self.devices:
            if not isinstance(device, Device):
                raise ClusterError(
                    f"cluster members must be dora_fx.Device, got {type(device).__name__}"
                )
        names = [d.name for d in self.devices]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ClusterError(f"device names must be unique; repeated: {duplicates}")

    def device(self, name: str) -> Device:
        for device in self.devices:
            if device.name == name:
                return device
        raise ClusterError(
            f"no device named {name!r} in cluster {self.name!r}; it has {self.device_names}"
        )

    @property
    def device_names(self) -> list[str]:
        return [d.name for d in self.devices]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "devices": [d.to_json() for d in self.devices],
            "network": self.network.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cluster:
        return cls(
            devices=tuple(Device.from_json(d) for d in data["devices"]),
            network=Network.from_json(data["network"]),
            name=data.get("name", "cluster"),
        )


def as_cluster(devices: Cluster | Sequence[Device] | Iterable[Device]) -> tuple[Cluster, bool]:
    """Accept a Cluster or a list of Device; the flag says a default network was assumed."""
    if isinstance(devices, Cluster):
        return devices, False
    if isinstance(devices, Device):
        devices = [devices]
    try:
        members = list(devices)
    except TypeError:
        raise ClusterError(
            f"devices must be a dora_fx.Cluster or a list of dora_fx.Device, got "
            f"{type(devices).__name__}"
        ) from None
    return Cluster(devices=tuple(members)), True
