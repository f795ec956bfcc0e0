"""Calibration microbenchmarks: what is measured on the host, and why.

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

How the ``Device`` fields are fitted to these rows: ``fit``; the orchestration (fresh
processes, the profile JSON): ``calibrate``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from .device import Device


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
