"""Calibration fit: the roofline ``Device`` that fits the microbenchmarks' rows (``microbench``).

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

The result is a ``Device`` with efficiency 1 (the rates are sustained, measured ones).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from .device import Device
from .microbench import Measurement


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
