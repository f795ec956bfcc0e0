"""Testbed shaping: the ``tc`` commands that give each link its rates (pure: argv lists).

Switched medium (a private full-duplex port per device): an htb cap on the device's end of its
veth (egress = its ``up_bps``) and one on the router's end (egress towards the device = its
``down_bps``). A flow ``src -> dst`` is held to ``min(up_src, down_dst)``, as in the model.

Shared medium (a Wi-Fi AP's airtime): every packet a station sends to the AP (the ingress of
its router-side veth) and every packet the AP sends to a station (that veth's egress) is
redirected into the medium's one ``ifb`` device, whose htb has one parent class, the medium,
and under it a class per station and direction with that hop's rate as its ceiling. Traffic
between two stations of one AP passes the ifb twice, up and down, and is counted twice against
the parent: a flow alone gets half the station rate, two flows share the air. The ifb cannot
see which interface a packet came from, so the hop is read from the IP TTL: devices send with
TTL 64 (set in every namespace) and the router decrements it once, so on the ifb TTL 64 with
source S is S's uplink and TTL 63 with destination D is D's downlink. Anything else (ARP, a
program that sets its own TTL) is charged to a ``misc`` class of the medium.

Approximations (no netem, fq_codel or cake on this kernel; htb counts bytes, not time):

* Airtime is bytes at one rate. The parent's rate is the fastest hop of the medium, and every
  hop costs its bytes at that rate, whereas the model charges ``b / r_hop`` seconds of air. This
  is exact when the stations' rates are equal. A slower hop's class ceiling is the model's
  rate of a flow between its station and a fastest one, ``1/(1/r_hop + 1/r_max)``, so such a
  flow alone gets the model's rate: ``rpi4 -> phone`` (smart_home's single-stream Pi, 282
  Mb/s beside 563) gets ``1/(1/282 + 1/563)`` = 188 Mb/s (it got 281 when the ceiling was
  the hop's rate, which made smart_home runs 20-40% faster than simulated). Two slow
  stations get 188 where the model says 141, a slow station and a device off the medium 188
  where it says 282, and under contention a slow station's bytes take no more air than a
  fast one's (the 802.11 performance anomaly is reproduced for a flow alone, not for the
  fast stations a slow one slows down).
* ``contention_efficiency`` (the air lost to collisions once two flows contend) is not applied:
  concurrent flows share the whole parent rate.
* Fairness between contending hops is htb's (equal quanta, so equal bytes per round), close to
  DCF's equal throughput per station but not the model's exact shares.
* One-way latency (``Link.latency_s``) is left out: htb can only rate-limit, and netem, which
  delays packets, is missing. Transfers are shaped in rate only.
* Rates are goodput. htb counts whole Ethernet frames, so it is given ``goodput x 1514/1448``
  (a full 1500-byte-MTU TCP segment with timestamps carries 1448 payload bytes in 1514 on the
  wire); bulk TCP then measures the configured goodput. Small messages see a little less.
"""

from __future__ import annotations

from collections.abc import Sequence

from .layout import DeviceSlot, Layout, MediumSlot

__all__ = [
    "Command",
    "WIRE_BYTES_PER_PAYLOAD_BYTE",
    "DEVICE_TTL",
    "wire_rate_bps",
    "cap_commands",
    "air_commands",
    "shaping_lines",
]

Command = tuple[str, ...]
WIRE_BYTES_PER_PAYLOAD_BYTE = 1514 / 1448
DEVICE_TTL = 64
QUANTUM_BYTES = 65536  # equal quanta: contending classes get equal bytes per round
IFB_QUEUE_PACKETS = 1000  # an ifb's default queue (32 packets) drops bursts of a fast sender
_PARENT, _MISC, _UP, _DOWN = 0x1, 0xF, 0x1000, 0x2000
_MISC_RATE_BPS = 1e6  # assured rate of the misc class (ARP and the like): it borrows the rest
# Token buckets of 2 ms of traffic (two frames at least): with htb's default (about one frame at
# high rates) a Gigabit cap lost 3-5% here, as the qdisc is not always run in time; a larger
# bucket lets longer bursts past the rate.
BURST_S = 2e-3
_BURST_BYTES_MIN = 2 * 1514


def wire_rate_bps(goodput_bps: float) -> float:
    """The htb rate (whole frames) at which bulk TCP gets ``goodput_bps`` of payload."""
    return goodput_bps * WIRE_BYTES_PER_PAYLOAD_BYTE


def _bits(rate_bps: float) -> str:
    return f"{max(1, round(rate_bps))}bit"


def _burst(rate_bps: float) -> str:
    return f"{max(_BURST_BYTES_MIN, round(rate_bps / 8 * BURST_S))}b"


def _class(
    namespace: str, dev: str, parent: str, minor: int, rate_bps: float, ceil_bps: float
) -> Command:
    return (
        "tc", "-n", namespace, "class", "add", "dev", dev, "parent", parent,
        "classid", f"1:{minor:x}", "htb", "rate", _bits(rate_bps), "ceil", _bits(ceil_bps),
        "burst", _burst(rate_bps), "cburst", _burst(ceil_bps), "quantum", str(QUANTUM_BYTES),
    )  # fmt: skip


def cap_commands(namespace: str, interface: str, goodput_bps: float) -> list[Command]:
    """An htb cap on ``interface``'s egress: one class, everything in it."""
    rate = wire_rate_bps(goodput_bps)
    return [
        ("tc", "-n", namespace, "qdisc", "add", "dev", interface, "root", "handle", "1:",
         "htb", "default", f"{_PARENT:x}"),
        _class(namespace, interface, "1:", _PARENT, rate, rate),
    ]  # fmt: skip


def air_commands(
    router_namespace: str, medium: MediumSlot, stations: Sequence[DeviceSlot]
) -> list[Command]:
    """The medium's ifb, its htb (medium, per-hop classes, misc), the TTL filters that sort
    hops into classes, and the redirects of every station's router-side veth into the ifb."""
    ns, ifb = router_namespace, medium.ifb
    hops = [wire_rate_bps(s.up_bps) for s in stations] + [
        wire_rate_bps(s.down_bps) for s in stations
    ]
    air = max(hops)
    assured = air / (len(hops) + 1)
    # A slower hop's ceiling: the model's rate of a flow between its station and a fastest
    # one, 1 / (1/r + 1/air), so such a flow alone gets the model's airtime (see the doc)
    ceiling = {rate: rate if rate >= air else 1.0 / (1.0 / rate + 1.0 / air) for rate in hops}
    commands: list[Command] = [
        ("ip", "-n", ns, "link", "add", "name", ifb, "type", "ifb"),
        ("ip", "-n", ns, "link", "set", "dev", ifb, "txqueuelen", str(IFB_QUEUE_PACKETS), "up"),
        ("tc", "-n", ns, "qdisc", "add", "dev", ifb, "root", "handle", "1:", "htb",
         "default", f"{_MISC:x}"),
        _class(ns, ifb, "1:", _PARENT, air, air),
        _class(ns, ifb, "1:1", _MISC, min(_MISC_RATE_BPS, air), air),
    ]  # fmt: skip
    for j, station in enumerate(stations):
        up = ceiling[wire_rate_bps(station.up_bps)]
        down = ceiling[wire_rate_bps(station.down_bps)]
        commands += [
            _class(ns, ifb, "1:1", _UP + j, min(assured, up), up),
            _class(ns, ifb, "1:1", _DOWN + j, min(assured, down), down),
            _hop_filter(ns, ifb, "1", DEVICE_TTL, "src", station.address, _UP + j),
            _hop_filter(ns, ifb, "2", DEVICE_TTL - 1, "dst", station.address, _DOWN + j),
            *_redirects(ns, station.router_interface, ifb),
        ]
    return commands


def _hop_filter(
    ns: str, ifb: str, prio: str, ttl: int, field: str, address: str, minor: int
) -> Command:
    # u32 has no "ip ttl" selector: the TTL is byte 8 of the IPv4 header
    return (
        "tc", "-n", ns, "filter", "add", "dev", ifb, "parent", "1:", "protocol", "ip",
        "prio", prio, "u32", "match", "u8", str(ttl), "0xff", "at", "8",
        "match", "ip", field, f"{address}/32", "flowid", f"1:{minor:x}",
    )  # fmt: skip


def _redirects(ns: str, interface: str, ifb: str) -> list[Command]:
    every_packet = ("protocol", "all", "u32", "match", "u32", "0", "0")
    redirect = ("action", "mirred", "egress", "redirect", "dev", ifb)
    return [
        ("tc", "-n", ns, "qdisc", "add", "dev", interface, "clsact"),
        ("tc", "-n", ns, "filter", "add", "dev", interface, "ingress", *every_packet, *redirect),
        ("tc", "-n", ns, "filter", "add", "dev", interface, "egress", *every_packet, *redirect),
    ]


def shaping_lines(layout: Layout) -> list[str]:
    """What shapes each device's traffic, one line per device (for ``status``)."""
    lines = []
    for slot in layout.devices:
        rates = f"up {slot.up_bps / 1e6:g} Mb/s, down {slot.down_bps / 1e6:g} Mb/s"
        if slot.medium_kind == "shared":
            ifb = next(m.ifb for m in layout.shared_media if m.medium == slot.medium)
            where = f"shared air of {slot.medium!r} (htb on {ifb} in {layout.router_namespace})"
        else:
            where = f"private port on {slot.medium!r} (htb on {slot.interface} and " + (
                f"{slot.router_interface})"
            )
        lines.append(f"{slot.device}: {rates}, {where}")
    return lines
