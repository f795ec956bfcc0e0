"""Calibration: measure this host and fit its roofline, so predictions rest on measurements.

``calibrate()`` times small microbenchmarks with eager PyTorch, as the stages will run them:
each part in a fresh Python process with the caller's thread count (the allocator state a
process has built up decides which outputs take page faults, and changes op times by up to 5x
on a small VM; a stage, like the benchmark's models, runs in a fresh process):

* ``overhead``: a one-element add, thousands of times: the per-op dispatch cost;
* ``fault`` (first touch): filling a freshly allocated tensor minus filling a reused one, at
  8 to 64 MB: the cost of the fresh pages an output gets from the OS;
* the memory-bound chain, at activation sizes from 0.5 to 64 MB: batch_norm, hardtanh, add,
  clone, gelu, layer_norm, softmax, transposed copy, pad (``copy`` and ``elementwise``), each
  consuming the previous op's output, as in a forward: inputs just written (in cache when they
  fit), outputs freshly allocated; each op timed inside the chain, its mean over several runs;
* ``matmul`` and ``conv``: the ``dense`` class: four matmuls (and three with an odd N), three
  regular convolutions and MobileNetV1's stem, depthwise and pointwise layers (low-intensity
  kernels), called round robin for a few seconds, each timed by its mean: the rate a forward
  sustains, not the fastest burst (``sustained_call_s``).

Fitting, with ``t'`` the time past the per-op overhead and the fresh pages of the output:

* ``op_overhead_s`` = median time of the tiny op;
* ``page_fault_bytes_per_s`` and ``fresh_output_bytes``: the first-touch sizes whose fresh pages
  cost at least a quarter of the most per byte are the faulting ones (here those above glibc's
  mmap threshold, 32 MB at most: served by mmap, returned on free, faulted and zeroed again on
  every call); their bytes over their time is the rate, the threshold lies between the largest
  size that does not fault and the smallest that does;
* ``other_flops_per_s`` = the highest ``FLOPs / t'`` an elementwise op reached (a roofline's
  compute roof is at least what was achieved);
* ``bandwidth_curve``: at each chain size, the bandwidth ``B`` at which the chain's roofline
  ``sum(max(F / other_flops_per_s, Q / B))`` equals its measured ``sum(t')`` (what a whole-model
  prediction sums), made non-increasing in size (pool adjacent violators: a larger working set
  never streams faster); ``memory_bandwidth_bytes_per_s``, which block times use, is the
  harmonic mean of the curve (the chain's total with equal bytes at each size);
* ``dense_flops_per_s`` = median ``FLOPs / t'`` of the dense rows reaching at least half of it
  (from the matmuls' median, iterated), misaligned matmuls left out;
* ``misaligned_dense_efficiency`` = median fraction of that rate the misaligned matmuls (N odd:
  output rows not whole 32-byte vectors) reach: 0.65-0.8 here, where GPT-2's LM head
  (N = 50257) sits;
* ``dense_bandwidth_bytes_per_s`` = total bytes over total ``t'`` of the convolutions below half
  the dense roof (depthwise, few-channel): the rate at which memory-limited dense kernels
  process the bytes the cost records count.

The result is a ``Device`` with efficiency 1 (the rates are sustained, measured ones), saved as a
profile JSON that ``Device.from_profile`` reads; the distributed runtime's emulation scales
from it. ``predict_forward_s`` sums the node rooflines of a captured model for checking.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .device import Device

__all__ = [
    "Measurement",
    "calibrate",
    "measure_host",
    "fit_device",
    "predict_forward_s",
    "sustained_call_s",
    "time_call_s",
]


@dataclass(frozen=True)
class Measurement:
    name: str
    op_class: str  # "overhead", "fault", "copy", "elementwise", "matmul", "conv"
    flops: float
    bytes_moved: float
    measured_s: float
    output_bytes: float | None = None  # None: half the traffic (as Device.node_time_s)
    misaligned: bool = False  # a matmul whose output rows are not whole 32-byte vectors

    def predicted_s(self, device: Device) -> float:
        if self.op_class == "overhead":
            return device.op_overhead_s
        if self.op_class == "fault":
            return device.fresh_pages_s(self.bytes_moved)
        roofline = "dense" if self.op_class in ("matmul", "conv") else "other"
        misaligned = self.flops if self.misaligned else 0.0
        return device.node_time_s(
            self.flops, self.bytes_moved, roofline, self.output_bytes, misaligned
        )

    def to_json(self, device: Device | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name,
            "op_class": self.op_class,
            "flops": self.flops,
            "bytes": self.bytes_moved,
            "measured_s": self.measured_s,
        }
        if self.output_bytes is not None:
            row["output_bytes"] = self.output_bytes
        if self.misaligned:
            row["misaligned"] = True
        if device is not None:
            row["predicted_s"] = self.predicted_s(device)
        return row


def time_call_s(fn: Callable[[], Any], repeats: int = 5, min_time_s: float = 0.02) -> float:
    """Seconds per call: the fastest of ``repeats`` samples, each looping the call long enough
    to time reliably. The minimum, not the median: on a shared machine other work only ever
    adds time, so the fastest sample is the least disturbed one."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-9)
    inner = max(1, int(min_time_s / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return min(samples)


_F = torch.nn.functional


def _fmap(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1, 16, 64, 64)


def _batch_norm(x: torch.Tensor) -> torch.Tensor:
    ones = torch.ones(16)
    return _F.batch_norm(_fmap(x), ones, ones, ones, ones, training=False)


def _rows256(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 256)


# The memory-bound chain: name, class, function of (x, residual), tensors read, FLOPs per
# input element (as annotate_costs counts them). Each op consumes the previous op's output.
_CHAIN: list[tuple[str, str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], int, float]] = [
    ("batch_norm", "elementwise", lambda x, r: _batch_norm(x), 1, 2.0),
    ("hardtanh", "elementwise", lambda x, r: _F.hardtanh(x, 0.0, 6.0), 1, 2.0),
    ("add", "elementwise", lambda x, r: torch.add(x.view(r.shape), r), 2, 1.0),
    ("clone", "copy", lambda x, r: torch.clone(x), 1, 0.0),
    ("gelu", "elementwise", lambda x, r: _F.gelu(x), 1, 8.0),
    ("layer_norm", "elementwise", lambda x, r: _F.layer_norm(_rows256(x), (256,)), 1, 5.0),
    ("softmax", "elementwise", lambda x, r: torch.softmax(_rows256(x), -1), 1, 5.0),
    ("transpose copy", "copy", lambda x, r: _rows256(x).t().contiguous(), 1, 0.0),
    ("pad", "copy", lambda x, r: _F.pad(_fmap(x), (1, 1, 1, 1)), 1, 0.0),
]

# Activation sizes (MB of float32) of the chain: from cache-resident to above glibc's mmap
# threshold (32 MB), where every fresh output takes page faults.
_CHAIN_MB: tuple[float, ...] = (0.5, 2, 8, 16, 24, 40, 64)
_CHAIN_MB_QUICK: tuple[float, ...] = (1, 16, 48)

# First-touch sizes (MB): where outputs start to get fresh pages on every call.
_TOUCH_MB: tuple[float, ...] = (8, 16, 24, 28, 36, 48, 64)
_TOUCH_MB_QUICK: tuple[float, ...] = (8, 24, 48)

# Dense suite: matmuls (m, k, n) and convolutions (batch, c_in, hw, c_out, kernel, groups,
# stride): three regular convolutions, then MobileNetV1's stem, depthwise and pointwise
# layers (Howard et al. 2017, Table 1), the low-intensity kinds of mobile CNNs.
# Matmul shapes are none of the zoo models' (no 768/3072 GPT-2 widths); the misaligned ones
# (output rows not whole 32-byte vectors: N odd) measure how much slower such kernels run.
_MATMULS = [(512, 512, 512), (1024, 1024, 1024), (2048, 512, 2048), (512, 2048, 1536)]
_MATMULS_QUICK = [(512, 512, 512), (1024, 1024, 1024)]
_MISALIGNED_MATMULS = [(1024, 1024, 1001), (2048, 512, 2047), (512, 2048, 1533)]
_MISALIGNED_MATMULS_QUICK = [(1024, 1024, 1001)]
_CONVS = [
    (8, 64, 56, 64, 3, 1, 1),
    (8, 128, 28, 256, 1, 1, 1),
    (8, 256, 14, 256, 3, 1, 1),
    (8, 3, 224, 32, 3, 1, 2),
    (8, 32, 112, 32, 3, 32, 1),
    (8, 32, 112, 64, 1, 1, 1),
    (8, 64, 112, 64, 3, 64, 2),
    (8, 128, 56, 128, 3, 128, 1),
    (8, 256, 28, 256, 3, 256, 1),
    (8, 512, 14, 512, 3, 512, 1),
]
_CONVS_QUICK = [(8, 64, 28, 64, 3, 1, 1), (8, 32, 112, 32, 3, 32, 1), (8, 256, 28, 256, 3, 256, 1)]


def _f32_bytes(*numels: int) -> float:
    return 4.0 * sum(numels)


def _measure_chain(size_mb: float, repeats: int, min_time_s: float = 0.1) -> list[Measurement]:
    """Each op of ``_CHAIN`` timed inside the chain on ``size_mb`` MB feature maps: the mean
    over several runs of the chain (at least ``repeats``, and ``min_time_s`` in all) after one
    to warm up. The mean, not the fastest: the allocator hands an op fresh pages in some runs
    and not in others (when it has returned memory to the OS), and a forward pays the
    expected cost."""
    n = int(size_mb * (1 << 18))
    base = torch.randn(n)
    total = [0.0] * len(_CHAIN)
    traffic = [(0.0, 0.0)] * len(_CHAIN)
    runs, elapsed, first = 0, 0.0, time.perf_counter()
    while runs <= repeats or elapsed < min_time_s:
        x = torch.clone(base)  # the chain's input, just written
        residual = x
        for i, (_, _, fn, arity, _) in enumerate(_CHAIN):
            start = time.perf_counter()
            y = fn(x, residual)
            seconds = time.perf_counter() - start
            if runs:  # the first run warms up
                total[i] += seconds
            traffic[i] = (_f32_bytes(arity * x.numel(), y.numel()), _f32_bytes(y.numel()))
            x = y
        del x, y, residual
        runs += 1
        elapsed = time.perf_counter() - first
    return [
        Measurement(
            f"{name} {size_mb:g} MB", op_class, flops * n, moved, seconds / (runs - 1), out
        )
        for (name, op_class, _, _, flops), (moved, out), seconds in zip(
            _CHAIN, traffic, total, strict=True
        )
    ]


_PARTS = ("memory", "dense")


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
    command = [sys.executable, "-m", __name__, "--part", part, "--repeats", str(repeats)]
    command += ["--threads", str(torch.get_num_threads())] + (["--quick"] if quick else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"calibration part {part!r} failed in its subprocess ({' '.join(command)}):\n"
            f"{done.stderr[-2000:]}"
        )
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return [Measurement(**row) for row in rows]


def _measure_part(part: str, repeats: int, quick: bool) -> list[Measurement]:
    torch.manual_seed(0)
    with torch.no_grad():
        if part == "memory":
            return _measure_memory(repeats, quick)
        if part == "dense":
            return _measure_dense(repeats, quick)
    raise ValueError(f"unknown calibration part {part!r}; expected one of {_PARTS}")


def _measure_memory(repeats: int, quick: bool) -> list[Measurement]:
    tiny = torch.ones(1)
    calls = 200 if quick else 2000

    def many_tiny() -> None:
        for _ in range(calls):
            torch.add(tiny, tiny)

    rows = [
        Measurement(
            "add 1 element", "overhead", 1.0, 12.0, time_call_s(many_tiny, repeats) / calls
        )
    ]
    for size_mb in _TOUCH_MB_QUICK if quick else _TOUCH_MB:
        rows.append(_measure_first_touch(size_mb, repeats))
    for size_mb in _CHAIN_MB_QUICK if quick else _CHAIN_MB:
        rows += _measure_chain(size_mb, repeats, min_time_s=0.03 if quick else 0.1)
    return rows


def _measure_first_touch(size_mb: float, repeats: int) -> Measurement:
    """Extra time of filling a freshly allocated tensor over filling a reused one: the cost
    of the fresh pages an output gets (none while the allocator reuses its heap)."""
    n = int(size_mb * (1 << 18))
    reused = torch.empty(n)
    fresh_s = time_call_s(lambda: torch.empty(n).fill_(1.0), repeats)
    reused_s = time_call_s(lambda: reused.fill_(1.0), repeats)
    return Measurement(
        f"first touch {size_mb:g} MB",
        "fault",
        0.0,
        4.0 * n,
        max(fresh_s - reused_s, 1e-7),
        output_bytes=4.0 * n,
    )


def sustained_call_s(fns: list[Callable[[], Any]], window_s: float) -> list[float]:
    """Mean seconds per call of each of ``fns``, called round robin for ``window_s`` (after
    two warm-up calls each).

    The mean, not the fastest sample: a forward runs its kernels back to back for seconds,
    and on a shared host the rate it sustains is 20-50% below the best 20 ms burst (measured
    here: 1024^3 matmuls at 95 GFLOP/s median, 147 at best, within one 30 s loop). Round robin
    spreads every kernel over the whole window, so slow and fast phases of the host weigh on
    all of them alike and their ratios (the misaligned matmuls' efficiency) stay clean."""
    for fn in fns:
        fn()
        fn()
    total_s = [0.0] * len(fns)
    calls = 0
    start = time.perf_counter()
    while calls < 3 or time.perf_counter() - start < window_s:
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            total_s[i] += time.perf_counter() - t0
        calls += 1
    return [t / calls for t in total_s]


def _dense_window_s(repeats: int) -> float:
    """Seconds the dense kernels are timed for: 1 s per repeat (7 s at the benchmark's 7; the
    host's rate wanders by +-15% from one few-second window to the next)."""
    return 1.0 * repeats


def _measure_dense(repeats: int, quick: bool) -> list[Measurement]:
    aligned = _MATMULS_QUICK if quick else _MATMULS
    misaligned = _MISALIGNED_MATMULS_QUICK if quick else _MISALIGNED_MATMULS
    shapes = [(s, False) for s in aligned] + [(s, True) for s in misaligned]
    rows: list[Measurement] = []
    fns: list[Callable[[], Any]] = []
    for (m, k, n), odd in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        fns.append(partial(torch.matmul, a, b))
        rows.append(
            Measurement(
                f"mm {m}x{k}x{n}" + (" (misaligned)" if odd else ""),
                "matmul",
                2.0 * m * k * n,
                _f32_bytes(m * k, k * n, m * n),
                math.nan,
                output_bytes=_f32_bytes(m * n),
                misaligned=odd,
            )
        )
    for batch, c_in, hw, c_out, k, groups, stride in _CONVS_QUICK if quick else _CONVS:
        x = torch.randn(batch, c_in, hw, hw)
        w = torch.randn(c_out, c_in // groups, k, k)
        conv = partial(_F.conv2d, x, w, padding=k // 2, stride=stride, groups=groups)
        out = conv().numel()
        kind = "dw " if groups > 1 else ""
        fns.append(conv)
        rows.append(
            Measurement(
                f"conv {kind}{c_in}->{c_out} {k}x{k}/{stride} @{hw}",
                "conv",
                2.0 * out * (c_in // groups) * k * k,
                _f32_bytes(x.numel(), w.numel(), out),
                math.nan,
                output_bytes=_f32_bytes(out),
            )
        )
    seconds = sustained_call_s(fns, _dense_window_s(repeats) / (3 if quick else 1))
    return [replace(r, measured_s=t) for r, t in zip(rows, seconds, strict=True)]


def _output_bytes(row: Measurement) -> float:
    return row.output_bytes if row.output_bytes is not None else row.bytes_moved / 2


def _size_groups(rows: list[Measurement]) -> list[list[Measurement]]:
    """Rows by output size; a group spans at most a factor 1.25 (pad's output is 6% larger
    than the chain's tensors), so each chain size is one point of the curve."""
    groups: list[list[Measurement]] = []
    for r in sorted(rows, key=_output_bytes):
        if groups and _output_bytes(r) <= 1.25 * _output_bytes(groups[-1][0]):
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _bandwidth_for_total(
    rows: list[Measurement], other_rate: float, past: Callable[[Measurement], float]
) -> tuple[float, float]:
    """The bandwidth ``B`` at which ``sum(max(F / other_rate, Q / B))`` over ``rows`` equals
    their measured time ``past`` overhead and fresh pages, and the weight (bytes) of the
    point."""
    flops = [r.flops / other_rate for r in rows]
    moved = [r.bytes_moved for r in rows]
    total = sum(past(r) for r in rows)
    if sum(flops) >= total or not any(moved):
        # compute alone explains the time: the bandwidth is at least the fastest observed
        return max(q / past(r) for q, r in zip(moved, rows, strict=True)), sum(moved)
    lo, hi = math.log(1e3), math.log(1e16)
    for _ in range(200):
        mid = (lo + hi) / 2
        b = math.exp(mid)
        if sum(max(f, q / b) for f, q in zip(flops, moved, strict=True)) > total:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2), sum(moved)


def _fit_fresh_pages(rows: list[Measurement]) -> tuple[float | None, float | None]:
    """``(page_fault_bytes_per_s, fresh_output_bytes)`` from the first-touch rows: the
    faulting sizes are the largest ones whose fresh pages all cost at least a quarter of the
    most per byte, and more than 10 ps per byte (a suffix: a noisy small size does not move
    the threshold); the threshold
    lies between the largest size that does not fault and the smallest that does (geometric
    mean), the rate is their bytes over their time."""
    touch = sorted((r for r in rows if r.op_class == "fault"), key=_output_bytes)
    if not touch:
        return None, None
    cost = [r.measured_s / _output_bytes(r) for r in touch]
    if max(cost) <= 0:
        return None, None
    # faulting: at least a quarter of the most, and slower than 100 GB/s (below that the
    # difference between the fresh and the reused fill is timing noise)
    significant = max(max(cost) / 4, 1e-11)
    first = len(touch)
    while first and cost[first - 1] >= significant:
        first -= 1
    if first == len(touch):  # the largest size does not fault: no threshold seen
        return None, None
    faulting = touch[first:]
    rate = sum(_output_bytes(r) for r in faulting) / sum(r.measured_s for r in faulting)
    threshold = _output_bytes(touch[first])
    if first:
        threshold = math.sqrt(threshold * _output_bytes(touch[first - 1]))
    return rate, threshold


def _non_increasing(points: list[tuple[float, float, float]]) -> list[tuple[float, float]]:
    """Pool adjacent violators: ``(size, bandwidth, bytes)`` points sorted by size become a
    non-increasing curve (a larger working set never streams faster); a pooled point's
    bandwidth is its bytes over its time, so pooling keeps the points' total time."""
    blocks: list[list[float]] = []  # [bytes, seconds, first index, last index]
    for i, (_, bandwidth, weight) in enumerate(points):
        blocks.append([weight, weight / bandwidth, i, i])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            last = blocks.pop()
            blocks[-1] = [blocks[-1][0] + last[0], blocks[-1][1] + last[1], blocks[-1][2], last[3]]
    curve: list[tuple[float, float]] = []
    for block in blocks:
        for i in range(int(block[2]), int(block[3]) + 1):
            curve.append((points[i][0], block[0] / block[1]))
    return curve


def fit_device(rows: list[Measurement], name: str = "host", **extra: Any) -> Device:
    """The roofline that fits the measurements (see the module docstring)."""
    overhead = statistics.median(r.measured_s for r in rows if r.op_class == "overhead")
    fault_rate, fresh_threshold = _fit_fresh_pages(rows)

    def fresh(r: Measurement) -> float:
        out = _output_bytes(r)
        if fault_rate is None or fresh_threshold is None or out < fresh_threshold:
            return 0.0
        return out / fault_rate

    def past(r: Measurement) -> float:
        """Measured time past the per-op overhead and the fresh pages of its output."""
        return max(r.measured_s - overhead - fresh(r), 1e-9)

    def achieved(r: Measurement) -> float:
        return r.flops / past(r)

    # The compute roof of other ops, from the rows without fresh pages to subtract.
    elementwise = [r for r in rows if r.op_class == "elementwise"]
    other = max(achieved(r) for r in [r for r in elementwise if not fresh(r)] or elementwise)

    # Memory: at each output size, the bandwidth that reproduces the chain's total time past
    # overhead and fresh pages. Where fresh pages (and compute) explain all of it, the size
    # tells nothing about streaming and gives no point.
    points = []
    for group in _size_groups([r for r in rows if r.op_class in ("copy", "elementwise")]):
        remaining = sum(r.measured_s - overhead - fresh(r) for r in group)
        if fresh(group[0]) and remaining <= sum(r.flops / other for r in group):
            continue
        size = statistics.median(_output_bytes(r) for r in group)
        points.append((size, *_bandwidth_for_total(group, other, past)))
    curve = _non_increasing(points)
    bandwidth = len(curve) / sum(1 / b for _, b in curve)

    # Dense: the compute roof is the median rate of the rows reaching at least half of it;
    # the convolutions below half of it stream their bytes at total bytes over total time.
    # (The matmuls, at 85+ FLOP per byte, are compute-bound on any CPU: one slowed down by
    # other work on the machine must not pass for a memory-bound kernel.)
    dense_rows = [r for r in rows if r.op_class in ("matmul", "conv") and not r.misaligned]
    matmuls = [achieved(r) for r in dense_rows if r.op_class == "matmul"]
    dense = statistics.median(matmuls) if matmuls else max(achieved(r) for r in dense_rows)
    for _ in range(10):
        fitted = statistics.median(achieved(r) for r in dense_rows if achieved(r) >= dense / 2)
        if fitted == dense:
            break
        dense = fitted
    limited = [r for r in dense_rows if r.op_class == "conv" and achieved(r) < dense / 2]
    dense_bandwidth = (
        sum(r.bytes_moved for r in limited) / sum(past(r) for r in limited) if limited else None
    )
    # Misaligned matmuls: the median fraction of the dense roof they reach.
    odd = [min(achieved(r) / dense, 1.0) for r in rows if r.misaligned]
    misaligned_efficiency = statistics.median(odd) if odd else 1.0
    spec: dict[str, Any] = dict(
        name=name,
        dense_flops_per_s=dense,
        other_flops_per_s=other,
        memory_bandwidth_bytes_per_s=bandwidth,
        op_overhead_s=overhead,
        kind="host",
        bandwidth_curve=tuple(curve) if len(curve) > 1 else (),
        dense_bandwidth_bytes_per_s=dense_bandwidth,
        page_fault_bytes_per_s=fault_rate,
        fresh_output_bytes=fresh_threshold,
        misaligned_dense_efficiency=misaligned_efficiency,
    )
    spec.update(extra)
    return Device(**spec)


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


def annotated_graph(
    model: torch.nn.Module, example_inputs: tuple[Any, ...]
) -> tuple[Any, Any, int]:
    """Capture ``model`` and annotate its node costs: ``(graph module, cost symbols, batch)``."""
    import sympy

    from ..capture import capture
    from ..passes.annotate_costs import CostSymbols, annotate_costs

    captured = capture(model, tuple(example_inputs), {})
    symbols = CostSymbols.from_names(captured.symbols)
    scale = None if captured.symbols else symbols.batch / sympy.Integer(captured.example_batch)
    annotate_costs(captured.gm, symbols, scale)
    return captured.gm, symbols, captured.example_batch


def predict_graph_s(
    gm: Any, symbols: Any, device: Device, batch: int, seq: int = 1
) -> dict[str, float]:
    """Seconds per op class (``dense``, ``other``) of one run of an annotated graph on
    ``device``: the sum of its nodes' roofline times at ``batch`` (and ``seq``)."""
    from ..ir import COST_KEY
    from ..passes.annotate_costs import compile_costs

    costs = [n.meta[COST_KEY] for n in gm.graph.nodes if COST_KEY in n.meta]
    costs = [c for c in costs if c.op_class in ("dense", "other")]
    exprs = [
        e
        for c in costs
        for e in (c.flops, c.bytes_moved, c.output_bytes, c.misaligned_flops)
    ]
    values = compile_costs(exprs, symbols)(float(batch), float(seq)).reshape(len(costs), 4)
    by_class = {"dense": 0.0, "other": 0.0}
    for cost, (f, q, o, mis) in zip(costs, values, strict=True):
        by_class[cost.op_class] += device.node_time_s(
            float(f), float(q), cost.op_class, float(o), float(mis)
        )
    return by_class


def predict_forward_s(
    model: torch.nn.Module, example_inputs: tuple[Any, ...], device: Device
) -> float:
    """Predicted time of one forward pass of ``model`` at the example inputs' sizes."""
    gm, symbols, batch = annotated_graph(model, example_inputs)
    return sum(predict_graph_s(gm, symbols, device, batch).values())


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
