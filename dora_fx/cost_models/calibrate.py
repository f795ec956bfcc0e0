"""Calibration: measure this host and fit its roofline, so predictions rest on measurements.

``calibrate()`` times small microbenchmarks with eager PyTorch, as the stages will run:

* ``overhead``: a one-element add, thousands of times: the per-op dispatch cost;
* ``copy``: clone, transposed copy, pad (no arithmetic): memory bandwidth;
* ``elementwise``: add, hardtanh, gelu, batch_norm, layer_norm, softmax (``other`` class);
* ``matmul`` and ``conv``: the ``dense`` class.

Fitting, with ``t' = t - op_overhead_s`` (the time past dispatch):

* ``op_overhead_s`` = median time of the tiny op;
* ``memory_bandwidth_bytes_per_s`` = total bytes / total ``t'`` over the memory-bound ops (at
  most one FLOP per byte): the copies and elementwise ops DNNs run (clone, transposed copy, pad,
  add, hardtanh, gelu, batch_norm, layer_norm, softmax) on activation-sized tensors (1 to 64 MB),
  read round robin from a pool larger than the caches and written to fresh outputs, bytes
  counted as annotate_costs counts them (inputs read + output written). It is the single
  bandwidth that reproduces the suite's total time, which is what a whole-model prediction
  sums. It lies far below the copy peak, because sizes behave very differently on this kind
  of host: tensors up to 16 MB move at 15-50 GB/s (caches), outputs above the allocator's mmap
  threshold (32 MB in glibc) take page faults on every call and move at about 4 GB/s, and the
  large ones dominate the total. ``Device.bandwidth_curve`` can hold the per-size figures (a
  cache-aware roofline), but on this host it predicted whole models worse (measured
  with benchmarks/bench_costmodel.py), so calibrate() leaves it empty;
* ``dense_flops_per_s`` = median of ``FLOPs / t'`` over matmuls and convs;
* ``other_flops_per_s`` = the highest ``FLOPs / t'`` an elementwise op reached (a roofline's
  compute roof is at least what was achieved).

The result is a ``Device`` with efficiency 1 (the rates are sustained, measured ones), saved as a
profile JSON that ``Device.from_profile`` reads; the distributed runtime's emulation scales
from it. ``predict_forward_s`` sums the node rooflines of a captured model for checking.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    "time_call_s",
]


@dataclass(frozen=True)
class Measurement:
    name: str
    op_class: str  # "overhead", "copy", "elementwise", "matmul", "conv"
    flops: float
    bytes_moved: float
    measured_s: float

    def predicted_s(self, device: Device) -> float:
        if self.op_class == "overhead":
            return device.op_overhead_s
        roofline = "dense" if self.op_class in ("matmul", "conv") else "other"
        return device.node_time_s(self.flops, self.bytes_moved, roofline)

    def to_json(self, device: Device | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name,
            "op_class": self.op_class,
            "flops": self.flops,
            "bytes": self.bytes_moved,
            "measured_s": self.measured_s,
        }
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


_POOL_BYTES = 256 << 20
_F = torch.nn.functional


def _fmap(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1, 16, 64, 64)


def _batch_norm(x: torch.Tensor) -> torch.Tensor:
    ones = torch.ones(16)
    return _F.batch_norm(_fmap(x), ones, ones, ones, ones, training=False)


# name, class, function, tensors read, FLOPs per element (as annotate_costs counts them),
# output elements per input element
_MEMORY_OPS: list[tuple[str, str, Callable[..., Any], int, float, float]] = [
    ("clone", "copy", torch.clone, 1, 0.0, 1.0),
    ("transpose copy", "copy", lambda x: x.view(-1, 256).t().contiguous(), 1, 0.0, 1.0),
    ("pad", "copy", lambda x: _F.pad(_fmap(x), (1, 1, 1, 1)), 1, 0.0, 66 * 66 / 4096),
    ("add", "elementwise", torch.add, 2, 1.0, 1.0),
    ("hardtanh", "elementwise", lambda x: _F.hardtanh(x, 0.0, 6.0), 1, 2.0, 1.0),
    ("gelu", "elementwise", _F.gelu, 1, 8.0, 1.0),
    ("batch_norm", "elementwise", _batch_norm, 1, 2.0, 1.0),
    ("layer_norm", "elementwise", lambda x: _F.layer_norm(x.view(-1, 256), (256,)), 1, 5.0, 1.0),
    ("softmax", "elementwise", lambda x: torch.softmax(x.view(-1, 256), -1), 1, 5.0, 1.0),
]


def _cycling(fn: Callable[..., Any], pool: list[torch.Tensor], arity: int) -> Callable[[], Any]:
    """A call of ``fn`` on the next ``arity`` tensors of ``pool``, round robin, so that
    consecutive calls touch different memory."""
    state = {"i": 0}

    def call() -> Any:
        i = state["i"]
        state["i"] = (i + arity) % len(pool)
        return fn(*(pool[(i + k) % len(pool)] for k in range(arity)))

    return call


def _f32_bytes(*numels: int) -> float:
    return 4.0 * sum(numels)


def measure_host(repeats: int = 5, quick: bool = False) -> list[Measurement]:
    """Time the microbenchmarks (see the module docstring)."""
    torch.manual_seed(0)
    rows: list[Measurement] = []
    with torch.no_grad():
        tiny = torch.ones(1)
        calls = 200 if quick else 2000

        def many_tiny() -> None:
            for _ in range(calls):
                torch.add(tiny, tiny)

        rows.append(
            Measurement(
                "add 1 element", "overhead", 1.0, 12.0, time_call_s(many_tiny, repeats) / calls
            )
        )

        # Memory-bound ops DNNs run, on activation-sized tensors drawn round robin from a pool
        # larger than the caches, each call writing a fresh output (see the module docstring).
        for size_mb in (1, 16, 64) if quick else (1, 4, 16, 32, 48, 64):
            n = size_mb << 18  # float32 elements: (4 * size_mb, 16, 64, 64) as a feature map
            pool = [torch.randn(n) for _ in range(max(2, _POOL_BYTES // (4 * n)))]
            for name, op_class, fn, arity, flops_per_element, out_elements in _MEMORY_OPS:
                rows.append(
                    Measurement(
                        f"{name} {size_mb} MB",
                        op_class,
                        flops_per_element * n,
                        _f32_bytes(arity * n, int(out_elements * n)),
                        time_call_s(_cycling(fn, pool, arity), repeats),
                    )
                )
            del pool

        shapes = (
            [(512, 512, 512), (1024, 768, 768)]
            if quick
            else [(512, 512, 512), (1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768)]
        )
        for m, k, n in shapes:
            a, b = torch.randn(m, k), torch.randn(k, n)
            rows.append(
                Measurement(
                    f"mm {m}x{k}x{n}",
                    "matmul",
                    2.0 * m * k * n,
                    _f32_bytes(m * k, k * n, m * n),
                    time_call_s(partial(torch.matmul, a, b), repeats),
                )
            )

        convs = (
            [(8, 64, 28, 64, 3)]
            if quick
            else [(8, 64, 56, 64, 3), (8, 128, 28, 256, 1), (8, 256, 14, 256, 3)]
        )
        for batch, c_in, hw, c_out, k in convs:
            x = torch.randn(batch, c_in, hw, hw)
            w = torch.randn(c_out, c_in, k, k)
            out = batch * c_out * hw * hw
            rows.append(
                Measurement(
                    f"conv {c_in}->{c_out} {k}x{k} @{hw}",
                    "conv",
                    2.0 * out * c_in * k * k,
                    _f32_bytes(x.numel(), w.numel(), out),
                    time_call_s(
                        partial(torch.nn.functional.conv2d, x, w, padding=k // 2),
                        repeats,
                    ),
                )
            )
    return rows


def fit_device(rows: list[Measurement], name: str = "host", **extra: Any) -> Device:
    """The roofline that fits the measurements (see the module docstring)."""
    overhead = statistics.median(r.measured_s for r in rows if r.op_class == "overhead")

    def past_overhead(r: Measurement) -> float:
        return max(r.measured_s - overhead, 1e-9)

    # Memory-bound ops (at most one FLOP per byte): the bandwidth that reproduces their total
    # measured time, total bytes over total time.
    memory_bound = [
        r for r in rows if r.op_class in ("copy", "elementwise") and r.flops <= r.bytes_moved
    ]
    bandwidth = sum(r.bytes_moved for r in memory_bound) / sum(
        past_overhead(r) for r in memory_bound
    )
    dense = statistics.median(
        r.flops / past_overhead(r) for r in rows if r.op_class in ("matmul", "conv")
    )
    other = max(r.flops / past_overhead(r) for r in rows if r.op_class == "elementwise")
    spec: dict[str, Any] = dict(
        name=name,
        dense_flops_per_s=dense,
        other_flops_per_s=other,
        memory_bandwidth_bytes_per_s=bandwidth,
        op_overhead_s=overhead,
        kind="host",
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
    exprs = (
        [c.flops for c in costs] + [c.bytes_moved for c in costs] + [c.output_bytes for c in costs]
    )
    values = compile_costs(exprs, symbols)(float(batch), float(seq))
    k = len(costs)
    by_class = {"dense": 0.0, "other": 0.0}
    for cost, f, q, o in zip(costs, values[:k], values[k : 2 * k], values[2 * k :], strict=True):
        by_class[cost.op_class] += device.node_time_s(float(f), float(q), cost.op_class, float(o))
    return by_class


def predict_forward_s(
    model: torch.nn.Module, example_inputs: tuple[Any, ...], device: Device
) -> float:
    """Predicted time of one forward pass of ``model`` at the example inputs' sizes."""
    gm, symbols, batch = annotated_graph(model, example_inputs)
    return sum(predict_graph_s(gm, symbols, device, batch).values())
