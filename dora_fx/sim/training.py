"""Simulated training iterations: the actions of a ``TrainSchedule`` (GPipe or 1F1B, from
``ir.train_schedule.lower_training``) executed against the cost model, event by event.

Durations are ``analysis.training.train_work``'s: a stage's ``F`` / ``B`` of one microbatch
take its slowest device's forward / backward seconds and hold all the group's devices; a
``SEND`` (activation) or ``GSEND`` (gradient) starts when its stage reaches it and every
network resource on its flows' paths (ports, shared media) is free, holds those resources for
its transfer time less the path latency, and arrives after its full transfer time
(``analysis.evaluate.step_transfer_s``; it does not block the sender); a ``RECV`` / ``GRECV``
waits for the arrival. Stage 0's forward of microbatch ``j`` waits for its input, sent from
the source one microbatch after another. ``REDUCE`` runs the ring all-reduce of the stage's
gradients (``cost_models.collectives``) on its group's network resources, then the stage's
optimizer step on its devices (every stage's at once: ``evaluate_training`` sums them).

The next action executed is always the one that can start earliest (a blocked receive waits
until its message is sent), so resources are granted first come, first served. On a chain
without contention the iteration time equals ``evaluate_training``'s closed form for uniform
stages; 1F1B's peak of activations in flight is ``min(m, S - k)`` against GPipe's ``m``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..analysis.evaluate import step_transfer_s
from ..analysis.problem import Problem
from ..analysis.training import TrainWork, train_work, training_spec
from ..analysis.work import Transfer
from ..cost_models.collectives import ring_allreduce_flows
from ..cost_models.energy import energy_breakdown
from ..cost_models.network import Network
from ..cost_models.train_costs import optimizer_state_bytes
from ..ir.plan import Plan
from ..ir.train_schedule import TKind, TrainSchedule, lower_training
from ..ir.train_schedule import Transfer as TrainTransfer

__all__ = ["TrainSimResult", "simulate_training", "chain_schedule"]


@dataclass(frozen=True)
class TrainSimResult:
    iteration_s: float
    schedule: TrainSchedule
    stage_busy_s: tuple[float, ...]  # F + B seconds per stage
    peak_in_flight: tuple[int, ...]  # per stage
    peak_memory_bytes: dict[str, float]  # per device: weights + grads + optimizer + activations
    energy_j: float
    timeline: list[tuple[int, str, float, float]] = field(default_factory=list)  # (stage, action, start, end)


def chain_schedule(stages: int, microbatches: int, policy: str) -> TrainSchedule:
    """The training schedule of a chain of ``stages`` (stage k sends stage k+1 tag k)."""
    transfers = [TrainTransfer(k, k + 1, k) for k in range(stages - 1)]
    return lower_training(stages, transfers, microbatches, policy)


def _resources(network: Network, transfers: tuple[Transfer, ...] | list[tuple[str, str]]) -> set[str]:
    out: set[str] = set()
    for t in transfers:
        src, dst = (t.src, t.dst) if isinstance(t, Transfer) else t
        for (kind, name), _ in network.path(src, dst):
            out.add(f"{kind}:{name}")
    return out


def _min_latency(network: Network, transfers: tuple[Transfer, ...]) -> float:
    return min((network.path_latency_s(t.src, t.dst) for t in transfers if t.src != t.dst), default=0.0)


class _Sim:
    def __init__(self, work: TrainWork, problem: Problem) -> None:
        self.work, self.network = work, problem.cluster.network
        self.free: dict[str, float] = {}
        self.arrival: dict[tuple[str, int, int, int], float] = {}  # (kind, src, dst, mb)
        self.timeline: list[tuple[int, str, float, float]] = []
        self._terms: dict[int, tuple[float, float, set[str]]] = {}

    def occupy(self, resources: set[str], ready: float, duration: float, hold: float) -> float:
        start = max([ready, *(self.free.get(r, 0.0) for r in resources)])
        for r in resources:
            self.free[r] = start + hold
        return start

    def transfer(self, flows: tuple[Transfer, ...], ready: float) -> tuple[float, float]:
        """(start, arrival) of a step's flows started together."""
        terms = self._terms.get(id(flows))
        if terms is None:
            duration = step_transfer_s(self.network, flows)
            hold = max(duration - _min_latency(self.network, flows), 0.0)
            terms = self._terms[id(flows)] = (duration, hold, _resources(self.network, flows))
        duration, hold, resources = terms
        if duration <= 0:
            return ready, ready
        start = self.occupy(resources, ready, duration, hold)
        return start, start + duration


def simulate_training(
    plan: Plan, problem: Problem, *, microbatches: int = 1, schedule: str = "1f1b"
) -> TrainSimResult:
    """Simulate one training iteration of ``plan`` (see the module docstring)."""
    spec = training_spec(problem)
    work = train_work(plan, problem, microbatches)
    n, m = len(work.stages), microbatches
    sched = chain_schedule(n, m, schedule)
    sim = _Sim(work, problem)
    network = sim.network
    # inputs from the source, one microbatch after another
    input_at = []
    for _ in range(m):
        _, arrive = sim.transfer(work.stages[0].inputs, 0.0)
        input_at.append(arrive)
    clock = [0.0] * n
    pcs = [0] * n
    busy = [0.0] * n
    live = [0] * n
    peak = [0] * n
    grads = [work.gradients(k) for k in range(n)]  # one tuple per stage: cached transfer terms
    devices = [{f"device:{d}" for d in s.devices} for s in work.stages]
    fwd = [max(s.forward_s) for s in work.stages]
    bwd = [max(s.backward_s) for s in work.stages]

    def ready(k: int) -> float | None:
        a = sched.stages[k][pcs[k]]
        if a.kind is TKind.RECV:
            got = sim.arrival.get(("act", a.peer, k, a.mb))
            return None if got is None else max(clock[k], got)
        if a.kind is TKind.GRECV:
            got = sim.arrival.get(("grad", a.peer, k, a.mb))
            return None if got is None else max(clock[k], got)
        if a.kind is TKind.FORWARD and k == 0:
            return max(clock[k], input_at[a.mb])
        return clock[k]

    while any(pcs[k] < len(sched.stages[k]) for k in range(n)):
        options = [(t, k) for k in range(n) if pcs[k] < len(sched.stages[k]) and (t := ready(k)) is not None]
        if not options:  # lower_training already proved the schedule deadlock-free
            raise RuntimeError("training simulation stalled")
        t, k = min(options)
        a = sched.stages[k][pcs[k]]
        pcs[k] += 1
        stage = work.stages[k]
        if a.kind in (TKind.FORWARD, TKind.BACKWARD):
            duration = fwd[k] if a.kind is TKind.FORWARD else bwd[k]
            start = sim.occupy(devices[k], t, duration, duration)
            clock[k] = start + duration
            busy[k] += duration
            live[k] += 1 if a.kind is TKind.FORWARD else -1
            peak[k] = max(peak[k], live[k])
            sim.timeline.append((k, str(a), start, clock[k]))
        elif a.kind is TKind.SEND:
            start, arrive = sim.transfer(work.stages[a.peer].inputs, t)
            sim.arrival[("act", k, a.peer, a.mb)] = arrive
            sim.timeline.append((k, str(a), start, arrive))
        elif a.kind is TKind.GSEND:
            start, arrive = sim.transfer(grads[k], t)
            sim.arrival[("grad", k, a.peer, a.mb)] = arrive
            sim.timeline.append((k, str(a), start, arrive))
        elif a.kind is TKind.REDUCE:
            if stage.allreduce_s > 0:
                flows = [(s, d) for s, d, _ in ring_allreduce_flows(stage.devices, stage.grad_bytes)]
                hold = stage.allreduce_s
                start = sim.occupy(_resources(network, flows), t, hold, hold)
                clock[k] = start + hold
                sim.timeline.append((k, "REDUCE", start, clock[k]))
            if stage.optimizer_s > 0:  # the weight update, after the gradients are whole
                start = sim.occupy(devices[k], max(t, clock[k]), stage.optimizer_s, stage.optimizer_s)
                clock[k] = start + stage.optimizer_s
                sim.timeline.append((k, "OPTIMIZER", start, clock[k]))
        # RECV / GRECV: the clock moved to the arrival in ready()
        else:
            clock[k] = t
    iteration = max(clock) if clock else 0.0
    memory: dict[str, float] = {}
    for k, stage in enumerate(work.stages):
        opt = optimizer_state_bytes(spec.optimizer, stage.grad_bytes)
        for name, act in zip(stage.devices, stage.activation_bytes, strict=True):
            memory[name] = memory.get(name, 0.0) + (
                stage.weight_bytes + stage.grad_bytes + opt + peak[k] * act
            )
    busy_s: dict[str, float] = {}
    for stage in work.stages:
        for name, f, b in zip(stage.devices, stage.forward_s, stage.backward_s, strict=True):
            busy_s[name] = busy_s.get(name, 0.0) + m * (f + b) + stage.optimizer_s
    transfers = []
    for k, stage in enumerate(work.stages):
        transfers += [(x.src, x.dst, m * x.nbytes) for x in (*stage.inputs, *work.gradients(k))]
        transfers += ring_allreduce_flows(stage.devices, stage.grad_bytes)
    energy = energy_breakdown(problem.cluster, busy_s, iteration, transfers).total_j
    if not math.isfinite(iteration):
        raise RuntimeError(f"plan {plan.name!r}: the simulated iteration time is not finite")
    return TrainSimResult(
        iteration_s=iteration,
        schedule=sched,
        stage_busy_s=tuple(busy),
        peak_in_flight=tuple(peak),
        peak_memory_bytes=memory,
        energy_j=energy,
        timeline=sim.timeline,
    )
