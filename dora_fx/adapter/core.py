"""The runtime adapter: conditions in, a composition out; re-plan only when the set runs dry.

``Adapter.decide(conditions)`` re-evaluates every plan of the set on the problem as it is
now (devices gone, links scaled, the load) and solves the composition program
(``compose``): milliseconds. When no composition serves the load within the QoE,
``replan`` runs the partitioner on the current problem (seconds; the runtime calls it on a
background thread through ``replan_in_background`` while the best-effort composition keeps
serving) and adds its plans, widened by ``adapter_plans``, to the set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace

from ..analysis.problem import Problem
from ..ir.plan import Plan
from .compose import Arrivals, Composer, Composition
from .plans import adapter_plans, planner_plans
from .traces import Conditions, apply

__all__ = ["Adapter"]


class Adapter:
    def __init__(
        self,
        problem: Problem,
        plans: Sequence[Plan],
        *,
        utilization_cap: float | None = None,
        arrivals: Arrivals = "periodic",
        max_plans: int = 16,
    ) -> None:
        self.problem = problem
        self.plans = list(plans)
        self.max_plans = max_plans
        self.composer = Composer.for_problem(
            self.plans, problem, utilization_cap=utilization_cap, arrivals=arrivals
        )
        self.utilization_cap, self.arrivals = self.composer.utilization_cap, arrivals
        rate = problem.qoe.request_rate_rps or problem.qoe.throughput_rps or 1.0
        self.replans: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self.conditions = Conditions(rate)
        self.composition = self.decide(self.conditions)

    def current_problem(self, conditions: Conditions | None = None) -> Problem:
        return apply(self.problem, conditions or self.conditions)

    def decide(self, conditions: Conditions) -> Composition:
        """The composition under ``conditions``; its ``decision_s`` covers re-evaluating the
        plans and solving the program."""
        started = time.perf_counter()
        now = self.current_problem(conditions)
        figures = self.composer.figures(now)
        composition = self.composer.compose(figures, conditions.request_rate_rps)
        composition = replace(composition, decision_s=time.perf_counter() - started)
        self.conditions, self.composition = conditions, composition
        return composition

    def replan(self, conditions: Conditions | None = None) -> tuple[list[Plan], float]:
        """Solve the current problem from scratch; add the new plans to the set. Returns the
        plans added and the solve time."""
        now = self.current_problem(conditions)
        started = time.perf_counter()
        found = planner_plans(now)
        solve_s = time.perf_counter() - started
        alive = [p for p in self.plans if all(d in now.cluster for d in p.devices)]
        widened = adapter_plans(found, now, max_plans=self.max_plans)
        names = {p.name for p in alive}
        added = [replace(p, name=f"re-{p.name}") if p.name in names else p for p in widened]
        merged = adapter_plans(added + alive, now, max_plans=self.max_plans, solo=False)
        with self._lock:
            self.plans = merged
            self.composer = Composer.for_problem(
                merged, self.problem, utilization_cap=self.utilization_cap, arrivals=self.arrivals
            )
        self.replans.append({"solve_s": solve_s, "added": [p.name for p in added]})
        return added, solve_s

    def replan_in_background(self, conditions: Conditions | None = None) -> threading.Thread:
        """``replan`` on a thread, then re-decide; the current composition serves meanwhile."""

        def work() -> None:
            self.replan(conditions)
            self.decide(conditions or self.conditions)

        thread = threading.Thread(target=work, name="dora-replan", daemon=True)
        thread.start()
        return thread

    def explain(self) -> str:
        """Conditions now, the mixture, and why (``Composition.describe``)."""
        return f"conditions: {self.conditions.describe()}\n{self.composition.describe()}"
