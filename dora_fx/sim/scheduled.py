"""Simulate the schedule a plan was compiled with (``dora_fx.schedule.Schedule``).

The discrete-event simulator (``sim.simulator``) runs a plan at stage granularity; this module
drives it with what the chosen schedule does:

* ``microbatches``: the request is cut into that many microbatches;
* ``overlap``: whether sends stay in flight while the stage computes the next microbatch
  (the ``overlap`` lowering) or block the device until they have left (``naive``);
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

from ..cost_models.network import Network
from ..ir import Plan
from ..problem import Problem
from ..schedule import Schedule
from .fluid import FluidNetwork, _Flow
from .result import SimResult
from .simulator import _FLOW_DONE, SimConfig, _Run
from .work import plan_work

__all__ = ["PriorityFluidNetwork", "simulate_schedule", "schedule_config"]

Priority = tuple[int, int, int]
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
            plan, problem, plan_work(plan, problem, config.microbatches, config.source,
                                     config.sink), config
        )
        self.critical_first = critical_first
        if critical_first:
            self.net = PriorityFluidNetwork(problem.cluster.network)

    def _start_flow(self, fid: int, now: float) -> None:
        if not self.critical_first:
            super()._start_flow(fid, now)
            return
        t, request, mb, to_stage, _ = self.flow_meta[fid]
        self.channel_busy.add((t.src, t.dst))
        self.flow_start[fid] = now
        path, _ = self.net.route(t.src, t.dst)
        if t.nbytes <= 0 or not path:
            self._flow_done(fid, now, started=False)
            return
        assert isinstance(self.net, PriorityFluidNetwork)
        changed = self.net.start_prioritized(
            fid, path, 8.0 * t.nbytes, now, (request, mb, -to_stage)
        )
        for other, finish_s, version in changed:
            self.push(finish_s, _FLOW_DONE, (other, version))


def schedule_config(schedule: Schedule, config: SimConfig | None = None) -> SimConfig:
    """``config`` with the schedule's microbatches and overlap."""
    base = config or SimConfig()
    return SimConfig(
        requests=base.requests,
        request_rate_rps=base.request_rate_rps,
        arrivals=base.arrivals,
        concurrency=base.concurrency,
        microbatches=schedule.microbatches,
        overlap=schedule.overlaps,
        source=base.source,
        sink=base.sink,
        seed=base.seed,
        record_timeline=base.record_timeline,
    )


def simulate_schedule(
    schedule: Schedule, plan: Plan, problem: Problem, config: SimConfig | None = None
) -> SimResult:
    """Simulate ``plan`` executing ``schedule`` (its microbatches, overlap and contention
    policy); ``config`` gives the load (requests, concurrency or rate, source, sink)."""
    run_config = schedule_config(schedule, config)
    critical_first = schedule.contention == "critical-first"
    return _ScheduledRun(plan, problem, run_config, critical_first).run()
