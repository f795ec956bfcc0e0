"""Device presets: each field of each preset written once, with its value and its source
(``_device``); the sources land in ``sources.SOURCES``.

Peaks are FP32: the graphs dora_fx captures run in the model's dtype, FP32 by default, and
byte counts are in that dtype. A number marked *derived* is computed from spec-sheet figures
(cores x clock x FLOP per cycle); one marked *assumption* is our estimate, to be replaced by
``dora_fx.calibrate()`` run on the real device.
"""

from __future__ import annotations

from collections.abc import Callable

from ..device import Device
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
    "DEVICE_PRESETS",
]

_GIB = 2**30



def _device(preset: str, kind: str, **fields: tuple[float, str]) -> Callable[[str], Device]:
    """A preset: each field given once, as ``(value, where the value comes from)``."""
    for key, field in fields.items():
        if not (isinstance(field, tuple) and len(field) == 2 and isinstance(field[1], str)):
            raise TypeError(f"preset {preset!r}: {key} must be (value, source), got {field!r}")
    SOURCES[preset] = {key: source for key, (_, source) in fields.items()}
    spec = {key: value for key, (value, _) in fields.items()}

    def make(name: str = preset) -> Device:
        return Device(name=name, kind=kind, **spec)  # type: ignore[arg-type]

    make.__name__ = preset
    make.__doc__ = f"The {preset} preset (sources: docs/devices.md)."
    return make


raspberry_pi_4 = _device(
    "raspberry_pi_4",
    kind="rpi",
    dense_flops_per_s=(
        48e9,
        "derived: 4 Cortex-A72 cores x 1.5 GHz x 8 FP32 FLOP/cycle (one 128-bit NEON FMA per "
        "cycle) = 48 GFLOP/s"
    ),
    dense_efficiency=(
        0.33,
        "0.33 = HPL 8 GFLOP/s FP64 measured (feiereisen.net, Pi 4, 64-bit OS) / 24 GFLOP/s FP64 "
        "peak of the same units"
    ),
    memory_bandwidth_bytes_per_s=(12.8e9, "derived: LPDDR4-3200, 32-bit bus = 12.8 GB/s"),
    memory_efficiency=(
        0.43,
        "0.43 = STREAM 5.5 GB/s measured (sci-pi.org.uk bench/stream) / 12.8 GB/s"
    ),
    memory_bytes=(4 * _GIB, "4 GB model (Raspberry Pi 4 Model B product brief)"),
    busy_power_w=(
        5.4,
        "5.4 W high load, USB tester at the board (chipwired.com, Pi 4 power study)"
    ),
    idle_power_w=(2.2, "2.2 W idle, same study"),
    op_overhead_s=(
        20e-6,
        "assumption: 20 us per eager op on an in-order-ish 1.5 GHz core (this host's 2.8 us x ~7 "
        "for the slower core); calibrate() measures it"
    ),
)

raspberry_pi_5 = _device(
    "raspberry_pi_5",
    kind="rpi",
    dense_flops_per_s=(
        153.6e9,
        "derived: 4 Cortex-A76 cores x 2.4 GHz x 16 FP32 FLOP/cycle (two 128-bit FMA pipes) = "
        "153.6 GFLOP/s (BCM2712, Raspberry Pi 5 product brief)"
    ),
    dense_efficiency=(0.33, "assumption: 0.33, the Pi 4's HPL / peak ratio"),
    memory_bandwidth_bytes_per_s=(17.1e9, "derived: LPDDR4X-4267, 32-bit bus = 17.1 GB/s"),
    memory_efficiency=(0.43, "assumption: 0.43, the Pi 4's STREAM / peak ratio"),
    memory_bytes=(8 * _GIB, "8 GB model (product brief)"),
    busy_power_w=(
        7.5,
        "assumption: 7.5 W CPU-bound (no peripherals); devreviewhub.com reports up to 14.2 W with "
        "peripherals"
    ),
    idle_power_w=(
        2.7,
        "assumption: 2.7 W headless idle; devreviewhub.com reports 4.7 W with peripherals"
    ),
    op_overhead_s=(
        10e-6,
        "assumption: 10 us (sysbench single-core 2737 vs 1478 events/s for Pi 4, leoncode.co.uk: "
        "about 1.85x faster per core)"
    ),
)

jetson_nano = _device(
    "jetson_nano",
    kind="jetson",
    dense_flops_per_s=(
        236e9,
        "derived: NVIDIA's 472 GFLOP/s FP16 for 128 Maxwell cores / 2 = 236 GFLOP/s FP32"
    ),
    other_flops_per_s=(236e9, "same CUDA cores run elementwise kernels: 236 GFLOP/s"),
    dense_efficiency=(
        0.6,
        "assumption: 0.6 of peak for cuDNN/cuBLAS FP32 kernels in eager PyTorch"
    ),
    other_efficiency=(0.6, "assumption: 0.6"),
    memory_bandwidth_bytes_per_s=(25.6e9, "25.6 GB/s, 64-bit LPDDR4 (NVIDIA Jetson Nano spec)"),
    memory_efficiency=(0.7, "assumption: 0.7 of theoretical, typical of STREAM on LPDDR4"),
    memory_bytes=(4 * _GIB, "4 GB (NVIDIA spec)"),
    busy_power_w=(10.0, "10 W, the module's 10 W power mode (NVIDIA spec: 5-10 W)"),
    idle_power_w=(1.5, "assumption: 1.5 W module idle"),
    op_overhead_s=(
        30e-6,
        "assumption: 30 us per eager op (kernel launch from a 1.43 GHz Cortex-A57)"
    ),
)

jetson_orin_nano = _device(
    "jetson_orin_nano",
    kind="jetson",
    dense_flops_per_s=(
        1.28e12,
        "derived: 1024 CUDA cores x 2 FLOP x 625 MHz = 1.28 TFLOP/s FP32 (Jetson Orin Nano 8GB "
        "datasheet: 1024 cores, max GPU clock 625 MHz)"
    ),
    other_flops_per_s=(1.28e12, "same CUDA cores: 1.28 TFLOP/s"),
    dense_efficiency=(0.6, "assumption: 0.6"),
    other_efficiency=(0.6, "assumption: 0.6"),
    memory_bandwidth_bytes_per_s=(68e9, "68 GB/s, 128-bit LPDDR5 (datasheet)"),
    memory_efficiency=(0.7, "assumption: 0.7"),
    memory_bytes=(8 * _GIB, "8 GB (datasheet)"),
    busy_power_w=(15.0, "15 W, the top power mode of the original module (datasheet: 7-15 W)"),
    idle_power_w=(4.0, "assumption: 4 W module idle"),
    op_overhead_s=(20e-6, "assumption: 20 us per eager op (launch from Cortex-A78AE)"),
)

jetson_orin_nano_super = _device(
    "jetson_orin_nano_super",
    kind="jetson",
    dense_flops_per_s=(
        2.09e12,
        "derived: 1024 CUDA cores x 2 FLOP x 1.02 GHz = 2.09 TFLOP/s FP32 (Orin Nano Super "
        "developer kit datasheet, Dec 2024: GPU clock 625 MHz -> 1.02 GHz)"
    ),
    other_flops_per_s=(2.09e12, "same CUDA cores: 2.09 TFLOP/s"),
    dense_efficiency=(0.6, "assumption: 0.6"),
    other_efficiency=(0.6, "assumption: 0.6"),
    memory_bandwidth_bytes_per_s=(102e9, "102 GB/s (Super datasheet, was 68 GB/s)"),
    memory_efficiency=(0.7, "assumption: 0.7"),
    memory_bytes=(8 * _GIB, "8 GB (datasheet)"),
    busy_power_w=(25.0, "25 W, the Super power mode (datasheet: 7-25 W)"),
    idle_power_w=(4.0, "assumption: 4 W module idle"),
    op_overhead_s=(15e-6, "assumption: 15 us (CPU clock 1.5 -> 1.7 GHz)"),
)

jetson_agx_orin = _device(
    "jetson_agx_orin",
    kind="jetson",
    dense_flops_per_s=(
        5.32e12,
        "derived: 2048 CUDA cores x 2 FLOP x 1.3 GHz = 5.32 TFLOP/s FP32 (Jetson AGX Orin series "
        "technical brief: 2048 cores, 1.3 GHz max)"
    ),
    other_flops_per_s=(5.32e12, "same CUDA cores: 5.32 TFLOP/s"),
    dense_efficiency=(0.6, "assumption: 0.6"),
    other_efficiency=(0.6, "assumption: 0.6"),
    memory_bandwidth_bytes_per_s=(204.8e9, "204.8 GB/s, 256-bit LPDDR5 (technical brief)"),
    memory_efficiency=(0.7, "assumption: 0.7"),
    memory_bytes=(64 * _GIB, "64 GB module (technical brief)"),
    busy_power_w=(60.0, "60 W, MAXN (technical brief: 15-60 W)"),
    idle_power_w=(8.0, "assumption: 8 W module idle"),
    op_overhead_s=(15e-6, "assumption: 15 us per eager op"),
)

phone_snapdragon_8_gen_2 = _device(
    "phone_snapdragon_8_gen_2",
    kind="phone",
    dense_flops_per_s=(
        330e9,
        "derived, CPU (where PyTorch runs on a phone): 1 Cortex-X3 x 3.2 GHz x 32 + 4 A715/A710 x "
        "2.8 GHz x 16 + 3 A510 x 2.0 GHz x 8 FP32 FLOP/cycle = 330 GFLOP/s (core counts and "
        "clocks: Qualcomm launch, Nov 2022, as reported by wccftech/gizbot)"
    ),
    dense_efficiency=(0.3, "assumption: 0.3 (big.LITTLE, thermal limits)"),
    memory_bandwidth_bytes_per_s=(
        67.2e9,
        "derived: LPDDR5X at 4200 MHz (8.4 GT/s) x 64-bit = 67.2 GB/s"
    ),
    memory_efficiency=(0.5, "assumption: 0.5"),
    memory_bytes=(8 * _GIB, "assumption: 8 GB, a common flagship configuration"),
    busy_power_w=(6.0, "assumption: 6 W sustained SoC power under a CPU-bound load"),
    idle_power_w=(0.5, "assumption: 0.5 W with the screen off"),
    op_overhead_s=(10e-6, "assumption: 10 us per eager op"),
)

laptop_core_i7_1165g7 = _device(
    "laptop_core_i7_1165g7",
    kind="laptop",
    dense_flops_per_s=(
        358e9,
        "derived: 4 cores x 2.8 GHz base x 32 FP32 FLOP/cycle (one AVX-512 FMA unit) = 358 GFLOP/s "
        "(Intel ARK: 4 cores, 2.8 GHz base at 28 W)"
    ),
    dense_efficiency=(0.5, "assumption: 0.5 for oneDNN/MKL kernels in eager PyTorch"),
    memory_bandwidth_bytes_per_s=(68.3e9, "derived: LPDDR4x-4267, 128-bit = 68.3 GB/s (Intel ARK)"),
    memory_efficiency=(0.6, "assumption: 0.6"),
    memory_bytes=(16 * _GIB, "assumption: 16 GB, a common configuration"),
    busy_power_w=(28.0, "28 W, the configurable TDP-up (Intel ARK: 12-28 W)"),
    idle_power_w=(3.0, "assumption: 3 W, laptop idle with the screen off"),
    op_overhead_s=(5e-6, "assumption: 5 us per eager op (this host measures 2.8 us)"),
)

edge_server_t4 = _device(
    "edge_server_t4",
    kind="server",
    dense_flops_per_s=(8.1e12, "8.1 TFLOP/s FP32 (NVIDIA T4 datasheet; 65 TFLOP/s FP16 tensor)"),
    other_flops_per_s=(8.1e12, "same CUDA cores: 8.1 TFLOP/s"),
    dense_efficiency=(0.6, "assumption: 0.6"),
    other_efficiency=(0.6, "assumption: 0.6"),
    memory_bandwidth_bytes_per_s=(320e9, "320 GB/s GDDR6 (datasheet)"),
    memory_efficiency=(0.7, "assumption: 0.7"),
    memory_bytes=(16 * _GIB, "16 GB GDDR6 (datasheet)"),
    busy_power_w=(70.0, "70 W board power (datasheet)"),
    idle_power_w=(10.0, "assumption: 10 W board idle"),
    op_overhead_s=(10e-6, "assumption: 10 us per eager op (kernel launch from a server CPU)"),
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
