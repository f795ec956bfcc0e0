"""Analytic evaluation of a plan: the closed forms the partitioner calls thousands of times.

From the per-microbatch work of ``analysis.work.plan_work`` (the same figures the simulator
replays), for ``m`` microbatches through the chain of steps
``input transfer, stage 0, transfer 0->1, stage 1, ..., stage K-1 [, output transfer]``:

* **latency** of one request on an idle cluster. With step times ``p_i`` per microbatch the
  chain is a flow shop of identical jobs, ``L = sum_i p_i + (m - 1) * max(max_i p_i, R)``
  where ``R`` is the busiest resource's time per microbatch (a device that runs two stages, a
  medium that carries two transfers). For ``m = 1`` this is the plain sum. A step's transfers
  (a scatter or gather) run together and share the network (``Network.flow_rates_bps``).
* **throughput** (capacity): ``1 / max_r busy_r`` over every device and every network resource
  per request, the bound no schedule beats. On a shared medium the per-request airtime is
  divided by ``contention_efficiency`` when the request puts two or more flows on it.
* **energy** per request at the operating period ``T``: ``1 / request_rate_rps`` when there is
  an offered load (``qoe.request_rate_rps``, else the throughput floor ``qoe.throughput_rps``),
  otherwise a closed loop of one request at a time, ``T = L``; a load above capacity runs at
  capacity. Then ``cost_models.energy``: busy + idle power of the plan's devices + radio.
* **memory** per device: weights of its stages plus the activation peak of one microbatch.

The simulator gives the same latency for ``m = 1`` chains without contention, and never a
higher throughput than this capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..cost_models.energy import EnergyBreakdown, energy_breakdown
from ..cost_models.network import Network, Resource
from ..ir.plan import Plan
from .problem import Problem
from .work import PlanWork, Transfer, plan_work

__all__ = ["Metrics", "evaluate", "step_transfer_s", "resource_busy_s"]


@dataclass(frozen=True)
class Metrics:
    """Predicted figures of one plan on one problem."""

    latency_s: float
    throughput_rps: float
    energy_j: float
    period_s: float
    memory_bytes: dict[str, float]
    memory_ok: bool
    busy_s: dict[str, float]
    stage_compute_s: tuple[float, ...]
    transfer_s: tuple[float, ...]
    bottleneck: str
    saturated: bool
    microbatches: int
    energy: EnergyBreakdown = field(default_factory=EnergyBreakdown)

    @property
    def over_memory(self) -> list[str]:
        return [d for d, ok in self._memory_fit.items() if not ok]

    _memory_fit: dict[str, bool] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_s": self.latency_s,
            "throughput_rps": self.throughput_rps,
            "energy_j": self.energy_j,
            "period_s": self.period_s,
            "memory_bytes": dict(self.memory_bytes),
            "memory_ok": self.memory_ok,
            "busy_s": dict(self.busy_s),
            "stage_compute_s": list(self.stage_compute_s),
            "transfer_s": list(self.transfer_s),
            "bottleneck": self.bottleneck,
            "saturated": self.saturated,
            "microbatches": self.microbatches,
        }


def step_transfer_s(network: Network, transfers: tuple[Transfer, ...]) -> float:
    """Time for a step's transfers, started together, to all arrive."""
    moving = [t for t in transfers if t.src != t.dst]
    if not moving:
        return 0.0
    rates = network.flow_rates_bps([(t.src, t.dst) for t in moving])
    return max(
        network.path_latency_s(t.src, t.dst) + (8.0 * t.nbytes / r if t.nbytes > 0 else 0.0)
        for t, r in zip(moving, rates, strict=True)
    )


def _latency(network: Network, transfers: tuple[Transfer, ...]) -> float:
    return min(
        (network.path_latency_s(t.src, t.dst) for t in transfers if t.src != t.dst), default=0.0
    )


def resource_busy_s(network: Network, work: PlanWork) -> dict[str, float]:
    """Seconds each network resource is busy per microbatch (airtime, port time)."""
    load: dict[Resource, float] = {}
    flows: dict[Resource, int] = {}
    transfers = [t for s in work.stages for t in s.inputs] + list(work.outputs)
    for t in transfers:
        if t.src == t.dst or t.nbytes <= 0:
            continue
        for resource, seconds_per_bit in network.path(t.src, t.dst):
            load[resource] = load.get(resource, 0.0) + 8.0 * t.nbytes * seconds_per_bit
            flows[resource] = flows.get(resource, 0) + 1
    return {
        f"{kind}:{name}": seconds / network.capacity((kind, name), flows[(kind, name)])
        for (kind, name), seconds in load.items()
    }


def evaluate(
    plan: Plan,
    problem: Problem,
    *,
    microbatches: int = 1,
    request_rate_rps: float | None = None,
    source: str | None = None,
    sink: str | None = None,
) -> Metrics:
    """Latency, throughput, energy and memory of ``plan`` on ``problem`` (see module doc)."""
    work = plan_work(plan, problem, microbatches, source, sink)
    network = problem.cluster.network
    m = work.microbatches

    # Steps of one microbatch, in order.
    # ``held``: how long a step holds its resource; propagation latency pipelines, so a
    # transfer holds the network for its time less the latency.
    steps: list[float] = []
    held: list[float] = []
    transfer_s: list[float] = []
    stage_s: list[float] = []
    for stage in work.stages:
        t, lat = step_transfer_s(network, stage.inputs), _latency(network, stage.inputs)
        steps += [t]
        held += [max(t - lat, 0.0)]
        transfer_s.append(t)
        stage_s.append(max(stage.compute_s))
        steps.append(stage_s[-1])
        held.append(stage_s[-1])
    if work.outputs:
        t = step_transfer_s(network, work.outputs)
        steps.append(t)
        held.append(max(t - _latency(network, work.outputs), 0.0))
        transfer_s.append(t)

    busy_mb: dict[str, float] = {}
    for stage in work.stages:
        for name, seconds in zip(stage.devices, stage.compute_s, strict=True):
            busy_mb[name] = busy_mb.get(name, 0.0) + seconds
    occupancy = {f"device:{d}": s for d, s in busy_mb.items()}
    occupancy.update(resource_busy_s(network, work))
    bottleneck = max(occupancy, key=lambda k: occupancy[k])
    per_mb = occupancy[bottleneck]

    latency = sum(steps) + (m - 1) * max(max(held), per_mb)
    capacity = math.inf if per_mb <= 0 else 1.0 / (m * per_mb)

    rate = request_rate_rps
    if rate is None:
        rate = problem.qoe.request_rate_rps or problem.qoe.throughput_rps
    saturated = rate is not None and rate > capacity
    period = latency if rate is None else 1.0 / min(rate, capacity)

    busy = {d: m * s for d, s in busy_mb.items()}
    transfers = [(t.src, t.dst, m * t.nbytes) for s in work.stages for t in s.inputs]
    transfers += [(t.src, t.dst, m * t.nbytes) for t in work.outputs]
    energy = energy_breakdown(problem.cluster, busy, period, transfers)

    memory: dict[str, float] = {}
    for stage in work.stages:
        for name, act in zip(stage.devices, stage.activation_bytes, strict=True):
            weights, peak = memory.get(name, 0.0), act
            memory[name] = weights + stage.weight_bytes
            memory[f"\0act:{name}"] = max(memory.get(f"\0act:{name}", 0.0), peak)
    memory_bytes = {name: memory[name] + memory[f"\0act:{name}"] for name in busy_mb}
    fit = {
        name: memory_bytes[name] <= problem.cluster.device(name).memory_bytes for name in busy_mb
    }
    return Metrics(
        latency_s=latency,
        throughput_rps=capacity,
        energy_j=energy.total_j,
        period_s=period,
        memory_bytes=memory_bytes,
        memory_ok=all(fit.values()),
        busy_s=busy,
        stage_compute_s=tuple(m * s for s in stage_s),
        transfer_s=tuple(transfer_s),
        bottleneck=bottleneck,
        saturated=saturated,
        microbatches=m,
        energy=energy,
        _memory_fit=fit,
    )
