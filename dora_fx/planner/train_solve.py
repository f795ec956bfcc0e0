"""``solve`` for training problems: minimize the iteration time (objective ``latency`` or
``throughput``) or the energy per iteration (``energy``) under each device's training memory
and the QoE's ``iteration_ms`` / ``throughput_rps`` (iterations per second) / ``energy_j``.

For each microbatch count ``m`` (1, 2, 4, ... up to the batch, or the one the problem pins) the
training tables (``train_tables``) feed the same dynamic program as inference (``dp.run_dp``):

* iteration time ``J = L + (m - 1) tau + A`` (``analysis.training``): ``L`` the sum of the
  per-microbatch steps, ``tau`` the busiest resource, ``A`` the all-reduces. A min-max DP
  gives ``tau_0`` (no plan's bottleneck is lower). ``S(t)``, the min-sum DP of ``L + A`` over
  the options and cuts whose bottleneck terms are at most ``t``, is a step function; from
  ``t = inf`` down, the best path at ``t`` has bottleneck ``tau* <= t``, so every plan with
  bottleneck in ``[tau*, t]`` has ``J >= S(t) + (m - 1) tau*``, and the next level is just
  below ``tau*``. The sweep stops when ``S(t) + (m - 1) tau_0`` (a bound on every plan left)
  reaches the best found; the minimum over levels (and over ``m``) is a certified lower bound
  (exact with respect to the tables' terms when the sweep runs to ``tau_0``).
* energy ``E = m Eb + m radio + P_idle(u) T`` with ``T >= L + A``: the DP of
  ``m (Eb + radio) + alpha (L + A)`` bounds every plan whose devices idle at ``>= alpha``
  (``search.DpSearch.energy``'s argument); its paths and those of the time DPs are candidates.

Options exist where the training memory fits one microbatch in flight (a relaxation: the
bound stays valid); a second sweep keeps only options that fit ``m`` in flight, so plans
feasible under GPipe are among the candidates when memory binds. Every candidate is scored
with ``evaluate_training`` under each schedule policy and count; the best few by the closed
form are simulated (``sim.training``) and the plan set's first plan is the best simulated
one (GPipe vs 1F1B and ``m`` chosen by simulation). Gaps are the closed form's against the
bound. No compliant plan: ``InfeasibleQoEError`` naming the device and the bytes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from ..analysis.evaluate import Metrics
from ..analysis.problem import Problem
from ..analysis.training import TrainMetrics, evaluate_training, splits_evenly, training_spec
from ..errors import InfeasibleQoEError, PlanError
from ..ir.plan import Plan
from ..ir.train_schedule import TRAIN_POLICIES
from ..sim.training import simulate_training
from .dp import Dense, Stages, run_dp
from .plan_set import PlanSet
from .space import PlanSpace, make_plan, plan_space
from .train_tables import TrainTables, train_base, train_tables

__all__ = ["solve_training", "TrainChoice", "microbatch_counts"]

ENERGY_LEVELS = 5  # idle-power levels of the energy bound
MAX_BREAKPOINTS = 16  # levels of the iteration-time sweep per microbatch count
SIMULATED = 4  # candidates simulated for the final choice
SHORTLIST = 5  # candidates per count and memory pass scored with evaluate_training


@dataclass(frozen=True)
class TrainChoice:
    """A scored candidate: plan, schedule policy, microbatches, closed-form and simulated figures."""

    plan: Plan
    metrics: TrainMetrics
    simulated_s: float | None = None
    simulated_energy_j: float | None = None


def microbatch_counts(problem: Problem) -> list[int]:
    spec = training_spec(problem)
    if spec.microbatches is not None:
        if spec.microbatches > problem.batch:
            raise PlanError(
                f"TrainingSpec.microbatches={spec.microbatches} exceeds the batch {problem.batch}; "
                "use at most one microbatch per row"
            )
        return [spec.microbatches]
    return [m for m in (1, 2, 4, 8, 16, 32) if m <= problem.batch]


def _cap_s(problem: Problem) -> float:
    qoe = problem.qoe
    if qoe.latency_ms is not None:
        raise PlanError(
            "latency_ms bounds one inference request; a training QoE bounds one iteration with "
            "iteration_ms (and throughput_rps as iterations per second)"
        )
    caps = [math.inf]
    if qoe.iteration_s is not None:
        caps.append(qoe.iteration_s)
    if qoe.throughput_rps is not None:
        caps.append(1.0 / qoe.throughput_rps)
    return min(caps)


def _meets(m: TrainMetrics, problem: Problem, cap_s: float) -> bool:
    if not m.memory_ok or m.iteration_s > cap_s * (1 + 1e-9):
        return False
    budget = problem.qoe.energy_j
    return budget is None or m.energy_j <= budget * (1 + 1e-9)


def _value(m: TrainMetrics, objective: str) -> float:
    return m.energy_j if objective == "energy" else m.iteration_s


def _masked(tt: TrainTables, cap_s: float, memory_all: bool) -> Dense:
    d = tt.d
    compute = np.where(d.compute_s <= cap_s, d.compute_s, np.inf)
    if memory_all:
        compute = np.where(tt.fits_all, compute, np.inf)
    return replace(d, compute_s=compute)


def _dp(d: Dense, option: np.ndarray, move: np.ndarray, first: np.ndarray, combine: str = "sum"):  # type: ignore[no-untyped-def]
    option = np.where(np.isfinite(d.compute_s), option, np.inf)
    return run_dp(d, option, move, first, combine, np.zeros(d.scatter_s.size))


def _time_search(d: Dense, tt: TrainTables, incumbent: float = math.inf) -> tuple[list[Stages], float]:
    """Candidates and the iteration-time bound at one microbatch count (module docstring).
    The sweep stops once ``S(t) + (m - 1) tau_0``, a bound on every plan left, cannot beat the
    best found (``incumbent``: the best iteration at another count, or a path's estimate)."""
    m = tt.microbatches
    ar = tt.update_s
    port = np.maximum(d.move_port_s, d.move_first_up_s)
    tau_dp = _dp(d, d.compute_s, np.where(np.isfinite(d.move_s), port, np.inf), d.scatter_port_s, "max")
    tau0 = float(tau_dp.value.min())
    if not math.isfinite(tau0):
        return [], math.inf
    candidates: list[Stages] = []

    def sweep(t: float) -> float:
        slack = t * (1 + 1e-9)
        option = np.where(d.compute_s <= slack, d.compute_s + ar, np.inf)
        move = np.where(port <= slack, d.move_s, np.inf)
        first = np.where(d.scatter_port_s <= slack, d.scatter_s, np.inf)
        result = _dp(d, option, move, first)
        for u in np.nonzero(np.isfinite(result.value))[0]:
            candidates.append(result.paths(int(u)))
        return float(result.value.min())

    # Breakpoints of S(t), from t = inf down: the best path at level t has bottleneck
    # tau* <= t, so S is flat on [tau*, t] and every plan there has J >= S + (m - 1) tau*;
    # the next level is just below tau*. Plans below the last level have L >= its S.
    bound = math.inf
    best_estimate = incumbent
    t = math.inf
    for _ in range(MAX_BREAKPOINTS):
        before = len(candidates)
        level_s = sweep(t)
        if not math.isfinite(level_s):
            return candidates, bound  # nothing left below: every plan was covered
        path = min(candidates[before:], key=lambda c: _path_estimate(d, tt, c))
        tau_star = _path_tau(d, path)
        # [tau*, t] is flat; a plan just below tau* (above the next level) is still >= S
        bound = min(bound, level_s + (m - 1) * tau_star * (1 - 1e-6))
        best_estimate = min(best_estimate, _path_estimate(d, tt, path))
        rest = level_s + (m - 1) * tau0  # every plan with a lower bottleneck
        if rest >= best_estimate or tau_star <= tau0 * (1 + 1e-9):
            return candidates, min(bound, rest)
        t = tau_star * (1 - 1e-6)
        # plans with a bottleneck above ``jump`` have J >= S + (m - 1) jump = the best found
        jump = (best_estimate - level_s) / (m - 1) if m > 1 else math.inf
        if jump < t:
            bound = min(bound, best_estimate)
            t = jump
    return candidates, min(bound, level_s + (m - 1) * tau0)


def _energy_search(d: Dense, tt: TrainTables) -> tuple[list[Stages], float]:
    """Candidates and the energy bound: for each idle level ``alpha`` the DP of
    ``m (Eb + radio) + alpha L`` per final usage; with ``T >= L + (m - 1) tau_0`` a usage that
    idles at ``>= alpha`` spends at least that plus ``alpha (m - 1) tau_0``."""
    m, ar = tt.microbatches, tt.update_s
    port = np.maximum(d.move_port_s, d.move_first_up_s)
    tau_dp = _dp(d, d.compute_s, np.where(np.isfinite(d.move_s), port, np.inf), d.scatter_port_s, "max")
    tau0 = float(tau_dp.value.min())
    if not math.isfinite(tau0):
        return [], math.inf
    alphas = np.unique(d.usage_idle_w[d.usage_idle_w > 0])
    if alphas.size > ENERGY_LEVELS:
        alphas = np.unique(np.quantile(alphas, np.linspace(0, 1, ENERGY_LEVELS), method="lower"))
    bound_u = np.full(d.usage_count, -np.inf)
    zero = d.usage_idle_w <= 0
    candidates: list[Stages] = []
    for alpha in np.r_[0.0, alphas]:
        result = _dp(
            d,
            _mix(m * d.busy_energy_j, alpha, d.compute_s + ar),
            _mix(m * d.move_radio_j, alpha, d.move_s),
            _mix(m * d.scatter_radio_j, alpha, d.scatter_s),
        )
        holds = (d.usage_idle_w >= alpha) | zero
        level = result.value + alpha * (m - 1) * tau0
        bound_u = np.where(holds, np.maximum(bound_u, level), bound_u)
        for u in np.nonzero(np.isfinite(result.value))[0]:
            candidates.append(result.paths(int(u)))
    return candidates, float(bound_u.min())


def _mix(base: np.ndarray, weight: float, times: np.ndarray) -> np.ndarray:
    """``base + weight * times``, keeping ``inf`` (a forbidden option) when the weight is 0."""
    return np.where(np.isfinite(times), base + weight * np.where(np.isfinite(times), times, 0.0), np.inf)


def _path_tau(d: Dense, stages: Stages) -> float:
    """The bottleneck terms the sweep restricts (compute, ports), on one path."""
    terms = [d.scatter_port_s[stages[0][2]]]
    for k, (a, b, g) in enumerate(stages):
        terms.append(d.compute_s[g, a, b])
        if k + 1 < len(stages):
            g2 = stages[k + 1][2]
            terms.append(max(d.move_port_s[g, g2, b], d.move_first_up_s[g, g2, b]))
    return float(max(terms))


def _path_estimate(d: Dense, tt: TrainTables, stages: Stages) -> float:
    """``L + A + (m - 1) tau`` of a path from the tables (to shortlist before scoring)."""
    first = stages[0][2]
    total = d.scatter_s[first]
    terms = [d.scatter_port_s[first]]
    for k, (a, b, g) in enumerate(stages):
        total += d.compute_s[g, a, b] + tt.update_s[g, a, b]
        terms.append(d.compute_s[g, a, b])
        if k + 1 < len(stages):
            g2 = stages[k + 1][2]
            total += d.move_s[g, g2, b]
            terms.append(d.move_port_s[g, g2, b])
    return float(total + (tt.microbatches - 1) * max(terms))


def _shortlist(d: Dense, tt: TrainTables, candidates: list[Stages], keep: int) -> list[Stages]:
    unique = list({tuple(c): c for c in candidates}.values())
    unique.sort(key=lambda c: _path_estimate(d, tt, c))
    return unique[:keep]


def solve_training(problem: Problem, *, max_plans: int = 8, max_group_size: int | None = None) -> PlanSet:
    """The training plan set of ``problem`` (see the module docstring)."""
    start = time.perf_counter()
    spec = training_spec(problem)
    qoe = problem.qoe
    objective = "energy" if qoe.objective == "energy" else "latency"
    cap = _cap_s(problem)
    space = plan_space(problem, max_group_size)
    base = train_base(problem, space)
    policies = [spec.schedule] if spec.schedule else list(TRAIN_POLICIES)
    bound = math.inf
    scored: dict[tuple[tuple[int, int, int], ...], list[TrainChoice]] = {}
    incumbent = math.inf
    for m in sorted(microbatch_counts(problem), reverse=True):
        tt = train_tables(problem, space, base, m)
        found: list[Stages] = []
        finite = np.isfinite(tt.d.compute_s)
        binds = bool((finite & ~tt.fits_all).any())  # some option fits one microbatch, not m
        for memory_all in (False, True) if binds else (False,):
            d = _masked(tt, cap, memory_all)
            if objective == "energy":
                cands, b = _energy_search(d, tt)
            else:
                cands, b = _time_search(d, tt, incumbent)
            if not memory_all:
                bound = min(bound, b)
            found += _shortlist(d, tt, cands, SHORTLIST)
        for stages in {tuple(c): c for c in found}.values():
            plan = _plan(problem, space, stages)
            if not splits_evenly(plan, problem.batch, m):
                continue  # a group's rows would not cut into m equal microbatches
            for policy in policies:
                figures = evaluate_training(plan, problem, microbatches=m, schedule=policy)
                if _meets(figures, problem, cap):
                    scored.setdefault(tuple(stages), []).append(TrainChoice(plan, figures))
                    incumbent = min(incumbent, _value(figures, objective))
    if not scored:
        raise _infeasible(problem, space, cap)
    choices = [min(v, key=lambda c: _value(c.metrics, objective)) for v in scored.values()]
    choices.sort(key=lambda c: _value(c.metrics, objective))
    choices = choices[:max_plans]
    best = _simulated_best(problem, [c for v in scored.values() for c in v], objective)
    ordered = [best] + [c for c in choices if c.plan is not best.plan]
    plans: list[Plan] = []
    metrics: list[Metrics] = []
    for i, choice in enumerate(ordered[:max_plans]):
        value = _value(choice.metrics, objective)
        gap = 0.0 if bound <= 0 or not math.isfinite(bound) else max(value / bound - 1.0, 0.0)
        predicted = {
            "iteration_s": choice.metrics.iteration_s,
            "energy_j": choice.metrics.energy_j,
            "microbatches": float(choice.metrics.microbatches),
        }
        if choice.simulated_s is not None:
            predicted["simulated_iteration_s"] = choice.simulated_s
        name = f"dora-train-{qoe.objective}" if i == 0 else f"dora-train-{i}"
        plans.append(replace(choice.plan, name=name, gap=gap, predicted=predicted))
        metrics.append(choice.metrics.as_metrics())
    return PlanSet(
        plans=tuple(plans),
        metrics=tuple(metrics),
        qoe=qoe,
        objective=qoe.objective,
        bound=bound,
        bounds={objective: bound},
        method="train-dp",
        solve_s=time.perf_counter() - start,
        notes=(f"training: schedule {best.metrics.schedule}, {best.metrics.microbatches} microbatches",),
        training=tuple(c.metrics for c in ordered[:max_plans]),
    )


def _plan(problem: Problem, space: PlanSpace, stages: Stages) -> Plan:
    return make_plan("candidate", problem, space, [(a, b, space.groups[g]) for a, b, g in stages])


def _simulated_best(problem: Problem, choices: list[TrainChoice], objective: str) -> TrainChoice:
    """Simulate the best few (by the closed form) and keep the best simulated."""
    shortlist = sorted(choices, key=lambda c: _value(c.metrics, objective))[:SIMULATED]
    best: TrainChoice | None = None
    best_value = math.inf
    for choice in shortlist:
        m = choice.metrics
        result = simulate_training(choice.plan, problem, microbatches=m.microbatches, schedule=m.schedule)
        value = result.energy_j if objective == "energy" else result.iteration_s
        if value < best_value * (1 - 1e-9):
            best_value = value
            best = replace(choice, simulated_s=result.iteration_s, simulated_energy_j=result.energy_j)
    assert best is not None
    return best


def _infeasible(problem: Problem, space: PlanSpace, cap_s: float) -> InfeasibleQoEError:
    """Name the device and the bytes of the smallest training footprint that does not fit."""
    spec = training_spec(problem)
    parts = []
    for device in problem.cluster.devices:
        plan = make_plan(
            "alone", problem, space, [(0, len(problem.blocks), _single_group(space, device.name))]
        ) if _single_group(space, device.name) is not None else None
        if plan is None:
            continue
        m = evaluate_training(plan, problem, microbatches=max(microbatch_counts(problem)), schedule="1f1b")
        p = m.memory[device.name]
        parts.append(
            f"{device.name} (memory {device.memory_bytes / 2**20:.0f} MiB) alone would hold weights "
            f"{p.weights / 2**20:.1f} MiB + grads {p.grads / 2**20:.1f} MiB + optimizer "
            f"({spec.optimizer}) {p.optimizer / 2**20:.1f} MiB + activations "
            f"{p.activations / 2**20:.1f} MiB; iteration {1e3 * m.iteration_s:.1f} ms"
        )
    limit = "" if not math.isfinite(cap_s) else f" within {1e3 * cap_s:g} ms per iteration"
    return InfeasibleQoEError(
        f"no training plan fits the devices' memory{limit} on cluster {problem.cluster.name!r}: "
        + "; ".join(parts)
        + ". Add devices, lower the batch, use more microbatches or an optimizer with less state "
        "(sgd), or relax the QoE."
    )


def _single_group(space: PlanSpace, name: str):  # type: ignore[no-untyped-def]
    for group in space.groups:
        if group.size == 1 and space.devices_of(group) == (name,):
            return group
    return None
