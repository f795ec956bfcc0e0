"""A cluster: devices plus the network joining them. Printable, JSON round-trip, editable."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ClusterError
from .device import Device
from .network import Link, Medium, Network

__all__ = ["Cluster", "Link", "Medium", "Network", "as_cluster"]


@dataclass(frozen=True)
class Cluster:
    """Devices, the network joining them, and ``source``: the device where requests enter and
    results are wanted (a smart home's phone, a street's camera); None: wherever the plan's
    first stage runs, results left where they are computed."""

    devices: tuple[Device, ...]
    network: Network = field(default_factory=Network)
    name: str = "cluster"
    source: str | None = None

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
        if not isinstance(self.network, Network):
            raise ClusterError(
                f"Cluster.network must be a dora_fx Network, got {type(self.network).__name__}"
            )
        strangers = sorted(set(self.network.linked_devices) - set(names))
        if strangers:
            raise ClusterError(
                f"cluster {self.name!r}: network {self.network.name!r} has links for {strangers}, "
                f"which are not devices of the cluster ({names}); remove the links or add the devices"
            )
        if self.source is not None and self.source not in names:
            raise ClusterError(
                f"cluster {self.name!r}: source device {self.source!r} is not one of its devices "
                f"({names}); name one of them, or None"
            )

    def device(self, name: str) -> Device:
        for device in self.devices:
            if device.name == name:
                return device
        raise ClusterError(
            f"no device named {name!r} in cluster {self.name!r}; it has {self.device_names}"
        )

    def __contains__(self, name: object) -> bool:
        return any(d.name == name for d in self.devices)

    @property
    def device_names(self) -> list[str]:
        return [d.name for d in self.devices]

    def link(self, name: str) -> Link:
        self.device(name)
        return self.network.link(name)

    # -- editing ----------------------------------------------------------------------------

    def with_device(self, device: Device, link: Link | None = None) -> Cluster:
        """A copy with ``device`` added, or replacing the device of the same name."""
        devices = tuple(d for d in self.devices if d.name != device.name)
        position = self.device_names.index(device.name) if device.name in self else len(devices)
        devices = devices[:position] + (device,) + devices[position:]
        network = self.network if link is None else self.network.with_link(link)
        return replace(self, devices=devices, network=network)

    def without_device(self, name: str) -> Cluster:
        self.device(name)
        links = tuple(lk for lk in self.network.links if lk.device != name)
        return replace(
            self,
            devices=tuple(d for d in self.devices if d.name != name),
            network=replace(self.network, links=links),
            source=None if self.source == name else self.source,
        )

    def with_network(self, network: Network) -> Cluster:
        return replace(self, network=network)

    def replace(self, **changes: Any) -> Cluster:
        return replace(self, **changes)

    # -- serialization --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "devices": [d.to_json() for d in self.devices],
            "network": self.network.to_json(),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cluster:
        if not isinstance(data, dict) or "devices" not in data:
            raise ClusterError("cluster JSON must be an object with a 'devices' list")
        return cls(
            devices=tuple(Device.from_json(d) for d in data["devices"]),
            network=Network.from_json(data.get("network", {})),
            name=data.get("name", "cluster"),
            source=data.get("source"),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def loads(cls, text: str) -> Cluster:
        return cls.from_json(json.loads(text))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.dumps() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Cluster:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ClusterError(f"cannot read cluster file {path}: {exc}") from None
        try:
            return cls.loads(text)
        except json.JSONDecodeError as exc:
            raise ClusterError(f"cluster file {path} is not JSON: {exc}") from None

    def __str__(self) -> str:
        head = (
            f"{'device':<14} {'kind':<10} {'dense TFLOP/s':>13} {'mem BW GB/s':>11} "
            f"{'memory GiB':>10} {'busy W':>7} {'idle W':>7}  link"
        )
        lines = [f"cluster {self.name}", head]
        for d in self.devices:
            link = self.network.link(d.name)
            lines.append(
                f"{d.name:<14} {d.kind:<10} {d.sustained_dense_flops_per_s / 1e12:>13.3f} "
                f"{d.sustained_bandwidth_bytes_per_s / 1e9:>11.1f} {d.memory_bytes / 2**30:>10.1f} "
                f"{d.busy_power_w:>7.1f} {d.idle_power_w:>7.1f}  {link.medium} "
                f"{link.up_bps / 1e6:g}/{link.down / 1e6:g} Mb/s"
            )
        lines += self.network.describe()
        return "\n".join(lines)


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
