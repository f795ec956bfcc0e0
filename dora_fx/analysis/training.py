"""Closed-form evaluation of a training plan: one iteration of a pipeline of (data-parallel)
stages over ``m`` microbatches, under GPipe or 1F1B.

Per microbatch, stage ``k``'s device ``d`` (share ``s_d`` of the batch, ``f = s_d / m``) runs
its forward ``F_d`` (``analysis.work``: the inference roofline) and its backward ``B_d`` (the
same roofline over the blocks' backward FLOPs and bytes, weight traffic fixed, the rest scaled
by ``f``; the last stage's with the loss, ``train_costs.loss_costs``). Activations cross cut ``k`` down the pipeline (the routed slices of
``analysis.work``) and their gradients, of the same size, cross it back over the reverse paths.

* **iteration time**: the flow shop of ``m`` identical jobs through the steps
  ``input -> stage 0 -> cut 0 -> ... -> stage S-1``, each stage step ``max_d (F_d + B_d)`` and
  each cut step its activation transfer plus its gradient transfer::

      T = sum_i p_i + (m - 1) * max(max_i p_i, R) + sum_k (A_k + O_k)

  ``R`` the busiest resource per microbatch (a device's ``F + B``, a port or a shared medium's
  airtime of every activation and gradient, the medium's contention loss with 2+ flows), ``A_k``
  the ring all-reduce of stage ``k``'s gradients over its group (``cost_models.collectives``;
  after the pipeline drains, the stages' all-reduces one after the other: exact when they share
  one medium, an upper bound otherwise) and ``O_k`` its optimizer step on the group's slowest
  device (``train_costs.optimizer_step_costs``; after its all-reduce, summed like them: an
  upper bound, the simulator steps the stages at once). GPipe and 1F1B get the same closed form (1F1B only
  keeps fewer activations); the simulator (``sim.training``) tells them apart.
* **memory** per device: weights + gradients + optimizer state of its stage (a data-parallel
  replica holds all three) + the activations autograd saves per microbatch
  (``f * activation_bytes``) times the microbatches in flight: ``m`` under GPipe,
  ``min(m, S - k)`` under 1F1B (``ir.train_schedule.in_flight``).
* **energy** per iteration: ``m (F + B)`` busy on every device, idle for the rest of ``T``, radio
  for every activation, gradient and all-reduce byte (``cost_models.energy``).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..cost_models.collectives import ring_allreduce_flows, ring_allreduce_s
from ..cost_models.device import Device
from ..cost_models.energy import EnergyBreakdown, energy_breakdown
from ..cost_models.network import Network, Resource
from ..cost_models.train_costs import loss_costs, optimizer_state_bytes, optimizer_step_costs
from ..errors import PlanError
from ..ir.plan import Plan
from .evaluate import Metrics, step_transfer_s
from .problem import Block, Problem, TrainingSpec
from .work import Transfer, plan_work, problem_sums

__all__ = [
    "MemoryParts",
    "TrainStageWork",
    "TrainWork",
    "TrainMetrics",
    "evaluate_training",
    "in_flight_count",
    "loss_s",
    "optimizer_step_s",
    "splits_evenly",
    "train_work",
    "without_sink",
]


def splits_evenly(plan: Plan, batch: int, microbatches: int) -> bool:
    """Whether ``microbatches`` keep every data-parallel group's planned rows: each device's
    rows of the batch divide into equal parts (the compiler's schedule_comm rule)."""
    m = microbatches
    if batch % m:
        return False
    for stage in plan.stages:
        if len(stage.devices) > 1 and m > 1:
            rows = [share * batch for share in stage.shares]
            if any(abs(r - round(r)) > 1e-6 or round(r) % m for r in rows):
                return False
    return True


def in_flight_count(policy: str, stages: int, stage: int, microbatches: int) -> int:
    """Microbatches whose activations stage ``stage`` holds at its peak (as
    ``ir.train_schedule.in_flight`` counts on the lowered schedule)."""
    if policy == "gpipe":
        return microbatches
    return min(microbatches, stages - stage)


@dataclass(frozen=True)
class MemoryParts:
    """Bytes one device holds during an iteration."""

    weights: float
    grads: float
    optimizer: float
    activations: float  # per microbatch in flight x in_flight
    in_flight: int

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations

    def to_json(self) -> dict[str, float]:
        return {
            "weights": self.weights, "grads": self.grads, "optimizer": self.optimizer,
            "activations": self.activations, "in_flight": self.in_flight, "total": self.total,
        }  # fmt: skip


@dataclass(frozen=True)
class TrainStageWork:
    """Stage ``index`` per microbatch, per device of its group."""

    index: int
    devices: tuple[str, ...]
    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]
    activation_bytes: tuple[float, ...]  # saved per microbatch
    weight_bytes: float
    grad_bytes: float
    inputs: tuple[Transfer, ...]  # activations into the stage (stage 0: from the source)
    allreduce_s: float
    optimizer_s: float = 0.0  # one optimizer step, slowest device of the group

    @property
    def step_s(self) -> float:
        return max(f + b for f, b in zip(self.forward_s, self.backward_s, strict=True))


@dataclass(frozen=True)
class TrainWork:
    stages: tuple[TrainStageWork, ...]
    microbatches: int
    source: str

    def gradients(self, k: int) -> tuple[Transfer, ...]:
        """Gradients stage ``k`` sends back to stage ``k - 1`` (reverse of its inputs)."""
        if k == 0:
            return ()
        return tuple(Transfer(t.dst, t.src, t.nbytes, t.dst_slot, t.src_slot) for t in self.stages[k].inputs)


_NO_SINK: dict[int, tuple[weakref.ref[Problem], Problem]] = {}


def without_sink(problem: Problem) -> Problem:
    """The problem with no sink (a training iteration returns nothing but the loss); one copy
    per problem while it lives, so the prefix sums and stage times stay cached."""
    if problem.sink is None:
        return problem
    hit = _NO_SINK.get(id(problem))
    if hit is not None and hit[0]() is problem:
        return hit[1]
    copy = replace(problem)
    object.__setattr__(copy, "sink", None)
    key = id(problem)
    _NO_SINK[key] = (weakref.ref(problem, lambda _: _NO_SINK.pop(key, None)), copy)
    return copy


def train_work(plan: Plan, problem: Problem, microbatches: int) -> TrainWork:
    """Per-microbatch forward and backward seconds, saved activations and transfers of every
    stage of ``plan`` (see the module docstring)."""
    fwd = plan_work(plan, without_sink(problem), microbatches, sink=None)
    blocks = problem.blocks
    m = microbatches
    sums = problem_sums(problem)
    stages = []
    for stage, work in zip(plan.stages, fwd.stages, strict=True):
        part = blocks[stage.block_start : stage.block_stop]
        b_flops = sum(b.backward_flops for b in part)
        b_dense = sum(b.backward_dense for b in part)
        b_bytes = sum(b.backward_bytes for b in part)
        b_dense_bytes = _backward_dense_bytes(part)
        acts = sum(b.activation_bytes for b in part)
        grads = sum(b.grad_bytes for b in part)
        params = sums.span("params", stage.block_start, stage.block_stop)
        ops = sum(b.backward_kernels for b in part)
        fixed = min(params, b_bytes)
        optimizer, tensors = training_spec(problem).optimizer, sum(b.grad_tensors for b in part)
        backward, saved, optimizer_s = [], [], 0.0
        for name, share in zip(stage.devices, stage.shares, strict=True):
            device, f = problem.cluster.device(name), share / m
            seconds = 0.0
            if b_flops > 0 or b_bytes > 0:
                dense_b = None
                if b_dense_bytes is not None:
                    dense_fixed = min(params, b_dense_bytes)
                    dense_b = dense_fixed + f * (b_dense_bytes - dense_fixed)
                seconds = device.block_time_s(
                    f * b_flops, f * b_dense, fixed + f * (b_bytes - fixed), ops, dense_b
                )
            if stage.block_stop == len(blocks):  # the loss, before the last stage's backward
                seconds += loss_s(device, f, blocks[-1].out_bytes)
            backward.append(seconds)
            saved.append(f * acts)
            optimizer_s = max(optimizer_s, optimizer_step_s(device, optimizer, grads, tensors))
        allreduce = ring_allreduce_s(problem.cluster.network, stage.devices, grads)
        stages.append(
            TrainStageWork(
                stage.index, stage.devices, work.compute_s, tuple(backward), tuple(saved),
                params, grads, work.inputs, allreduce, optimizer_s,
            )  # fmt: skip
        )
    return TrainWork(tuple(stages), m, fwd.source)


def loss_s(device: Device, share: float, output_bytes: float) -> float:
    """The loss and its backward on ``share`` of a batch's ``output_bytes`` of outputs
    (``train_costs.loss_costs``, priced by the roofline of its totals)."""
    flops, moved, kernels = loss_costs(share * output_bytes)
    return device.block_time_s(flops, 0.0, moved, kernels) if kernels else 0.0


def optimizer_step_s(device: Device, optimizer: str, grad_bytes: float, tensors: int) -> float:
    """One optimizer step over ``grad_bytes`` of trainable weights in ``tensors`` tensors on
    ``device`` (``train_costs.optimizer_step_costs``, priced by the roofline of its totals)."""
    if grad_bytes <= 0:
        return 0.0
    flops, moved, kernels = optimizer_step_costs(optimizer, grad_bytes, tensors)
    return device.block_time_s(flops, 0.0, moved, kernels)


def _backward_dense_bytes(blocks: Sequence[Block]) -> float | None:
    """The blocks' backward bytes moved by dense nodes; None when a block does not say (the
    backward is then priced with one roofline of its totals)."""
    values = [b.backward_dense_bytes for b in blocks]
    known = [v for v in values if v is not None]
    return sum(known) if len(known) == len(values) else None


@dataclass(frozen=True)
class TrainMetrics:
    """Predicted figures of one training iteration of a plan."""

    iteration_s: float
    energy_j: float
    microbatches: int
    schedule: str
    batch: int
    stage_forward_s: tuple[float, ...]  # per microbatch, slowest device of the group
    stage_backward_s: tuple[float, ...]
    transfer_s: tuple[float, ...]  # per microbatch: input, then each cut's activation + gradient
    allreduce_s: tuple[float, ...]  # per stage
    memory: dict[str, MemoryParts]
    memory_ok: bool
    busy_s: dict[str, float]
    bottleneck: str
    energy: EnergyBreakdown = field(default_factory=EnergyBreakdown)
    over_memory: tuple[str, ...] = ()
    optimizer_s: tuple[float, ...] = ()  # per stage: one optimizer step

    @property
    def samples_per_s(self) -> float:
        return math.inf if self.iteration_s <= 0 else self.batch / self.iteration_s

    def as_metrics(self) -> Metrics:
        """The inference-shaped figures the plan set carries: latency and period are the
        iteration time, throughput iterations per second."""
        return Metrics(
            latency_s=self.iteration_s,
            throughput_rps=math.inf if self.iteration_s <= 0 else 1.0 / self.iteration_s,
            energy_j=self.energy_j,
            period_s=self.iteration_s,
            memory_bytes={d: p.total for d, p in self.memory.items()},
            memory_ok=self.memory_ok,
            busy_s=dict(self.busy_s),
            stage_compute_s=tuple(
                self.microbatches * (f + b)
                for f, b in zip(self.stage_forward_s, self.stage_backward_s, strict=True)
            ),
            transfer_s=self.transfer_s,
            bottleneck=self.bottleneck,
            saturated=False,
            microbatches=self.microbatches,
            energy=self.energy,
            _memory_fit={d: d not in self.over_memory for d in self.memory},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration_s": self.iteration_s,
            "energy_j": self.energy_j,
            "microbatches": self.microbatches,
            "schedule": self.schedule,
            "samples_per_s": self.samples_per_s,
            "stage_forward_s": list(self.stage_forward_s),
            "stage_backward_s": list(self.stage_backward_s),
            "transfer_s": list(self.transfer_s),
            "allreduce_s": list(self.allreduce_s),
            "optimizer_s": list(self.optimizer_s),
            "memory": {d: p.to_json() for d, p in self.memory.items()},
            "memory_ok": self.memory_ok,
            "bottleneck": self.bottleneck,
        }


def _resource_busy(network: Network, transfers: list[Transfer]) -> dict[str, float]:
    load: dict[Resource, float] = {}
    flows: dict[Resource, int] = {}
    for t in transfers:
        if t.src == t.dst or t.nbytes <= 0:
            continue
        for resource, seconds_per_bit in network.path(t.src, t.dst):
            load[resource] = load.get(resource, 0.0) + 8.0 * t.nbytes * seconds_per_bit
            flows[resource] = flows.get(resource, 0) + 1
    return {
        f"{kind}:{name}": s / network.capacity((kind, name), flows[(kind, name)])
        for (kind, name), s in load.items()
    }


def _latency(network: Network, transfers: tuple[Transfer, ...]) -> float:
    return min((network.path_latency_s(t.src, t.dst) for t in transfers if t.src != t.dst), default=0.0)


def training_spec(problem: Problem) -> TrainingSpec:
    if problem.training is None:
        raise PlanError(
            "this is an inference Problem; build it with training=TrainingSpec(...) to "
            "evaluate a training iteration"
        )
    return problem.training


def evaluate_training(
    plan: Plan, problem: Problem, *, microbatches: int = 1, schedule: str = "1f1b"
) -> TrainMetrics:
    """Iteration time, energy and memory of ``plan`` on the training ``problem`` (module doc)."""
    spec = training_spec(problem)
    work = train_work(plan, problem, microbatches)
    network = problem.cluster.network
    m, n_stages = work.microbatches, len(work.stages)
    steps: list[float] = []
    held: list[float] = []
    transfer_s: list[float] = []
    moving: list[Transfer] = []
    for k, stage in enumerate(work.stages):
        grads = work.gradients(k)
        t = step_transfer_s(network, stage.inputs) + step_transfer_s(network, grads)
        lat = _latency(network, stage.inputs) + _latency(network, grads)
        steps.append(t)
        held.append(max(t - lat, 0.0))
        transfer_s.append(t)
        moving += list(stage.inputs) + list(grads)
        steps.append(stage.step_s)
        held.append(stage.step_s)
    busy_mb: dict[str, float] = {}
    for stage in work.stages:
        for name, f, b in zip(stage.devices, stage.forward_s, stage.backward_s, strict=True):
            busy_mb[name] = busy_mb.get(name, 0.0) + f + b
    occupancy = {f"device:{d}": s for d, s in busy_mb.items()}
    occupancy.update(_resource_busy(network, moving))
    bottleneck = max(occupancy, key=lambda key: occupancy[key])
    allreduce = tuple(s.allreduce_s for s in work.stages)
    optimizer = tuple(s.optimizer_s for s in work.stages)
    iteration = (
        sum(steps) + (m - 1) * max(max(held), occupancy[bottleneck]) + sum(allreduce) + sum(optimizer)
    )

    memory: dict[str, MemoryParts] = {}
    for k, stage in enumerate(work.stages):
        flight = in_flight_count(schedule, n_stages, k, m)
        opt = optimizer_state_bytes(spec.optimizer, stage.grad_bytes)
        for name, act in zip(stage.devices, stage.activation_bytes, strict=True):
            mine = MemoryParts(stage.weight_bytes, stage.grad_bytes, opt, flight * act, flight)
            if name in memory:  # a device running two stages holds both
                old = memory[name]
                mine = MemoryParts(
                    old.weights + mine.weights, old.grads + mine.grads,
                    old.optimizer + mine.optimizer, old.activations + mine.activations,
                    old.in_flight + mine.in_flight,
                )  # fmt: skip
            memory[name] = mine
    over = tuple(d for d, p in memory.items() if p.total > problem.cluster.device(d).memory_bytes)
    transfers = [(t.src, t.dst, m * t.nbytes) for t in moving]
    for stage in work.stages:
        transfers += ring_allreduce_flows(stage.devices, stage.grad_bytes)
    busy = {d: m * s for d, s in busy_mb.items()}
    for stage in work.stages:
        for name in stage.devices:
            busy[name] += stage.optimizer_s
    energy = energy_breakdown(problem.cluster, busy, iteration, transfers)
    return TrainMetrics(
        iteration_s=iteration,
        energy_j=energy.total_j,
        microbatches=m,
        schedule=schedule,
        batch=problem.batch,
        stage_forward_s=tuple(max(s.forward_s) for s in work.stages),
        stage_backward_s=tuple(max(s.backward_s) for s in work.stages),
        transfer_s=tuple(transfer_s),
        allreduce_s=allreduce,
        optimizer_s=optimizer,
        memory=memory,
        memory_ok=not over,
        busy_s=busy,
        bottleneck=bottleneck,
        energy=energy,
        over_memory=over,
    )
