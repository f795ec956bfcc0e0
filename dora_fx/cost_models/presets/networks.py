"""Network presets: Wi-Fi access points (one shared medium), a Gigabit switch, a 5G cell, and
``merge_networks``; the figures' sources land in ``sources.SOURCES``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ..network import Link, Medium, Network
from .sources import SOURCES

__all__ = [
    "wifi5_ap",
    "wifi6_ap",
    "gigabit_switch",
    "cellular_5g",
    "merge_networks",
    "NETWORK_PRESETS",
]

# One client gets 65% of the PHY rate at best (REFERENCES: 65-70%); under contention 33-50%
# of PHY in aggregate, so the usable fraction of airtime with several contenders is
# 0.50 / 0.675 = 0.74.
_WIFI_GOODPUT_FRACTION = 0.65
_WIFI5_CONTENTION = 0.74
# 802.11ax adds OFDMA and BSS colouring, which cut the contention loss.
_WIFI6_CONTENTION = 0.85
# Radio power while sending / receiving (802.11n NIC, Halperin et al., HotPower 2010: ~1.3 W
# transmit, ~0.95 W receive); per byte = power / goodput in bytes/s.
_WIFI_TX_W, _WIFI_RX_W = 1.3, 0.95

SOURCES["wifi5_ap"] = {
    "up_bps (2x2)": "derived: 802.11ac 80 MHz 2 streams MCS9 PHY 866.7 Mb/s x 0.65 = 563 Mb/s",
    "up_bps (1x1)": "derived: 433.3 Mb/s PHY (1 stream, e.g. the Pi's CYW43455) x 0.65 = 282 Mb/s",
    "goodput fraction 0.65": "REFERENCES: one client gets 65-70% of PHY at best",
    "contention_efficiency": "0.74 = 50% / 67.5% (REFERENCES: 33-50% of PHY under contention)",
    "latency_s": "assumption: 1 ms one way per hop, an idle home AP",
    "tx_j_per_byte": "1.3 W transmit (Halperin et al., HotPower 2010, 802.11n NIC) / goodput",
    "rx_j_per_byte": "0.95 W receive, same source / goodput",
}
SOURCES["wifi6_ap"] = {
    "up_bps (2x2)": "derived: 802.11ax 80 MHz 2 streams MCS11 PHY 1201 Mb/s x 0.65 = 781 Mb/s",
    "up_bps (1x1)": "derived: 600.5 Mb/s PHY x 0.65 = 390 Mb/s",
    "contention_efficiency": "assumption: 0.85 (OFDMA and BSS colouring cut contention loss)",
    "latency_s": "assumption: 1 ms one way per hop",
    "tx_j_per_byte": "1.3 W / goodput (as Wi-Fi 5)",
    "rx_j_per_byte": "0.95 W / goodput (as Wi-Fi 5)",
}
SOURCES["gigabit_switch"] = {
    "up_bps": "940 Mb/s TCP goodput per direction, full duplex (REFERENCES)",
    "latency_s": "assumption: 0.1 ms one way per hop (stack + store-and-forward)",
    "tx_j_per_byte": "assumption: 0.5 W per GbE PHY / 117.5 MB/s = 4.3 nJ/B",
    "rx_j_per_byte": "assumption: as tx",
}
SOURCES["cellular_5g"] = {
    "up_bps": "assumption: 60 Mb/s uplink, mid-band 5G (uplink is the bottleneck: Ghoshal et al., "
    "'An in-depth study of uplink performance of 5G mmWave networks', 2022)",
    "down_bps": "assumption: 300 Mb/s downlink (Narayanan et al., 'A first look at commercial 5G "
    "performance on smartphones', WWW 2020: mid-band 100-200+ Mb/s)",
    "latency_s": "assumption: 15 ms one way (about 30 ms RTT to the edge)",
    "tx_j_per_byte": "assumption: 2.5 W modem transmit power / 7.5 MB/s = 333 nJ/B",
    "rx_j_per_byte": "assumption: 1.5 W / 37.5 MB/s = 40 nJ/B",
}


def _wifi(
    name: str,
    devices: Iterable[str],
    streams: Mapping[str, int] | None,
    phy_per_stream_bps: float,
    contention_efficiency: float,
) -> Network:
    medium = Medium(name, "shared", contention_efficiency)
    links = []
    for device in devices:
        goodput = _WIFI_GOODPUT_FRACTION * phy_per_stream_bps * (streams or {}).get(device, 2)
        links.append(
            Link(
                device,
                name,
                goodput,
                goodput,
                latency_s=1e-3,
                tx_j_per_byte=_WIFI_TX_W / (goodput / 8),
                rx_j_per_byte=_WIFI_RX_W / (goodput / 8),
            )
        )
    return Network(name, media=(medium,), links=tuple(links))


def wifi5_ap(
    devices: Iterable[str], streams: Mapping[str, int] | None = None, name: str = "wifi5"
) -> Network:
    """One 802.11ac (80 MHz) access point shared by ``devices``; ``streams`` gives a device's
    spatial streams (default 2)."""
    return _wifi(name, devices, streams, 433.3e6, _WIFI5_CONTENTION)


def wifi6_ap(
    devices: Iterable[str], streams: Mapping[str, int] | None = None, name: str = "wifi6"
) -> Network:
    """One 802.11ax (80 MHz) access point shared by ``devices``."""
    return _wifi(name, devices, streams, 600.5e6, _WIFI6_CONTENTION)


def gigabit_switch(devices: Iterable[str], name: str = "gige") -> Network:
    """A non-blocking Gigabit Ethernet switch: a private full-duplex port per device."""
    energy = 0.5 / (940e6 / 8)
    links = tuple(
        Link(d, name, 940e6, 940e6, latency_s=0.1e-3, tx_j_per_byte=energy, rx_j_per_byte=energy)
        for d in devices
    )
    return Network(name, media=(Medium(name, "switched"),), links=links)


def cellular_5g(devices: Iterable[str], name: str = "5g") -> Network:
    """A 5G cell seen from each device as a private, asymmetric link to the edge."""
    links = tuple(
        Link(
            d,
            name,
            60e6,
            300e6,
            latency_s=15e-3,
            tx_j_per_byte=2.5 / 7.5e6,
            rx_j_per_byte=1.5 / 37.5e6,
        )
        for d in devices
    )
    return Network(name, media=(Medium(name, "switched"),), links=links)


def merge_networks(name: str, *networks: Network) -> Network:
    """One network holding the media and links of several (bridged by the router)."""
    media: list[Medium] = []
    links: list[Link] = []
    for network in networks:
        media += [m for m in network.media if m.name not in {x.name for x in media}]
        links += list(network.links)
    return Network(name, media=tuple(media), links=tuple(links))


NETWORK_PRESETS: dict[str, Callable[..., Network]] = {
    "wifi5": wifi5_ap,
    "wifi6": wifi6_ap,
    "gige": gigabit_switch,
    "5g": cellular_5g,
}
