"""Device and network presets. Every number has its source in ``SOURCES`` (rendered into
docs/devices.md by ``sources_markdown()``; a test keeps the two in step): ``devices`` and
``networks`` write each figure once, beside its source."""

from __future__ import annotations

from .devices import (
    DEVICE_PRESETS,
    edge_server_t4,
    jetson_agx_orin,
    jetson_nano,
    jetson_orin_nano,
    jetson_orin_nano_super,
    laptop_core_i7_1165g7,
    phone_snapdragon_8_gen_2,
    raspberry_pi_4,
    raspberry_pi_5,
)
from .networks import (
    NETWORK_PRESETS,
    cellular_5g,
    gigabit_switch,
    merge_networks,
    wifi5_ap,
    wifi6_ap,
)
from .sources import SOURCES

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
