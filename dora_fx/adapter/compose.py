"""Composition: the rates at which requests go to each plan of the set, under current conditions.

Given each plan's figures under the conditions now (``figures.plan_figures``) and the
utilization each may run at (``figures.headroom``), ``Composer.compose`` chooses the requests per second sent to each plan with
the program of ``compose_program`` (its statement, the HiGHS solver and the cvxpy reference),
then drops a plan that would miss the SLO waiting for other plans' jobs on a device they share
(``_late_when_sharing``) and solves again; ``Composition`` is the mixture and its
``describe()``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..analysis.problem import Problem
from ..errors import PlanError
from ..ir.plan import Plan
from ..qoe import QoE
from .compose_program import _costs, _excluded, _Program
from .figures import (
    DEFAULT_UTILIZATION_CAP,
    PERIODIC_CAP,
    POISSON_CAP,
    Arrivals,
    PlanFigures,
    headroom,
    plan_figures,
)

__all__ = ["Composition", "Composer"]


@dataclass(frozen=True)
class Composition:
    """The mixture: requests per second to each plan, and why."""

    rates_rps: dict[str, float]
    offered_rps: float
    objective: str
    latency_slo_s: float | None
    power_w: float
    on_devices: tuple[str, ...]
    excluded: dict[str, str] = field(default_factory=dict)
    utilization: dict[str, float] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)
    decision_s: float = 0.0
    utilization_cap: float = DEFAULT_UTILIZATION_CAP

    @property
    def served_rps(self) -> float:
        return sum(self.rates_rps.values())

    @property
    def unserved_rps(self) -> float:
        return max(self.offered_rps - self.served_rps, 0.0)

    @property
    def feasible(self) -> bool:
        """The load is served by plans that meet the SLO."""
        return self.unserved_rps <= 1e-6 * max(self.offered_rps, 1.0)

    @property
    def used(self) -> dict[str, float]:
        return {p: r for p, r in self.rates_rps.items() if r > 1e-9}

    @property
    def energy_per_request_j(self) -> float:
        return self.power_w / self.served_rps if self.served_rps > 0 else math.inf

    def weights(self) -> dict[str, float]:
        total = self.served_rps
        return {p: r / total for p, r in self.used.items()} if total > 0 else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "rates_rps": dict(self.rates_rps),
            "offered_rps": self.offered_rps,
            "objective": self.objective,
            "latency_slo_s": self.latency_slo_s,
            "power_w": self.power_w,
            "on_devices": list(self.on_devices),
            "excluded": dict(self.excluded),
            "utilization": dict(self.utilization),
            "decision_s": self.decision_s,
        }

    def describe(self) -> str:
        """The current mixture as a table, the binding resources and why plans are out."""
        slo = "none" if self.latency_slo_s is None else f"{1e3 * self.latency_slo_s:.1f} ms"
        lines = [
            f"composition: {self.served_rps:.3f} of {self.offered_rps:.3f} req/s served by "
            f"{len(self.used)} plan(s); objective {self.objective}; latency SLO {slo}; "
            f"decided in {1e3 * self.decision_s:.2f} ms",
            f"{'plan':<28} {'share':>6} {'req/s':>8} {'latency ms':>10}",
        ]
        weights = self.weights()
        for plan, rate in sorted(self.used.items(), key=lambda kv: -kv[1]):
            lines.append(
                f"{plan:<28} {weights[plan]:>6.1%} {rate:>8.3f} "
                f"{1e3 * self.latency_s.get(plan, math.nan):>10.2f}"
            )
        busy = sorted(self.utilization.items(), key=lambda kv: -kv[1])
        lines.append(
            "utilization: "
            + ", ".join(f"{r} {u:.0%}" for r, u in busy if u > 1e-3)
            + f" (cap {self.utilization_cap:.0%})"
        )
        binding = [r for r, u in busy if u >= self.utilization_cap * (1 - 1e-6)]
        if binding:
            lines.append(f"why not more: {', '.join(binding)} at the utilization cap")
        lines.append(
            f"devices on: {', '.join(self.on_devices) or 'none'}; predicted power "
            f"{self.power_w:.3f} W = {self.energy_per_request_j:.4g} J/request"
        )
        if not self.feasible:
            lines.append(
                f"QoE NOT met: {self.unserved_rps:.3f} req/s cannot be served by plans that "
                "meet the SLO; the adapter re-plans from the problem in the background"
            )
        for plan, reason in self.excluded.items():
            lines.append(f"out: {plan}: {reason}")
        return "\n".join(lines)


class Composer:
    """Decides compositions for a fixed plan set and device list (matrices laid out once)."""

    def __init__(
        self,
        plans: Sequence[Plan],
        devices: Sequence[str],
        qoe: QoE,
        *,
        idle_power_w: dict[str, float],
        utilization_cap: float | None = None,
        arrivals: Arrivals = "periodic",
    ) -> None:
        if not plans:
            raise PlanError("a composition needs at least one plan")
        headroom(0.0, 0.0, None, arrivals)  # validates arrivals
        if utilization_cap is None:
            utilization_cap = PERIODIC_CAP if arrivals == "periodic" else POISSON_CAP
        if not 0 < utilization_cap <= 1:
            raise PlanError(f"utilization_cap must be in (0, 1], got {utilization_cap!r}")
        self.plans = list(plans)
        self.devices = list(dict.fromkeys(devices))
        self.qoe = qoe
        self.idle_power_w = dict(idle_power_w)
        self.utilization_cap = utilization_cap
        self.arrivals = arrivals

    @classmethod
    def for_problem(cls, plans: Sequence[Plan], problem: Problem, **options: Any) -> Composer:
        cluster = problem.cluster
        return cls(
            plans,
            cluster.device_names,
            problem.qoe,
            idle_power_w={d.name: d.idle_power_w for d in cluster.devices},
            **options,
        )

    def figures(self, problem: Problem) -> list[PlanFigures]:
        return [plan_figures(plan, problem) for plan in self.plans]

    def compose(
        self, figures: Sequence[PlanFigures], offered_rps: float, objective: str | None = None
    ) -> Composition:
        """The composition for ``figures`` (one per plan, in order) and the offered load."""
        started = time.perf_counter()
        objective = objective or self.qoe.objective
        slo = self.qoe.latency_s
        excluded = _excluded(figures, slo)
        eligible = [f for f in figures if f.name not in excluded]
        resources = sorted({r for f in eligible for r in f.busy_s})
        devices = [r for r in resources if r.startswith("device:")]
        n = len(eligible)
        if n == 0 or offered_rps <= 0:
            return self._empty(figures, offered_rps, objective, excluded, started)
        cost = _costs(eligible, objective)
        idle = np.array([self._idle(r) if objective == "energy" else 0.0 for r in devices])
        big = 1e3 * (max(abs(c) for c in cost) + max(self.idle_power_w.values(), default=0.0) + 1.0)
        busy = np.array([[f.busy_s.get(r, 0.0) for f in eligible] for r in resources])
        program = _Program(busy, resources, devices, cost, idle, big, self.utilization_cap)
        program.rate_limit = self.rate_limits(eligible)
        allowed = np.ones(n, dtype=bool)
        while True:
            x = program.solve(offered_rps, allowed)
            x = program.improve(x, offered_rps, allowed) if objective == "energy" else x
            late = _late_when_sharing(eligible, x, slo)
            if late is None:
                break
            allowed[late] = False  # its requests would wait for the others' jobs: drop it
        x = _or_one_plan(program, x, offered_rps, allowed)
        rates = {f.name: 0.0 for f in figures}
        for f, rate in zip(eligible, x, strict=True):
            rates[f.name] = float(rate) if rate > 1e-9 else 0.0
        return self._composition(figures, rates, offered_rps, objective, excluded, started)

    def rate_limits(self, figures: Sequence[PlanFigures]) -> np.ndarray:
        """Each plan's most requests per second (``headroom`` x capacity; inf: no resource)."""
        slo, cap = self.qoe.latency_s, self.utilization_cap
        return np.array([
            min(cap, headroom(f.latency_s, f.bottleneck_s, slo, self.arrivals)) * f.capacity_rps
            for f in figures
        ])  # fmt: skip

    def _idle(self, resource: str) -> float:
        return self.idle_power_w.get(resource.split(":", 1)[1], 0.0)

    def _composition(
        self,
        figures: Sequence[PlanFigures],
        rates: dict[str, float],
        offered_rps: float,
        objective: str,
        excluded: dict[str, str],
        started: float,
    ) -> Composition:
        by_name = {f.name: f for f in figures}
        utilization: dict[str, float] = {}
        power = 0.0
        for name, rate in rates.items():
            if rate <= 0:
                continue
            power += rate * by_name[name].dynamic_j
            for r, s in by_name[name].busy_s.items():
                utilization[r] = utilization.get(r, 0.0) + rate * s
        on = tuple(sorted(r.split(":", 1)[1] for r in utilization if r.startswith("device:")))
        power += sum(self.idle_power_w.get(d, 0.0) for d in on)
        return Composition(
            rates_rps=rates,
            offered_rps=offered_rps,
            objective=objective,
            latency_slo_s=self.qoe.latency_s,
            power_w=power,
            on_devices=on,
            excluded=excluded,
            utilization=utilization,
            latency_s={f.name: f.latency_s for f in figures if f.alive},
            decision_s=time.perf_counter() - started,
            utilization_cap=self.utilization_cap,
        )

    def _empty(
        self,
        figures: Sequence[PlanFigures],
        offered_rps: float,
        objective: str,
        excluded: dict[str, str],
        started: float,
    ) -> Composition:
        rates = {f.name: 0.0 for f in figures}
        return self._composition(figures, rates, offered_rps, objective, excluded, started)


def sharing_wait_s(name: str, job_s: Mapping[str, Mapping[str, float]]) -> float:
    """The wait a request of plan ``name`` may meet on its most shared device: one job of
    every other plan using that device. ``job_s``: plan -> device -> seconds per request."""
    waits = [
        sum(jobs[d] for other, jobs in job_s.items() if other != name and jobs.get(d, 0.0) > 0)
        for d, seconds in job_s[name].items()
        if seconds > 0
    ]
    return max(waits, default=0.0)


def _or_one_plan(
    program: _Program, x: np.ndarray, offered_rps: float, allowed: np.ndarray
) -> np.ndarray:
    """``x``, or one plan alone at its most if that serves more (or as much for less power).

    Dropping late plans one at a time can drop the plan that would serve the whole load by
    itself (every plan shares the source device, so any mixture of two may be late); a plan
    alone never waits for another's jobs, so each is a candidate."""
    best, best_key = x, program.true_cost(x, offered_rps)
    if best_key[0] <= 1e-9:
        return best
    caps = np.where(program.busy > 0, program.cap / np.maximum(program.busy, 1e-300), np.inf)
    for p in np.flatnonzero(program.rate_limit > 0):
        alone = np.zeros_like(x)
        alone[p] = min(offered_rps, program.rate_limit[p], caps[:, p].min())
        key = program.true_cost(alone, offered_rps)
        if key[0] < best_key[0] - 1e-9 or (key[0] <= best_key[0] + 1e-9 and key[1] < best_key[1]):
            best, best_key = alone, key
    return best


def _late_when_sharing(
    figures: Sequence[PlanFigures], x: np.ndarray, slo: float | None
) -> int | None:
    """The least-used plan of the mixture ``x`` whose latency plus ``sharing_wait_s`` misses
    the SLO (plans on one device delay each other's requests), or None."""
    used = [i for i in np.argsort(x) if x[i] > 1e-9]
    if slo is None or len(used) < 2:
        return None
    job_s = {
        figures[i].name: {r: s for r, s in figures[i].busy_s.items() if r.startswith("device:")}
        for i in used
    }
    for i in used:
        if figures[i].latency_s + sharing_wait_s(figures[i].name, job_s) > slo * (1 + 1e-9):
            return int(i)
    return None
