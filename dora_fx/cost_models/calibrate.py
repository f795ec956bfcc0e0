"""Calibration: measure this host and fit its roofline, so predictions rest on measurements.

``calibrate()`` runs each part of the microbenchmarks in a fresh Python process with the
caller's thread count (``measure_host``), fits a roofline ``Device`` to the rows
(``fit_device``) and saves it, with the rows and the host's details, as a profile JSON that
``Device.from_profile`` reads; the distributed runtime's emulation scales from it.
(``compiler.predict`` sums the node rooflines of a captured model, to check the fit.)

What is measured and why: ``microbench``; how each ``Device`` field is fitted: ``fit``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .device import Device
from .fit import fit_device
from .microbench import _PARTS, Measurement, _measure_part, sustained_call_s, time_call_s

__all__ = [
    "Measurement",
    "calibrate",
    "measure_host",
    "fit_device",
    "sustained_call_s",
    "time_call_s",
]


def measure_host(
    repeats: int = 5, quick: bool = False, fresh_process: bool = True
) -> list[Measurement]:
    """Time the microbenchmarks (see the module docstring).

    With ``fresh_process`` each part (overhead and the memory-bound chain; matmuls and
    convolutions) runs in a fresh Python process with this process's thread count, as a
    model's stage runs: the allocator state the caller has built up (its thresholds decide
    which outputs take page faults) would otherwise change the figures by up to 5x here."""
    rows: list[Measurement] = []
    for part in _PARTS:
        if fresh_process:
            rows += _measure_in_subprocess(part, repeats, quick)
        else:
            rows += _measure_part(part, repeats, quick)
    return rows


def _measure_in_subprocess(part: str, repeats: int, quick: bool) -> list[Measurement]:
    # -c, not -m: dora_fx's __init__ imports this module, and runpy warns when asked to run a
    # module that importing its package already loaded
    entry = f"from {__name__} import _main; _main()"
    command = [sys.executable, "-c", entry, "--part", part, "--repeats", str(repeats)]
    command += ["--threads", str(torch.get_num_threads())] + (["--quick"] if quick else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"calibration part {part!r} failed in its subprocess ({' '.join(command)}):\n"
            f"{done.stderr[-2000:]}"
        )
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return [Measurement(**row) for row in rows]


def _host_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def calibrate(
    path: str | Path | None = None,
    *,
    name: str = "host",
    repeats: int = 5,
    quick: bool = False,
    memory_bytes: float | None = None,
    busy_power_w: float = 15.0,
    idle_power_w: float = 3.0,
) -> Device:
    """Measure this host, fit its roofline, write the profile JSON to ``path`` (if given) and
    return the ``Device``. Power cannot be measured from Python portably: pass the figures of
    a power meter or the spec sheet."""
    rows = measure_host(repeats, quick)
    extra: dict[str, Any] = {"busy_power_w": busy_power_w, "idle_power_w": idle_power_w}
    if memory_bytes is None:
        try:
            memory_bytes = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (AttributeError, ValueError, OSError):
            memory_bytes = None
    if memory_bytes:
        extra["memory_bytes"] = memory_bytes
    device = fit_device(rows, name, **extra)
    if path is not None:
        device.save_profile(path, [r.to_json(device) for r in rows], _host_info())
    return device


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Run one part of the host calibration.")
    parser.add_argument("--part", choices=_PARTS, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = _measure_part(args.part, args.repeats, args.quick)
    print(json.dumps([asdict(r) for r in rows]))


if __name__ == "__main__":
    _main()
