"""Device and network presets. Every number has its source in ``SOURCES`` (rendered into
docs/devices.md by ``sources_markdown()``; a test keeps the two in step).

Peaks are FP32: the graphs dora_fx captures run in the model's dtype, FP32 by default, and
byte counts are in that dtype. A number marked *derived* is computed from spec-sheet figures
(cores x clock x FLOP per cycle); one marked *assumption* is our estimate, to be replaced by
``dora_fx.calibrate()`` run on the real device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .device import Device
from .network import Link, Medium, Network

__all__ = [
    "raspberry_pi_4",
    "raspberry_pi_5",
    "jetson_nano",
    "jetson_orin_nano",
    "jetson_orin_nano_super",
    "jetson_agx_orin",
    "phone_snapdragon_8_gen_2",
    "laptop_core_i7_1165g7",
    "edge_server_t4",
    "wifi5_ap",
    "wifi6_ap",
    "gigabit_switch",
    "cellular_5g",
    "merge_networks",
    "DEVICE_PRESETS",
    "NETWORK_PRESETS",
    "SOURCES",
    "sources_markdown",
]

_GIB = 2**30

# preset -> field -> where the number comes from.
SOURCES: dict[str, dict[str, str]] = {}


def _device(preset: str, sources: Mapping[str, str], **spec: object) -> Callable[[str], Device]:
    SOURCES[preset] = dict(sources)

    def make(name: str = preset) -> Device:
        return Device(name=name, **spec)  # type: ignore[arg-type]

    make.__name__ = preset
    make.__doc__ = f"The {preset} preset (sources: docs/devices.md)."
    return make


raspberry_pi_4 = _device(
    "raspberry_pi_4",
    {
        "dense_flops_per_s": "derived: 4 Cortex-A72 cores x 1.5 GHz x 8 FP32 FLOP/cycle (one 128-bit "
        "NEON FMA per cycle) = 48 GFLOP/s",
        "dense_efficiency": "0.33 = HPL 8 GFLOP/s FP64 measured (feiereisen.net, Pi 4, 64-bit OS) / "
        "24 GFLOP/s FP64 peak of the same units",
        "memory_bandwidth_bytes_per_s": "derived: LPDDR4-3200, 32-bit bus = 12.8 GB/s",
        "memory_efficiency": "0.43 = STREAM 5.5 GB/s measured (sci-pi.org.uk bench/stream) / 12.8 GB/s",
        "memory_bytes": "4 GB model (Raspberry Pi 4 Model B product brief)",
        "busy_power_w": "5.4 W high load, USB tester at the board (chipwired.com, Pi 4 power study)",
        "idle_power_w": "2.2 W idle, same study",
        "op_overhead_s": "assumption: 20 us per eager op on an in-order-ish 1.5 GHz core (this host's "
        "2.8 us x ~7 for the slower core); calibrate() measures it",
    },
    dense_flops_per_s=48e9,
    dense_efficiency=0.33,
    memory_bandwidth_bytes_per_s=12.8e9,
    memory_efficiency=0.43,
    memory_bytes=4 * _GIB,
    busy_power_w=5.4,
    idle_power_w=2.2,
    op_overhead_s=20e-6,
    kind="rpi",
)

raspberry_pi_5 = _device(
    "raspberry_pi_5",
    {
        "dense_flops_per_s": "derived: 4 Cortex-A76 cores x 2.4 GHz x 16 FP32 FLOP/cycle (two 128-bit "
        "FMA pipes) = 153.6 GFLOP/s (BCM2712, Raspberry Pi 5 product brief)",
        "dense_efficiency": "assumption: 0.33, the Pi 4's HPL / peak ratio",
        "memory_bandwidth_bytes_per_s": "derived: LPDDR4X-4267, 32-bit bus = 17.1 GB/s",
        "memory_efficiency": "assumption: 0.43, the Pi 4's STREAM / peak ratio",
        "memory_bytes": "8 GB model (product brief)",
        "busy_power_w": "assumption: 7.5 W CPU-bound (no peripherals); devreviewhub.com reports "
        "up to 14.2 W with peripherals",
        "idle_power_w": "assumption: 2.7 W headless idle; devreviewhub.com reports 4.7 W with "
        "peripherals",
        "op_overhead_s": "assumption: 10 us (sysbench single-core 2737 vs 1478 events/s for Pi 4, "
        "leoncode.co.uk: about 1.85x faster per core)",
    },
    dense_flops_per_s=153.6e9,
    dense_efficiency=0.33,
    memory_bandwidth_bytes_per_s=17.1e9,
    memory_efficiency=0.43,
    memory_bytes=8 * _GIB,
    busy_power_w=7.5,
    idle_power_w=2.7,
    op_overhead_s=10e-6,
    kind="rpi",
)

jetson_nano = _device(
    "jetson_nano",
    {
        "dense_flops_per_s": "derived: NVIDIA's 472 GFLOP/s FP16 for 128 Maxwell cores / 2 = 236 "
        "GFLOP/s FP32",
        "other_flops_per_s": "same CUDA cores run elementwise kernels: 236 GFLOP/s",
        "dense_efficiency": "assumption: 0.6 of peak for cuDNN/cuBLAS FP32 kernels in eager PyTorch",
        "other_efficiency": "assumption: 0.6",
        "memory_bandwidth_bytes_per_s": "25.6 GB/s, 64-bit LPDDR4 (NVIDIA Jetson Nano spec)",
        "memory_efficiency": "assumption: 0.7 of theoretical, typical of STREAM on LPDDR4",
        "memory_bytes": "4 GB (NVIDIA spec)",
        "busy_power_w": "10 W, the module's 10 W power mode (NVIDIA spec: 5-10 W)",
        "idle_power_w": "assumption: 1.5 W module idle",
        "op_overhead_s": "assumption: 30 us per eager op (kernel launch from a 1.43 GHz Cortex-A57)",
    },
    dense_flops_per_s=236e9,
    other_flops_per_s=236e9,
    dense_efficiency=0.6,
    other_efficiency=0.6,
    memory_bandwidth_bytes_per_s=25.6e9,
    memory_efficiency=0.7,
    memory_bytes=4 * _GIB,
    busy_power_w=10.0,
    idle_power_w=1.5,
    op_overhead_s=30e-6,
    kind="jetson",
)

jetson_orin_nano = _device(
    "jetson_orin_nano",
    {
        "dense_flops_per_s": "derived: 1024 CUDA cores x 2 FLOP x 625 MHz = 1.28 TFLOP/s FP32 "
        "(Jetson Orin Nano 8GB datasheet: 1024 cores, max GPU clock 625 MHz)",
        "other_flops_per_s": "same CUDA cores: 1.28 TFLOP/s",
        "dense_efficiency": "assumption: 0.6",
        "other_efficiency": "assumption: 0.6",
        "memory_bandwidth_bytes_per_s": "68 GB/s, 128-bit LPDDR5 (datasheet)",
        "memory_efficiency": "assumption: 0.7",
        "memory_bytes": "8 GB (datasheet)",
        "busy_power_w": "15 W, the top power mode of the original module (datasheet: 7-15 W)",
        "idle_power_w": "assumption: 4 W module idle",
        "op_overhead_s": "assumption: 20 us per eager op (launch from Cortex-A78AE)",
    },
    dense_flops_per_s=1.28e12,
    other_flops_per_s=1.28e12,
    dense_efficiency=0.6,
    other_efficiency=0.6,
    memory_bandwidth_bytes_per_s=68e9,
    memory_efficiency=0.7,
    memory_bytes=8 * _GIB,
    busy_power_w=15.0,
    idle_power_w=4.0,
    op_overhead_s=20e-6,
    kind="jetson",
)

jetson_orin_nano_super = _device(
    "jetson_orin_nano_super",
    {
        "dense_flops_per_s": "derived: 1024 CUDA cores x 2 FLOP x 1.02 GHz = 2.09 TFLOP/s FP32 "
        "(Orin Nano Super developer kit datasheet, Dec 2024: GPU clock 625 MHz -> 1.02 GHz)",
        "other_flops_per_s": "same CUDA cores: 2.09 TFLOP/s",
        "dense_efficiency": "assumption: 0.6",
        "other_efficiency": "assumption: 0.6",
        "memory_bandwidth_bytes_per_s": "102 GB/s (Super datasheet, was 68 GB/s)",
        "memory_efficiency": "assumption: 0.7",
        "memory_bytes": "8 GB (datasheet)",
        "busy_power_w": "25 W, the Super power mode (datasheet: 7-25 W)",
        "idle_power_w": "assumption: 4 W module idle",
        "op_overhead_s": "assumption: 15 us (CPU clock 1.5 -> 1.7 GHz)",
    },
    dense_flops_per_s=2.09e12,
    other_flops_per_s=2.09e12,
    dense_efficiency=0.6,
    other_efficiency=0.6,
    memory_bandwidth_bytes_per_s=102e9,
    memory_efficiency=0.7,
    memory_bytes=8 * _GIB,
    busy_power_w=25.0,
    idle_power_w=4.0,
    op_overhead_s=15e-6,
    kind="jetson",
)

jetson_agx_orin = _device(
    "jetson_agx_orin",
    {
        "dense_flops_per_s": "derived: 2048 CUDA cores x 2 FLOP x 1.3 GHz = 5.32 TFLOP/s FP32 "
        "(Jetson AGX Orin series technical brief: 2048 cores, 1.3 GHz max)",
        "other_flops_per_s": "same CUDA cores: 5.32 TFLOP/s",
        "dense_efficiency": "assumption: 0.6",
        "other_efficiency": "assumption: 0.6",
        "memory_bandwidth_bytes_per_s": "204.8 GB/s, 256-bit LPDDR5 (technical brief)",
        "memory_efficiency": "assumption: 0.7",
        "memory_bytes": "64 GB module (technical brief)",
        "busy_power_w": "60 W, MAXN (technical brief: 15-60 W)",
        "idle_power_w": "assumption: 8 W module idle",
        "op_overhead_s": "assumption: 15 us per eager op",
    },
    dense_flops_per_s=5.32e12,
    other_flops_per_s=5.32e12,
    dense_efficiency=0.6,
    other_efficiency=0.6,
    memory_bandwidth_bytes_per_s=204.8e9,
    memory_efficiency=0.7,
    memory_bytes=64 * _GIB,
    busy_power_w=60.0,
    idle_power_w=8.0,
    op_overhead_s=15e-6,
    kind="jetson",
)

phone_snapdragon_8_gen_2 = _device(
    "phone_snapdragon_8_gen_2",
    {
        "dense_flops_per_s": "derived, CPU (where PyTorch runs on a phone): 1 Cortex-X3 x 3.2 GHz x 32 "
        "+ 4 A715/A710 x 2.8 GHz x 16 + 3 A510 x 2.0 GHz x 8 FP32 FLOP/cycle = 330 GFLOP/s "
        "(core counts and clocks: Qualcomm launch, Nov 2022, as reported by wccftech/gizbot)",
        "dense_efficiency": "assumption: 0.3 (big.LITTLE, thermal limits)",
        "memory_bandwidth_bytes_per_s": "derived: LPDDR5X at 4200 MHz (8.4 GT/s) x 64-bit = 67.2 GB/s",
        "memory_efficiency": "assumption: 0.5",
        "memory_bytes": "assumption: 8 GB, a common flagship configuration",
        "busy_power_w": "assumption: 6 W sustained SoC power under a CPU-bound load",
        "idle_power_w": "assumption: 0.5 W with the screen off",
        "op_overhead_s": "assumption: 10 us per eager op",
    },
    dense_flops_per_s=330e9,
    dense_efficiency=0.3,
    memory_bandwidth_bytes_per_s=67.2e9,
    memory_efficiency=0.5,
    memory_bytes=8 * _GIB,
    busy_power_w=6.0,
    idle_power_w=0.5,
    op_overhead_s=10e-6,
    kind="phone",
)

laptop_core_i7_1165g7 = _device(
    "laptop_core_i7_1165g7",
    {
        "dense_flops_per_s": "derived: 4 cores x 2.8 GHz base x 32 FP32 FLOP/cycle (one AVX-512 FMA "
        "unit) = 358 GFLOP/s (Intel ARK: 4 cores, 2.8 GHz base at 28 W)",
        "dense_efficiency": "assumption: 0.5 for oneDNN/MKL kernels in eager PyTorch",
        "memory_bandwidth_bytes_per_s": "derived: LPDDR4x-4267, 128-bit = 68.3 GB/s (Intel ARK)",
        "memory_efficiency": "assumption: 0.6",
        "memory_bytes": "assumption: 16 GB, a common configuration",
        "busy_power_w": "28 W, the configurable TDP-up (Intel ARK: 12-28 W)",
        "idle_power_w": "assumption: 3 W, laptop idle with the screen off",
        "op_overhead_s": "assumption: 5 us per eager op (this host measures 2.8 us)",
    },
    dense_flops_per_s=358e9,
    dense_efficiency=0.5,
    memory_bandwidth_bytes_per_s=68.3e9,
    memory_efficiency=0.6,
    memory_bytes=16 * _GIB,
    busy_power_w=28.0,
    idle_power_w=3.0,
    op_overhead_s=5e-6,
    kind="laptop",
)

edge_server_t4 = _device(
    "edge_server_t4",
    {
        "dense_flops_per_s": "8.1 TFLOP/s FP32 (NVIDIA T4 datasheet; 65 TFLOP/s FP16 tensor)",
        "other_flops_per_s": "same CUDA cores: 8.1 TFLOP/s",
        "dense_efficiency": "assumption: 0.6",
        "other_efficiency": "assumption: 0.6",
        "memory_bandwidth_bytes_per_s": "320 GB/s GDDR6 (datasheet)",
        "memory_efficiency": "assumption: 0.7",
        "memory_bytes": "16 GB GDDR6 (datasheet)",
        "busy_power_w": "70 W board power (datasheet)",
        "idle_power_w": "assumption: 10 W board idle",
        "op_overhead_s": "assumption: 10 us per eager op (kernel launch from a server CPU)",
    },
    dense_flops_per_s=8.1e12,
    other_flops_per_s=8.1e12,
    dense_efficiency=0.6,
    other_efficiency=0.6,
    memory_bandwidth_bytes_per_s=320e9,
    memory_efficiency=0.7,
    memory_bytes=16 * _GIB,
    busy_power_w=70.0,
    idle_power_w=10.0,
    op_overhead_s=10e-6,
    kind="server",
)

DEVICE_PRESETS: dict[str, Callable[[str], Device]] = {
    f.__name__: f
    for f in (
        raspberry_pi_4,
        raspberry_pi_5,
        jetson_nano,
        jetson_orin_nano,
        jetson_orin_nano_super,
        jetson_agx_orin,
        phone_snapdragon_8_gen_2,
        laptop_core_i7_1165g7,
        edge_server_t4,
    )
}

# -- networks ------------------------------------------------------------------------------

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


def sources_markdown() -> str:
    """The preset tables of docs/devices.md: every number next to its source."""
    out = []
    for preset, make in DEVICE_PRESETS.items():
        device = make(preset)
        out.append(f"### `{preset}`\n")
        out.append("| field | value | source |")
        out.append("|---|---|---|")
        for key, source in SOURCES[preset].items():
            out.append(f"| `{key}` | {getattr(device, key)!r} | {source} |")
        out.append("")
    for preset in ("wifi5_ap", "wifi6_ap", "gigabit_switch", "cellular_5g"):
        out.append(f"### `{preset}`\n")
        out.append("| figure | source |")
        out.append("|---|---|")
        for key, source in SOURCES[preset].items():
            out.append(f"| `{key}` | {source} |")
        out.append("")
    return "\n".join(out)
