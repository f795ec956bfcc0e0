"""Simulate the schedule a plan was compiled with (``dora_fx.ir.schedule.Schedule``).

The discrete-event simulator (``sim.simulator``) runs a plan at stage granularity; this module
drives it with what the chosen schedule does:

* ``microbatches``: the request is cut into that many microbatches;
* ``overlap``: whether sends stay in flight while the stage computes the next microbatch
  (the ``overlap`` lowering) or block the device until they have left (``naive``). Under
  ``overlap`` a stage waits (SENT) for the sends of microbatch ``k - 1`` after computing
  microbatch ``k``, so it starts microbatch ``k + 1`` only once those have left; counted
  across requests (microbatch ``k`` of request ``r`` is the ``r * m + k``-th of the stage),
  which is how the distributed runtime runs requests back to back. The plain simulator lets
  sends queue without bound;
* ``contention``: ``fair`` flows on one medium split its airtime evenly and pay its
  contention loss (``Network.capacity(resource, 2)``); ``critical-first`` flows are paced
  by criticality: on each shared resource only the most critical flows send (earliest
  request, then earliest microbatch, then the one nearest the end of the pipeline: the flow
  on the critical path) while the others hold their chunks back, so the medium carries one
  sender at a time and loses nothing to collisions. In the fluid model a held flow resumes
  the moment the critical one ends: the limit of fine chunks.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from ..analysis.problem import Problem
from ..analysis.work import Transfer, plan_work
from ..cost_models.network import Network
from ..ir.lowering import relower
from ..ir.plan import Plan
from ..ir.schedule import Schedule
from .config import SimConfig
from .fluid import FluidNetwork, _Flow
from .result import SimResult
from .simulator import _Run, _Task

if TYPE_CHECKING:
    from ..analysis.evaluate import Metrics

__all__ = ["PriorityFluidNetwork", "simulate_schedule", "schedule_config", "schedule_metrics"]

Priority = tuple[int, int, int]
MAX_IN_FLIGHT = 32  # requests in flight to measure a schedule's throughput
_HELD = 1e-9  # share of a resource a held flow keeps: never zero, so its finish time is finite


class PriorityFluidNetwork(FluidNetwork):
    """A fluid network in which, on every shared resource, only the flows of the smallest
    priority send; the rest are held until those end."""

    def __init__(self, network: Network) -> None:
        super().__init__(network)
        self.priority: dict[int, Priority] = {}
        self._cost: dict[int, dict[int, float]] = {}

    def start_prioritized(
        self,
        fid: int,
        path: tuple[tuple[int, float], ...],
        bits: float,
        now: float,
        priority: Priority,
    ) -> list[tuple[int, float, int]]:
        self.priority[fid] = priority
        self._cost[fid] = dict(path)
        return self.start(fid, path, bits, now)

    def finish(self, fid: int, now: float) -> list[tuple[int, float, int]]:
        out = super().finish(fid, now)
        self.priority.pop(fid, None)
        self._cost.pop(fid, None)
        return out

    def _rate(self, flow: _Flow) -> float:
        best = math.inf
        mine = self.priority.get(flow.fid, (0, 0, 0))
        for index, cost in flow.path:
            members = self._members[index]
            if len(members) == 1:
                offer = 1.0 / self._load[index]
            else:
                top = min(self.priority.get(f, (0, 0, 0)) for f in members)
                if mine > top:
                    return _HELD / cost
                sending = [f for f in members if self.priority.get(f, (0, 0, 0)) == top]
                load = sum(self._cost[f][index] if f in self._cost else cost for f in sending)
                capacity = self._shared_capacity[index] if len(sending) > 1 else 1.0
                offer = capacity / load
            if offer < best:
                best = offer
        return best


class _ScheduledRun(_Run):
    def __init__(self, plan: Plan, problem: Problem, config: SimConfig, critical_first: bool):
        super().__init__(
            plan,
            problem,
            plan_work(plan, problem, config.microbatch_count, config.source, config.sink),
            config,
        )
        self.critical_first = critical_first
        if critical_first:
            self.net = PriorityFluidNetwork(problem.cluster.network)
        # (stage, slot) -> sequence -> sends to later stages not yet left (overlap window)
        self.in_flight: dict[tuple[int, int], dict[int, int]] = {}

    def _start_next(self, device: int, now: float) -> None:
        if self.config.overlap and self._held(self.queue[device][0]):
            return  # started again when the send it waits for has left
        super()._start_next(device, now)

    def _held(self, task: _Task) -> bool:
        """Whether the stage still waits for the sends of two or more microbatches back."""
        request, mb, stage, slot = task
        sent = self.in_flight.get((stage, slot))
        if not sent:
            return False
        return min(sent) <= request * self.m + mb - 2

    def _send(
        self, t: Transfer, request: int, mb: int, to_stage: int, sender: int, now: float
    ) -> None:
        if sender >= 0 and t.src != t.dst and to_stage <= self.last:
            sent = self.in_flight.setdefault((to_stage - 1, t.src_slot), {})
            seq = request * self.m + mb
            sent[seq] = sent.get(seq, 0) + 1
        super()._send(t, request, mb, to_stage, sender, now)

    def _flow_done(self, fid: int, now: float, started: bool = True) -> None:
        t, request, mb, to_stage, sender = self.flow_meta[fid]
        super()._flow_done(fid, now, started)
        if sender < 0 or to_stage > self.last:
            return
        sent = self.in_flight[(to_stage - 1, t.src_slot)]
        seq = request * self.m + mb
        sent[seq] -= 1
        if not sent[seq]:
            del sent[seq]
        if self.queue[sender] and not self.busy[sender] and not self.pending_sends[sender]:
            self._start_next(sender, now)

    def _net_start(
        self, fid: int, path: tuple[tuple[int, float], ...], bits: float, now: float
    ) -> list[tuple[int, float, int]]:
        if not self.critical_first:
            return super()._net_start(fid, path, bits, now)
        _, request, mb, to_stage, _ = self.flow_meta[fid]
        assert isinstance(self.net, PriorityFluidNetwork)
        # the flow on the critical path first: earliest request, then microbatch, then the
        # one nearest the end of the pipeline
        return self.net.start_prioritized(fid, path, bits, now, (request, mb, -to_stage))


def schedule_config(schedule: Schedule, config: SimConfig | None = None) -> SimConfig:
    """``config`` with the schedule's microbatches and overlap (its policy's: ``overlap``
    keeps sends in flight, ``naive`` blocks on them)."""
    return replace(
        config or SimConfig(), microbatches=schedule.microbatches, overlap=schedule.pipelined
    )


def simulate_schedule(
    schedule: Schedule, plan: Plan, problem: Problem, config: SimConfig | None = None
) -> SimResult:
    """Simulate ``plan`` executing ``schedule`` (its microbatches, overlap and contention
    policy); ``config`` gives the load (requests, concurrency or rate, source, sink).

    ``config.microbatches``, when given and not the schedule's own count, simulates the
    schedule relowered for that many microbatches (``schedule.relower``, as a distributed run
    asked for another count executes it); None (``SimConfig``'s default) keeps the schedule's
    count."""
    if (
        config is not None
        and config.microbatches is not None
        and config.microbatches != schedule.microbatches
    ):
        schedule = relower(schedule, config.microbatches)
    run_config = schedule_config(schedule, config)
    critical_first = schedule.contention == "critical-first"
    return _ScheduledRun(plan, problem, run_config, critical_first).run()


def schedule_metrics(schedule: Schedule, plan: Plan, problem: Problem) -> tuple[Metrics, SimResult]:
    """``plan``'s figures under ``schedule``, simulated (``evaluate`` gives them analytically):

    * latency: one request on an idle cluster;
    * throughput: the steady state of a closed loop that keeps the pipeline full (latency
      times the analytic capacity requests in flight, at least stages + 1, at most
      ``MAX_IN_FLIGHT``), completions per second after the first ``in flight`` ones;
    * energy per request at the QoE's operating point, as ``evaluate`` defines it: one request
      at a time without an offered load (so the idle run's), else an open loop at the offered
      rate (or the throughput floor), capped at the throughput;
    * memory and the rest: ``evaluate``'s with the schedule's microbatches.

    Returns the figures and the idle single-request simulation."""
    from ..analysis.evaluate import evaluate  # evaluate imports sim.work: keep the import lazy

    critical_first = schedule.contention == "critical-first"

    def run(config: SimConfig) -> tuple[_ScheduledRun, SimResult]:
        scheduled = _ScheduledRun(plan, problem, schedule_config(schedule, config), critical_first)
        return scheduled, scheduled.run()

    _, idle = run(SimConfig(requests=1, record_timeline=False))
    latency = idle.latencies_s[0]
    analytic = evaluate(plan, problem, microbatches=schedule.microbatches)
    # requests in flight to keep the pipeline full: latency x capacity (Little's law), at
    # least one per stage and one more
    full = latency * analytic.throughput_rps if math.isfinite(analytic.throughput_rps) else 0.0
    depth = max(len(plan.stages) + 1, min(MAX_IN_FLIGHT, math.ceil(2 * full) + 1))
    loaded, _ = run(SimConfig(requests=4 * depth, concurrency=depth, record_timeline=False))
    done = sorted(loaded.done_s.values())
    span = done[-1] - done[depth - 1]
    throughput = (len(done) - depth) / span if span > 0 else math.inf
    rate = problem.qoe.request_rate_rps or problem.qoe.throughput_rps
    if rate is None:
        energy, period = idle.energy_j, latency
    else:
        period = 1.0 / min(rate, throughput)
        paced = SimConfig(requests=4 * depth, request_rate_rps=1.0 / period, record_timeline=False)
        energy = run(paced)[1].energy_j
    metrics = replace(
        analytic,
        latency_s=latency,
        throughput_rps=throughput,
        energy_j=energy,
        period_s=period,
        saturated=rate is not None and rate > throughput,
    )
    return metrics, idle
