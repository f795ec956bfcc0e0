"""Network model: links, shared media, and how concurrent flows divide them.

Every device attaches to one *medium* through a *link* (its uplink/downlink goodput on that
medium, one-way latency to the hub, radio energy per byte). Media are bridged by a router of
unbounded capacity, so a flow ``src -> dst`` crosses at most two hops: up from ``src`` into its
medium, down from ``dst``'s medium.

Two kinds of medium:

* ``shared`` (a Wi-Fi access point): one airtime budget for every hop on it. Sending ``b`` bits
  at station rate ``r`` uses ``b / r`` seconds of air, so a device-to-device flow through the AP
  spends ``b/up_src + b/down_dst``: twice the airtime when both stations have the same rate.
  When two or more flows contend, collisions and back-off leave only ``contention_efficiency``
  of the air usable.
* ``switched`` (a Gigabit switch, a cellular link): every port is full duplex and private, so a
  flow uses ``src``'s up direction and ``dst``'s down direction, each a resource of its own.

Sharing: each resource ``r`` (a medium's air, or one port direction) gives every flow on it the
same rate, the rate at which it is exactly full: ``x_r = cap_r / sum_f a_rf`` where ``a_rf`` is
seconds of resource per bit of flow ``f`` (``1/rate`` of the hop). A flow goes at the smallest
``x_r`` along its path. On one shared medium this is DCF's throughput fairness (every station
gets ``1 / sum(1/r_i)``: the 802.11 performance anomaly, Heusse et al. 2003). It never gives a
flow more when another flow is added or a link gets slower (each ``x_r`` only falls), which
max-min fair water-filling does not guarantee; the price is that capacity a flow cannot use
because it is held back elsewhere is not handed to others (rare here: a flow has two hops).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from ..errors import ClusterError

__all__ = ["Medium", "Link", "Network", "Resource", "MediumKind", "DEFAULT_MEDIUM"]

MediumKind = Literal["shared", "switched"]
_KINDS = ("shared", "switched")
DEFAULT_MEDIUM = "default"

# A resource a flow consumes: ("air", medium) for a shared medium, ("up", device) or
# ("down", device) for a switched port direction.
Resource = tuple[str, str]


@dataclass(frozen=True)
class Medium:
    """A shared Wi-Fi cell or a switched fabric."""

    name: str
    kind: MediumKind = "switched"
    contention_efficiency: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ClusterError(f"Medium.name must be a non-empty string, got {self.name!r}")
        if self.kind not in _KINDS:
            raise ClusterError(
                f"medium {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}"
            )
        value = self.contention_efficiency
        if not _is_number(value) or not 0 < value <= 1:
            raise ClusterError(
                f"medium {self.name!r}: contention_efficiency is the usable fraction of airtime "
                f"under contention, expected (0, 1], got {value!r}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "contention_efficiency": self.contention_efficiency,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Medium:
        return cls(**_known(cls, data, "medium"))


@dataclass(frozen=True)
class Link:
    """One device's attachment to a medium.

    ``up_bps`` / ``down_bps``: goodput (bits/s) the device gets sending / receiving when alone
    on the medium; ``latency_s``: one-way latency to the hub; ``tx_j_per_byte`` /
    ``rx_j_per_byte``: energy its interface spends per byte sent / received.
    """

    device: str
    medium: str
    up_bps: float
    down_bps: float | None = None
    latency_s: float = 0.0
    tx_j_per_byte: float = 0.0
    rx_j_per_byte: float = 0.0

    def __post_init__(self) -> None:
        if self.down_bps is None:
            object.__setattr__(self, "down_bps", self.up_bps)
        for name in ("up_bps", "down_bps"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ClusterError(
                    f"link of device {self.device!r} on medium {self.medium!r}: {name} must be "
                    f"positive and finite (bits per second), got {value!r}"
                )
        for name in ("latency_s", "tx_j_per_byte", "rx_j_per_byte"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ClusterError(
                    f"link of device {self.device!r}: {name} must be >= 0 and finite, got {value!r}"
                )

    @property
    def down(self) -> float:
        assert self.down_bps is not None
        return self.down_bps

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Link:
        return cls(**_known(cls, data, "link"))


@dataclass(frozen=True)
class Network:
    """Media and the links that attach devices to them.

    A device with no link of its own gets the default one: ``bandwidth_bps`` both ways,
    ``latency_s``, on the medium ``default_medium`` (a switch unless listed otherwise), so
    ``Cluster(devices)`` with no network is a private 100 Mb/s link per device.
    """

    name: str = "default"
    bandwidth_bps: float = 100e6
    latency_s: float = 1e-3
    media: tuple[Medium, ...] = ()
    links: tuple[Link, ...] = ()
    default_medium: str = DEFAULT_MEDIUM
    _by_device: dict[str, Link] = field(default_factory=dict, init=False, repr=False, compare=False)
    _by_medium: dict[str, Medium] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _paths: dict[tuple[str, str], list[tuple[Resource, float]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "media", tuple(self.media))
        object.__setattr__(self, "links", tuple(self.links))
        for name in ("bandwidth_bps",):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ClusterError(
                    f"network {self.name!r}: {name} must be positive and finite, got {value!r}"
                )
        if (
            not _is_number(self.latency_s)
            or not math.isfinite(self.latency_s)
            or self.latency_s < 0
        ):
            raise ClusterError(
                f"network {self.name!r}: latency_s must be >= 0, got {self.latency_s!r}"
            )
        media = {m.name: m for m in self.media}
        if len(media) != len(self.media):
            raise ClusterError(f"network {self.name!r}: medium names must be unique")
        if self.default_medium not in media:
            media[self.default_medium] = Medium(self.default_medium, "switched")
        by_device: dict[str, Link] = {}
        for link in self.links:
            if link.medium not in media:
                raise ClusterError(
                    f"network {self.name!r}: link of device {link.device!r} names medium "
                    f"{link.medium!r}, which is not one of {sorted(media)}; add the Medium"
                )
            if link.device in by_device:
                raise ClusterError(
                    f"network {self.name!r}: device {link.device!r} has two links; a device "
                    "attaches to one medium"
                )
            by_device[link.device] = link
        object.__setattr__(self, "_by_device", by_device)
        object.__setattr__(self, "_by_medium", media)

    # -- lookup ---------------------------------------------------------------------------

    def link(self, device: str) -> Link:
        """The device's link (its own, or the default one)."""
        found = self._by_device.get(device)
        if found is not None:
            return found
        return Link(
            device, self.default_medium, self.bandwidth_bps, self.bandwidth_bps, self.latency_s
        )

    def medium(self, name: str) -> Medium:
        try:
            return self._by_medium[name]
        except KeyError:
            raise ClusterError(
                f"network {self.name!r} has no medium {name!r}; it has {sorted(self._by_medium)}"
            ) from None

    @property
    def linked_devices(self) -> list[str]:
        return [link.device for link in self.links]

    # -- paths ----------------------------------------------------------------------------

    def path(self, src: str, dst: str) -> list[tuple[Resource, float]]:
        """Resources a flow ``src -> dst`` uses, each with its seconds per bit."""
        if src == dst:
            return []
        cached = self._paths.get((src, dst))
        if cached is not None:
            return cached
        up, down = self.link(src), self.link(dst)
        hops: list[tuple[Resource, float]] = []
        up_medium, down_medium = self.medium(up.medium), self.medium(down.medium)
        if up_medium.kind == "shared":
            hops.append((("air", up_medium.name), 1.0 / up.up_bps))
        else:
            hops.append((("up", src), 1.0 / up.up_bps))
        if down_medium.kind == "shared":
            hops.append((("air", down_medium.name), 1.0 / down.down))
        else:
            hops.append((("down", dst), 1.0 / down.down))
        # Both hops on one shared medium: one resource, spent twice.
        merged: dict[Resource, float] = {}
        for resource, cost in hops:
            merged[resource] = merged.get(resource, 0.0) + cost
        path = self._paths[(src, dst)] = list(merged.items())
        return path

    def path_latency_s(self, src: str, dst: str) -> float:
        if src == dst:
            return 0.0
        return self.link(src).latency_s + self.link(dst).latency_s

    def capacity(self, resource: Resource, active_flows: int) -> float:
        """Usable fraction of a resource's time with ``active_flows`` flows on it."""
        if resource[0] == "air" and active_flows > 1:
            return self.medium(resource[1]).contention_efficiency
        return 1.0

    def flow_rates_bps(self, flows: Sequence[tuple[str, str]]) -> list[float]:
        """Steady rate of each of several concurrent flows (see the module docstring)."""
        paths = [self.path(src, dst) for src, dst in flows]
        load: dict[Resource, float] = {}
        count: dict[Resource, int] = {}
        for path in paths:
            for resource, cost in path:
                load[resource] = load.get(resource, 0.0) + cost
                count[resource] = count.get(resource, 0) + 1
        rates = []
        for path in paths:
            if not path:
                rates.append(math.inf)
                continue
            rates.append(min(self.capacity(r, count[r]) / load[r] for r, _ in path))
        return rates

    def transfer_time_s(
        self, src: str, dst: str, nbytes: float, concurrent: Iterable[tuple[str, str]] = ()
    ) -> float:
        """Time to move ``nbytes`` from ``src`` to ``dst`` while the ``concurrent`` flows run
        for the whole transfer: latency plus bits over the shared rate."""
        if src == dst or nbytes <= 0:
            return 0.0
        rate = self.flow_rates_bps([(src, dst), *concurrent])[0]
        return self.path_latency_s(src, dst) + 8.0 * nbytes / rate

    def slowdown(self, src: str, dst: str) -> float:
        """How many times longer ``src -> dst`` takes here than over private full-duplex
        ports of the same nominal rates (1 on a switch, 2 through one AP at equal rates)."""
        if src == dst:
            return 1.0
        up, down = self.link(src), self.link(dst)
        private_bps = min(up.up_bps, down.down)
        return private_bps / self.flow_rates_bps([(src, dst)])[0]

    # -- energy ---------------------------------------------------------------------------

    def radio_energy_j(self, src: str, dst: str, nbytes: float) -> float:
        if src == dst:
            return 0.0
        return nbytes * (self.link(src).tx_j_per_byte + self.link(dst).rx_j_per_byte)

    # -- editing and serialization ---------------------------------------------------------

    def with_link(self, link: Link) -> Network:
        """A copy where ``link`` replaces the device's link (or adds one)."""
        links = tuple(lk for lk in self.links if lk.device != link.device) + (link,)
        return replace(self, links=links)

    def with_medium(self, medium: Medium) -> Network:
        media = tuple(m for m in self.media if m.name != medium.name) + (medium,)
        return replace(self, media=media)

    def scaled(self, factor: float) -> Network:
        """Every link's bandwidth times ``factor`` (for what-if studies)."""
        if not _is_number(factor) or factor <= 0:
            raise ClusterError(f"bandwidth scale factor must be positive, got {factor!r}")
        return replace(
            self,
            bandwidth_bps=self.bandwidth_bps * factor,
            links=tuple(
                replace(lk, up_bps=lk.up_bps * factor, down_bps=lk.down * factor)
                for lk in self.links
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bandwidth_bps": self.bandwidth_bps,
            "latency_s": self.latency_s,
            "default_medium": self.default_medium,
            "media": [m.to_json() for m in self.media],
            "links": [lk.to_json() for lk in self.links],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Network:
        return cls(
            name=data.get("name", "default"),
            bandwidth_bps=data.get("bandwidth_bps", 100e6),
            latency_s=data.get("latency_s", 1e-3),
            default_medium=data.get("default_medium", DEFAULT_MEDIUM),
            media=tuple(Medium.from_json(m) for m in data.get("media", ())),
            links=tuple(Link.from_json(lk) for lk in data.get("links", ())),
        )

    def __str__(self) -> str:
        if not self.links:
            return (
                f"{self.name}: a private {self.bandwidth_bps / 1e6:g} Mb/s link per device, "
                f"{self.latency_s * 1e3:g} ms latency"
            )
        media = ", ".join(f"{m.name} ({m.kind})" for m in self.media)
        return f"{self.name}: {len(self.links)} links on {media}"

    def describe(self) -> list[str]:
        lines = [f"network {self.name}"]
        used = {link.medium for link in self.links}
        for medium in self._by_medium.values():
            if medium.name not in used:
                continue
            extra = (
                f" contention_efficiency={medium.contention_efficiency:g}"
                if medium.kind == "shared"
                else ""
            )
            lines.append(f"  medium {medium.name} ({medium.kind}){extra}")
        for link in self.links:
            lines.append(
                f"  link {link.device} -> {link.medium}: up {link.up_bps / 1e6:g} Mb/s, down "
                f"{link.down / 1e6:g} Mb/s, latency {link.latency_s * 1e3:g} ms"
            )
        lines.append(
            f"  other devices: {self.bandwidth_bps / 1e6:g} Mb/s private link on "
            f"{self.default_medium}, latency {self.latency_s * 1e3:g} ms"
        )
        return lines


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _known(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ClusterError(
            f"{what} JSON has unknown fields {unknown}; expected some of {sorted(known)}"
        )
    return data
