"""What a plan asks of each device and link, per microbatch: the one costing that both the
analytic ``evaluate`` and the discrete-event simulator use, so they cannot disagree on it.

A request of the problem's batch is cut into ``m`` microbatches. A data-parallel stage gives
device ``d`` the share ``s_d`` of every microbatch, so ``d`` computes a fraction
``f = s_d / m`` of the stage's blocks: FLOPs and activation traffic scale with ``f``, weight
traffic and per-op overhead do not (every microbatch reads all weights, launches every op).

Shares are contiguous slices of the batch, ``[s_1 + ... + s_{d-1}, s_1 + ... + s_d)``, so the
bytes device ``a`` of stage ``k-1`` sends device ``b`` of stage ``k`` are the boundary tensor
times the overlap of their slices (a scatter, a gather, or both).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from itertools import accumulate

from ..errors import PlanError
from ..ir.plan import Plan
from .problem import Problem

__all__ = ["Transfer", "StageWork", "PlanWork", "plan_work", "ProblemSums", "problem_sums"]


@dataclass(frozen=True)
class Transfer:
    """``nbytes`` from device ``src`` to device index ``dst_slot`` of the next stage (or the sink)."""

    src: str
    dst: str
    nbytes: float
    src_slot: int  # index of the sender in its stage's device group (-1: the request source)
    dst_slot: int  # index of the receiver in its stage's device group (-1: the sink)


@dataclass(frozen=True)
class StageWork:
    """Stage ``index`` per microbatch: compute seconds and activation peak per device of its
    group, and the transfers that feed it."""

    index: int
    devices: tuple[str, ...]
    compute_s: tuple[float, ...]
    activation_bytes: tuple[float, ...]
    weight_bytes: float
    inputs: tuple[Transfer, ...]


@dataclass(frozen=True)
class PlanWork:
    stages: tuple[StageWork, ...]
    outputs: tuple[Transfer, ...]  # last stage -> sink, per microbatch
    microbatches: int
    source: str
    sink: str | None

    @property
    def devices(self) -> list[str]:
        return list(dict.fromkeys(d for s in self.stages for d in s.devices))


@dataclass(frozen=True)
class ProblemSums:
    """Prefix sums over the blocks: a stage's totals in O(1)."""

    flops: tuple[float, ...]
    dense: tuple[float, ...]
    misaligned: tuple[float, ...]
    bytes: tuple[float, ...]
    dense_bytes: tuple[float, ...] | None
    params: tuple[float, ...]
    ops: tuple[float, ...]
    # pair_peak[b]: bytes live while block b runs, its input and its output
    pair_peak: tuple[float, ...]
    # (start, stop, device, fraction) -> seconds: plans share stages, evaluate runs thousands
    stage_s: dict[tuple[int, int, str, float], float]

    def span(self, name: str, start: int, stop: int) -> float:
        values = getattr(self, name)
        return values[stop] - values[start]


_SUMS: dict[int, tuple[weakref.ref[Problem], ProblemSums]] = {}


def problem_sums(problem: Problem) -> ProblemSums:
    """Prefix sums of a problem, cached while the problem lives (evaluate runs thousands of
    times on one problem)."""
    hit = _SUMS.get(id(problem))
    if hit is not None and hit[0]() is problem:
        return hit[1]
    blocks = problem.blocks

    def prefix(values: list[float]) -> tuple[float, ...]:
        return (0.0, *accumulate(values))

    dense_bytes = [getattr(b, "dense_bytes", None) for b in blocks]
    sums = ProblemSums(
        flops=prefix([b.flops for b in blocks]),
        dense=prefix([b.dense for b in blocks]),
        misaligned=prefix([getattr(b, "misaligned_flops", 0.0) for b in blocks]),
        bytes=prefix([b.bytes for b in blocks]),
        dense_bytes=None if any(v is None for v in dense_bytes) else prefix(dense_bytes),  # type: ignore[arg-type]
        params=prefix([b.param_bytes for b in blocks]),
        ops=prefix([float(b.ops) for b in blocks]),
        pair_peak=tuple(
            (problem.input_bytes if i == 0 else blocks[i - 1].out_bytes) + b.out_bytes
            for i, b in enumerate(blocks)
        ),
        stage_s={},
    )
    key = id(problem)
    _SUMS[key] = (weakref.ref(problem, lambda _: _SUMS.pop(key, None)), sums)
    return sums


def _slices(shares: tuple[float, ...]) -> list[tuple[float, float]]:
    edges = [0.0, *accumulate(shares)]
    edges[-1] = 1.0
    return list(zip(edges[:-1], edges[1:], strict=True))


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _route(
    senders: tuple[str, ...],
    sender_shares: tuple[float, ...],
    receivers: tuple[str, ...],
    receiver_shares: tuple[float, ...],
    nbytes: float,
) -> tuple[Transfer, ...]:
    if len(senders) == 1 and len(receivers) == 1:
        return (Transfer(senders[0], receivers[0], nbytes, 0, 0),)
    transfers = []
    for j, (dst, dst_slice) in enumerate(zip(receivers, _slices(receiver_shares), strict=True)):
        for i, (src, src_slice) in enumerate(zip(senders, _slices(sender_shares), strict=True)):
            part = _overlap(src_slice, dst_slice)
            if part > 1e-12:
                transfers.append(Transfer(src, dst, nbytes * part, i, j))
    return tuple(transfers)


def check_plan(plan: Plan, problem: Problem) -> None:
    """Raise PlanError when the plan does not fit the problem or names unknown devices."""
    if plan.num_blocks != len(problem.blocks):
        raise PlanError(
            f"plan {plan.name!r} covers blocks 0:{plan.num_blocks} but the problem has "
            f"{len(problem.blocks)} blocks; plan the same block chain"
        )
    cluster = problem.cluster
    for stage in plan.stages:
        for device in stage.devices:
            if device not in cluster:
                raise PlanError(
                    f"plan {plan.name!r} stage {stage.index} uses device {device!r}, which is not in "
                    f"cluster {cluster.name!r} (devices: {cluster.device_names}); fix the plan or "
                    "add the device"
                )
        if len(set(stage.devices)) != len(stage.devices):
            raise PlanError(
                f"plan {plan.name!r} stage {stage.index} lists a device twice: {stage.devices}"
            )


def plan_work(
    plan: Plan,
    problem: Problem,
    microbatches: int = 1,
    source: str | None = None,
    sink: str | None = None,
) -> PlanWork:
    """Per-microbatch compute, memory and transfers of every stage of ``plan``; the input comes
    from ``source`` and the outputs go to ``sink`` (default: the problem's)."""
    check_plan(plan, problem)
    source = problem.source if source is None else source
    sink = problem.sink if sink is None else sink
    if not isinstance(microbatches, int) or isinstance(microbatches, bool) or microbatches < 1:
        raise PlanError(f"microbatches must be a positive int, got {microbatches!r}")
    cluster = problem.cluster
    for role, name in (("source", source), ("sink", sink)):
        if name is not None and name not in cluster:
            raise PlanError(
                f"{role} device {name!r} is not in cluster {cluster.name!r} "
                f"(devices: {cluster.device_names})"
            )
    sums = problem_sums(problem)
    blocks = problem.blocks
    m = microbatches
    first = plan.stages[0]
    source_name = first.devices[0] if source is None else source

    stages = []
    prev_devices: tuple[str, ...] = (source_name,)
    prev_shares: tuple[float, ...] = (1.0,)
    for stage in plan.stages:
        start, stop = stage.block_start, stage.block_stop
        in_bytes = problem.input_bytes if start == 0 else blocks[start - 1].out_bytes
        out_bytes = blocks[stop - 1].out_bytes
        flops = sums.span("flops", start, stop)
        dense = sums.span("dense", start, stop)
        misaligned = sums.span("misaligned", start, stop)
        moved = sums.span("bytes", start, stop)
        params = sums.span("params", start, stop)
        ops = sums.span("ops", start, stop)
        dense_moved = None if sums.dense_bytes is None else sums.span("dense_bytes", start, stop)
        # Peak live activations inside the stage: a block's input and output coexist.
        inner_peak = max(max(sums.pair_peak[start:stop]), in_bytes + out_bytes)
        compute, activation = [], []
        for name, share in zip(stage.devices, stage.shares, strict=True):
            f = share / m
            key = (start, stop, name, f)
            seconds = sums.stage_s.get(key)
            if seconds is None:
                fixed = min(params, moved)
                dense_b = None
                if dense_moved is not None:
                    dense_fixed = min(params, dense_moved)
                    dense_b = dense_fixed + f * (dense_moved - dense_fixed)
                seconds = cluster.device(name).block_time_s(
                    f * flops, f * dense, fixed + f * (moved - fixed), ops, dense_b, f * misaligned
                )
                sums.stage_s[key] = seconds
            compute.append(seconds)
            activation.append(f * inner_peak)
        inputs = _route(prev_devices, prev_shares, stage.devices, stage.shares, in_bytes / m)
        stages.append(
            StageWork(stage.index, stage.devices, tuple(compute), tuple(activation), params, inputs)
        )
        prev_devices, prev_shares = stage.devices, stage.shares
    outputs: tuple[Transfer, ...] = ()
    if sink is not None:
        last = plan.stages[-1]
        outputs = tuple(
            Transfer(t.src, t.dst, t.nbytes, t.src_slot, -1)
            for t in _route(last.devices, last.shares, (sink,), (1.0,), blocks[-1].out_bytes / m)
        )
    inputs0 = tuple(Transfer(t.src, t.dst, t.nbytes, -1, t.dst_slot) for t in stages[0].inputs)
    stages[0] = StageWork(
        stages[0].index,
        stages[0].devices,
        stages[0].compute_s,
        stages[0].activation_bytes,
        stages[0].weight_bytes,
        inputs0,
    )
    if not all(math.isfinite(t) for s in stages for t in s.compute_s):
        raise PlanError(f"plan {plan.name!r}: a stage time is not finite; check the block costs")
    return PlanWork(tuple(stages), outputs, m, source_name, sink)
