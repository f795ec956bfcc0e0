"""The planner's answer: a compact Pareto set of QoE-compliant plans, best for the objective
first, each with its certified gap, and a text that says why the first one was chosen."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from ..analysis.evaluate import Metrics
from ..analysis.training import TrainMetrics
from ..ir.plan import Plan
from ..qoe import QoE

__all__ = ["PlanSet", "objective_value", "OBJECTIVE_UNITS"]

OBJECTIVE_UNITS = {"latency": "latency_s", "throughput": "bottleneck_s (1/throughput)", "energy": "energy_j"}


def objective_value(metrics: Metrics, objective: str) -> float:
    """The minimized figure: latency_s, 1 / throughput_rps, or energy_j."""
    if objective == "latency":
        return metrics.latency_s
    if objective == "throughput":
        return 0.0 if math.isinf(metrics.throughput_rps) else 1.0 / metrics.throughput_rps
    return metrics.energy_j


@dataclass(frozen=True)
class PlanSet:
    """``plans[0]`` is the chosen plan. ``bound`` is a certified lower bound on the objective's
    minimized figure over every plan of the space that meets the QoE; ``plans[i].gap`` is
    ``value / bound - 1``. ``bounds`` holds the bound of each objective that was solved.

    ``metrics`` are the analytic figures (``evaluate``) the planner optimizes and certifies.
    Once the communication schedule is chosen (``with_schedule``), ``scheduled`` holds the
    chosen plan's figures simulated under that schedule, and ``plans[0].predicted`` reports
    those (the analytic ones kept as ``analytic_*``)."""

    plans: tuple[Plan, ...]
    metrics: tuple[Metrics, ...]
    qoe: QoE
    objective: str
    bound: float
    bounds: dict[str, float] = field(default_factory=dict)
    method: str = ""
    solve_s: float = 0.0
    notes: tuple[str, ...] = ()
    scheduled: Metrics | None = None
    schedule: str = ""  # the schedule's header ("schedule policy=... microbatches=...")
    # training problems: each plan's iteration figures (``analysis.training.TrainMetrics``),
    # in the order of ``plans``; empty for inference
    training: tuple[TrainMetrics, ...] = ()

    def with_schedule(self, scheduled: Metrics, schedule: str) -> PlanSet:
        """This set with the chosen plan's figures under its schedule (see the class doc)."""
        best, analytic = self.plans[0], self.metrics[0]
        predicted = {
            "latency_s": scheduled.latency_s,
            "throughput_rps": scheduled.throughput_rps,
            "energy_j": scheduled.energy_j,
            "analytic_latency_s": analytic.latency_s,
            "analytic_throughput_rps": analytic.throughput_rps,
            "analytic_energy_j": analytic.energy_j,
        }
        plans = (replace(best, predicted=predicted), *self.plans[1:])
        return replace(self, plans=plans, scheduled=scheduled, schedule=schedule)

    @property
    def best(self) -> Plan:
        return self.plans[0]

    def __len__(self) -> int:
        return len(self.plans)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.plans)

    def to_json(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "qoe": self.qoe.to_json(),
            "bound": self.bound,
            "bounds": dict(self.bounds),
            "method": self.method,
            "solve_s": self.solve_s,
            "notes": list(self.notes),
            "plans": [p.to_json() for p in self.plans],
            "schedule": self.schedule,
            "scheduled": None if self.scheduled is None else self.scheduled.to_json(),
        }

    def describe(self) -> str:
        """The plan set as a table, each plan's gap, and why the first plan was chosen."""
        unit = OBJECTIVE_UNITS[self.objective]
        lines = [
            f"plan set: {len(self.plans)} QoE-compliant plan(s), Pareto-optimal over latency, "
            f"throughput and energy; objective {self.objective} ({unit}); {self.qoe}",
            f"certified lower bound on {unit}: {self.bound:.6g} (method: {self.method}; solved in "
            f"{self.solve_s:.3f} s)",
            "",
            f"{'#':>2}  {'plan':<22} {'stages':>6} {'devices':<28} {'latency ms':>10} "
            f"{'thr rps':>9} {'energy J':>9} {'gap':>8}",
        ]
        for i, (plan, m) in enumerate(zip(self.plans, self.metrics)):
            devices = "|".join(",".join(s.devices) for s in plan.stages)
            gap = "-" if plan.gap is None else f"{100 * plan.gap:.2f}%"
            lines.append(
                f"{i:>2}  {plan.name:<22} {len(plan.stages):>6} {devices[:28]:<28} "
                f"{1e3 * m.latency_s:>10.3f} {m.throughput_rps:>9.3f} {m.energy_j:>9.4f} {gap:>8}"
            )
        if self.scheduled is not None:
            m = self.scheduled
            lines.append(
                f"{0:>2}  under its {self.schedule.removeprefix('schedule ')} (simulated): "
                f"latency {1e3 * m.latency_s:.3f} ms, throughput {m.throughput_rps:.3f} rps, "
                f"energy {m.energy_j:.4f} J"
            )
        lines.append("")
        lines.append(self._why())
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _why(self) -> str:
        best, m = self.plans[0], self.metrics[0]
        value = objective_value(m, self.objective)
        gap = best.gap if best.gap is not None else math.nan
        text = (
            f"chosen: {best.name}, the compliant plan with the best {self.objective} "
            f"({value:.6g} {OBJECTIVE_UNITS[self.objective]}); it is within {100 * gap:.2f}% of "
            "the bound, so no plan of the space can beat it by more than that."
        )
        others = []
        for plan, om in zip(self.plans[1:], self.metrics[1:]):
            better = [
                name
                for name, mine, theirs in (
                    ("latency", m.latency_s, om.latency_s),
                    ("energy", m.energy_j, om.energy_j),
                    ("throughput", -m.throughput_rps, -om.throughput_rps),
                )
                if theirs < mine * (1 - 1e-9)
            ]
            if better:
                others.append(f"{plan.name} is better on {', '.join(better)}")
        if others:
            text += " The others trade the objective for: " + "; ".join(others) + "."
        return text
