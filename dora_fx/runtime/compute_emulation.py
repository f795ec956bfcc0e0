"""Compute emulation, so a heterogeneous cluster can be tried on one machine: a rank's
compute stretched to its device's predicted speed (the network: ``network_emulation``).

Everything runs *dilated*: one emulated second lasts ``time_scale`` wall seconds, so devices
faster than the host can be emulated too (a rank can only slow its compute down). Metrics are
divided by ``time_scale`` to report device time.

Compute: a rank counts the FLOPs and bytes of every ATen op of its stage once
(``cost_recorder.CostRecorder``) and prices them with the roofline (``Device.node_time_s``) on
its device. A compute segment that took ``c`` CPU seconds of the rank's thread then lasts

    c * device_time / host_time * time_scale            wall seconds,

padded with sleep (``ComputeStretch``). ``host_time`` is the stage's time on the host: by default
its *measured* CPU time per item in the warm-up (so a stage's emulated time is the device's
predicted time, varying as the host's measurements vary), or, with ``reference="profile"``,
the calibrated host profile's roofline prediction for the same ops (so errors of the host model
carry into the emulated device). CPU time, not wall time, is scaled, so ranks that share the
host's cores do not inflate each other's compute.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any

__all__ = [
    "contention_margin",
    "host_capacity_scale",
    "dilation",
    "measured_reference_s",
    "CpuSamples",
    "ComputeStretch",
    "sleep_until",
]

def contention_margin(ranks: int, cores: int | None = None) -> float:
    """Dilation headroom so that ranks sharing the host's cores rarely compute at once: each
    rank computes about ``1 / margin`` of the time, so ``ranks / margin`` cores are busy on
    average; keep that at half the cores (the host has other work too), and at least 1.5x."""
    cores = cores or os.cpu_count() or 1
    return max(1.5, 2.0 * ranks / cores)


REFERENCE_WINDOW = 256  # items the measured compute reference averages


def measured_reference_s(cpu_samples: Sequence[float], stream_start: int = 0) -> float:
    """Host CPU seconds per item a device's predicted time is scaled against: the mean of the
    recent samples, those of the emulated stream (from ``stream_start``) once there are a few.
    An item then lasts the predicted time times its own deviation from that mean, so items
    last the predicted time on average. (The median did not: CPU times on a shared host skew
    right. Nor did warm-up samples: items run back to back there, on warm caches, and took
    6-12% less CPU than the stream's, which sleep between items.)

    Reads only the window: O(``REFERENCE_WINDOW``) whatever the number of samples."""
    total = len(cpu_samples)
    take = _window_len(total, len(range(total)[stream_start:]))
    return sum(cpu_samples[total - take :]) / take if take else 0.0


def _window_len(total: int, stream: int) -> int:
    """How many of the last samples ``measured_reference_s`` averages: the stream's once it
    has ``_STREAM_SAMPLES``, else all, at most ``REFERENCE_WINDOW``."""
    return min(stream if stream >= _STREAM_SAMPLES else total, REFERENCE_WINDOW)


_STREAM_SAMPLES = 8


class CpuSamples:
    """CPU seconds per item as a rank measures them, keeping only the last
    ``REFERENCE_WINDOW`` (what ``measured_reference_s`` reads) however long the rank serves:
    ``reference_s(stream_start)`` is ``measured_reference_s`` of every sample appended so far,
    in constant time and memory."""

    def __init__(self) -> None:
        self.count = 0  # samples appended so far
        self._recent: deque[float] = deque(maxlen=REFERENCE_WINDOW)

    def __len__(self) -> int:
        return self.count

    def append(self, cpu_s: float) -> None:
        self._recent.append(cpu_s)
        self.count += 1

    def reference_s(self, stream_start: int = 0) -> float:
        take = _window_len(self.count, len(range(self.count)[stream_start:]))
        recent = self._recent
        return sum(islice(recent, len(recent) - take, None)) / take if take else 0.0


HOST_LOAD = 0.3  # of the cores left to the run: the share an emulated run may keep busy


def host_capacity_scale(
    cpu_per_item_s: float,
    bottleneck_item_s: float,
    inflation: float = 1.0,
    cores: int | None = None,
    load: float = HOST_LOAD,
) -> float:
    """Dilation at which the host keeps up with the emulated pipeline.

    At the emulated rate an item leaves at best every ``scale * bottleneck_item_s`` wall
    seconds, and one item costs the host ``cpu_per_item_s`` of CPU summed over every rank and
    thread (driver, transport and gloo threads, not only the stage's compute). Of the host's
    cores, ``cores / inflation`` are the run's (``inflation``: wall over CPU time of compute in
    the warm-up, above 1 when other work shares the host). Keeping the run under ``load`` of
    those means a rank woken to compute or send rarely queues for a core; queueing is time
    the emulation cannot see, and it made runs on fast devices (small dilation) slower than
    the devices they emulate::

        scale >= cpu_per_item_s / (load * cores / inflation * bottleneck_item_s)
    """
    cores = cores or os.cpu_count() or 1
    available = cores / max(inflation, 1.0)
    return cpu_per_item_s / (load * available * max(bottleneck_item_s, 1e-12))


def dilation(
    need: float,
    ranks: int,
    cpu_per_item_s: float,
    bottleneck_item_s: float,
    inflation: float = 1.0,
) -> float:
    """The run's time scale: every device emulable with headroom (``need``: the largest host
    over device time of a rank, times ``contention_margin``) and the host able to keep up
    (``host_capacity_scale``); never below real time."""
    return max(
        need * contention_margin(ranks),
        host_capacity_scale(cpu_per_item_s, bottleneck_item_s, inflation),
        1.0,
    )


def agree_dilation(
    reference_s: float,
    device_item_s: float,
    inflation: float,
    cpu_item_s: float,
    ranks: int,
    control: Any,
    time_scale: float | None = None,
) -> float:
    """The time scale every rank of a run agrees on (a collective over ``control``; every
    rank calls it): ``dilation`` of the largest host over device time of any rank
    (``reference_s`` / ``device_item_s``), the bottleneck device, the most inflated host
    compute and the CPU all ranks need per item; ``time_scale`` when the run fixes one."""
    import torch
    import torch.distributed as dist

    peak = torch.tensor(
        [reference_s / max(device_item_s, 1e-12), device_item_s, inflation], dtype=torch.float64
    )
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=control)
    cpu = torch.tensor([cpu_item_s], dtype=torch.float64)
    dist.all_reduce(cpu, op=dist.ReduceOp.SUM, group=control)
    need, bottleneck_s, most_inflated = (float(v) for v in peak)
    return time_scale or dilation(need, ranks, float(cpu), bottleneck_s, most_inflated)


class ComputeStretch:
    """Pads compute segments to ``factor`` times their CPU time (see the module doc).

    ``resume()`` opens a segment, ``settle()`` closes it: it sleeps until the emulated end and
    returns the segment's emulated wall duration. With ``factor=None`` nothing is padded and a
    segment lasts what it lasted. A segment that ends late (the sleep overshot on a busy host,
    or the compute itself took longer than emulated) leaves a *debt* the next segments pay
    back out of their padding, so the device keeps its emulated pace on average: with many
    short segments per request (the schedule's), sleep overshoots would otherwise add up.
    """

    def __init__(self, factor: float | None) -> None:
        self.factor = factor
        self.busy_wall_s = 0.0
        self.busy_cpu_s = 0.0
        self.overrun_wall_s = 0.0  # compute that took longer in wall time than emulated
        self.late_wall_s = 0.0  # sleeps that ended after their emulated end
        self.debt_wall_s = 0.0  # lateness not paid back yet
        self._wall0 = time.monotonic()
        self._cpu0 = time.thread_time()

    def resume(self) -> None:
        self._wall0, self._cpu0 = time.monotonic(), time.thread_time()

    def settle(self) -> float:
        now, cpu_s = time.monotonic(), time.thread_time() - self._cpu0
        self.busy_cpu_s += cpu_s
        if self.factor is None:
            elapsed = now - self._wall0
        else:
            end = self._wall0 + cpu_s * self.factor
            if end > now:
                paid = min(self.debt_wall_s, end - now)
                self.debt_wall_s -= paid
                sleep_until(end - paid)
                late = time.monotonic() - (end - paid)
                self.late_wall_s += late
                self.debt_wall_s += late
            else:
                self.overrun_wall_s += now - end
                self.debt_wall_s += now - end
            elapsed = max(end, now) - self._wall0
        self.busy_wall_s += elapsed
        self.resume()
        return elapsed


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (at once if it has)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(left)

