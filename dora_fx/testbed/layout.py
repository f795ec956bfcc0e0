"""Testbed layout: the names and addresses a cluster gets as network namespaces (pure).

Device names are free text ("edge_server", "Jetson Orin #2"), but a namespace name and, above
all, an interface name (15 bytes at most, no ``/``, ``:`` or spaces) are not. ``Layout`` derives
a short safe name per device and keeps the table: device -> namespace, the interface inside
it, the router-side end of its veth, its address. Every name a testbed makes starts with its
``prefix`` and a ``-``, and a prefix holds no ``-``, so ``{prefix}-*`` finds exactly one
testbed's namespaces (and router-side links) and nothing of another prefix's.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from ..cost_models.cluster import Cluster
from ..errors import DoraError

__all__ = [
    "TestbedError",
    "DeviceSlot",
    "MediumSlot",
    "Layout",
    "check_prefix",
    "SUBNET",
    "PREFIX_LEN_MAX",
]

SUBNET = "10.77.0"  # every testbed is isolated from the root namespace, so all can share it
NETMASK_BITS = 24
PREFIX_LEN_MAX = 6  # "{prefix}-{short}" must fit an interface name (15 bytes)
SHORT_LEN_MAX = 8
DEVICES_MAX = 250  # addresses .1 to .250 of the /24
_RESERVED = re.compile(r"^(lo|hub|air\d+)$")  # loopback, the router's namespace, the ifbs


class TestbedError(DoraError, RuntimeError):
    """The testbed cannot be made, found or torn down here; the message says what to do."""

    __test__ = False  # not a pytest test class, despite the name


def check_prefix(prefix: str) -> str:
    """A prefix is 1 to 6 lowercase letters or digits, starting with a letter."""
    pattern = rf"[a-z][a-z0-9]{{0,{PREFIX_LEN_MAX - 1}}}"
    if not isinstance(prefix, str) or not re.fullmatch(pattern, prefix):
        raise TestbedError(
            f"testbed prefix must be 1 to {PREFIX_LEN_MAX} lowercase letters or digits starting "
            f"with a letter (it starts every namespace and interface name), got {prefix!r}"
        )
    return prefix


@dataclass(frozen=True)
class DeviceSlot:
    """One device of the testbed: its namespace, interfaces, address and link."""

    device: str
    index: int
    namespace: str
    interface: str  # the device's end of its veth, inside its namespace
    router_interface: str  # the other end, in the router's namespace
    address: str
    medium: str
    medium_kind: str
    up_bps: float
    down_bps: float


@dataclass(frozen=True)
class MediumSlot:
    """A shared medium: the ifb device in the router's namespace all its traffic passes."""

    medium: str
    ifb: str
    stations: tuple[str, ...]  # device names


@dataclass(frozen=True)
class Layout:
    """Names, addresses and links of a cluster's testbed (``Layout.of(cluster, prefix)``)."""

    prefix: str
    cluster_name: str
    router_namespace: str
    devices: tuple[DeviceSlot, ...]
    shared_media: tuple[MediumSlot, ...]

    @classmethod
    def of(cls, cluster: Cluster, prefix: str = "dora") -> Layout:
        check_prefix(prefix)
        if len(cluster.devices) > DEVICES_MAX:
            raise TestbedError(
                f"cluster {cluster.name!r} has {len(cluster.devices)} devices; the testbed's "
                f"/24 holds {DEVICES_MAX}"
            )
        shorts = short_names(cluster.device_names)
        slots = tuple(_slot(cluster, prefix, k, short) for k, short in enumerate(shorts))
        shared: dict[str, list[str]] = {}
        for slot in slots:
            if slot.medium_kind == "shared":
                shared.setdefault(slot.medium, []).append(slot.device)
        media = tuple(
            MediumSlot(medium, f"{prefix}-air{m}", tuple(stations))
            for m, (medium, stations) in enumerate(shared.items())
        )
        return cls(prefix, cluster.name, f"{prefix}-hub", slots, media)

    def slot(self, device: str) -> DeviceSlot:
        for slot in self.devices:
            if slot.device == device:
                return slot
        raise TestbedError(
            f"testbed {self.prefix!r} has no device {device!r}; it has "
            f"{[s.device for s in self.devices]}"
        )

    @property
    def namespaces(self) -> list[str]:
        return [self.router_namespace] + [s.namespace for s in self.devices]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layout:
        return cls(
            prefix=data["prefix"],
            cluster_name=data["cluster_name"],
            router_namespace=data["router_namespace"],
            devices=tuple(DeviceSlot(**d) for d in data["devices"]),
            shared_media=tuple(
                MediumSlot(m["medium"], m["ifb"], tuple(m["stations"]))
                for m in data["shared_media"]
            ),
        )


def _slot(cluster: Cluster, prefix: str, index: int, short: str) -> DeviceSlot:
    name = cluster.device_names[index]
    link = cluster.link(name)
    return DeviceSlot(
        device=name,
        index=index,
        namespace=f"{prefix}-{short}",
        interface=short,
        router_interface=f"{prefix}-{short}",
        address=f"{SUBNET}.{index + 1}",
        medium=link.medium,
        medium_kind=cluster.network.medium(link.medium).kind,
        up_bps=link.up_bps,
        down_bps=link.down,
    )


def short_names(devices: list[str]) -> list[str]:
    """A unique interface-safe name per device, at most 8 of ``[a-z0-9_]``, starting with a
    letter: the device name lowercased and stripped of other characters, cut, and given ``_k``
    (k its index) where two would clash or the name is reserved (``lo``, ``hub``, ``air0``)."""
    taken: set[str] = set()
    names = []
    for k, device in enumerate(devices):
        base = re.sub(r"[^a-z0-9_]", "", device.lower())
        if not base or not base[0].isalpha():
            base = ("d" + base) if base else f"dev{k}"
        short, attempt = base[:SHORT_LEN_MAX], 0
        while short in taken or _RESERVED.match(short):
            suffix = f"_{k}" if attempt == 0 else f"_{k}x{attempt}"
            short = base[: SHORT_LEN_MAX - len(suffix)] + suffix
            attempt += 1
        taken.add(short)
        names.append(short)
    return names
