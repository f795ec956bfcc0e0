"""``solve(problem) -> PlanSet``: the QoE-aware, heterogeneity-aware partitioner.

1. **space and tables** — device classes, group types, every stage option's and transfer's
   cost terms (``tables``), exact with respect to ``evaluate`` for one microbatch.
2. **DP search** (``search``): dynamic programs over (cut, devices used, last group) give
   lower bounds (relaxations of the MILP: terms dropped, constraints dualized) and candidate
   plans (the best plan for each set of devices used, under several objectives and weights).
3. **refine** the best candidates by local moves; score all with ``evaluate``.
4. **exact MILP** (``formulation``, HiGHS in ``milp_backends``) on small models where step 2
   left a gap or found nothing: one solve per objective gives an optimal plan and HiGHS's dual
   bound (the LP relaxation's when the MIP stops early), and epsilon-constraint solves add
   trade-off plans.
   Bounds combine by max: each is a valid lower bound on the same optimum.
5. the Pareto set of the compliant plans over (latency, throughput, energy), at most
   ``max_plans``, best for the objective first; each plan's gap to the objective's bound.
6. No compliant plan: ``InfeasibleQoEError`` with the best achievable value of each QoE
   dimension and the constraint(s) that bind.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from ..analysis.evaluate import Metrics, evaluate
from ..analysis.problem import Problem
from ..errors import InfeasibleQoEError
from ..ir.plan import Plan
from ..qoe import QoE
from .dp import Dense, Stages, dense
from .formulation import OBJECTIVES, build_formulation
from .milp_backends import solve_highs
from .plan_set import PlanSet, objective_value
from .search import DpSearch, meets, refine
from .space import PlanSpace, make_plan, plan_space
from .tables import Tables, build_tables

__all__ = ["solve", "EXACT_COLUMNS"]

# The exact MILP runs (exact=None) only on models this small: HiGHS solves them in well under
# a second, where an 83-block chain already takes seconds.
EXACT_BLOCKS = 16
EXACT_COLUMNS = 6000
# A DP gap above this sends a small model to the MILP.
CLOSE_GAP = 1e-3


def solve(
    problem: Problem,
    *,
    max_plans: int = 8,
    exact: bool | None = None,
    max_group_size: int | None = None,
    time_limit_s: float = 10.0,
) -> PlanSet:
    """A compact Pareto set of QoE-compliant plans for ``problem`` (see the module docstring).

    ``exact``: force (True) or forbid (False) the MILP; None chooses by model size.
    ``time_limit_s``: HiGHS's limit for each MILP (one per objective, a quarter of it for each
    trade-off point), not for the whole solve; a MILP it cuts short is said in ``notes``.
    """
    if problem.training is not None:
        from .train_solve import solve_training

        return solve_training(problem, max_plans=max_plans, max_group_size=max_group_size)
    start = time.perf_counter()
    qoe = problem.qoe
    space = plan_space(problem, max_group_size)
    tables = build_tables(problem, space)
    d = dense(tables)
    if not tables.memory_ok_any:
        raise _infeasible(problem, space, tables, d, memory=True)
    candidates, bounds, method = _dp_candidates(d, tables, qoe)
    compliant = _compliant(problem, space, d, tables, candidates, qoe)
    notes: list[str] = []
    if _wants_milp(exact, tables, compliant, bounds, qoe):
        more, milp_bounds, proved_infeasible, notes = _milp_candidates(tables, qoe, time_limit_s)
        if proved_infeasible:
            raise _infeasible(problem, space, tables, d)
        candidates += more
        for o, b in milp_bounds.items():
            bounds[o] = max(bounds.get(o, -math.inf), b)
        method = "dp+milp"
        compliant = _compliant(problem, space, d, tables, candidates, qoe)
    if not compliant:
        raise _infeasible(problem, space, tables, d)
    objective = qoe.objective
    bound = bounds.get(objective, 0.0)
    chosen = _pareto(compliant, objective, max_plans)
    plans, metrics = [], []
    for i, (plan, m) in enumerate(chosen):
        value = objective_value(m, objective)
        gap = _gap(value, bound)
        name = f"dora-{objective}" if i == 0 else f"dora-{i}"
        plans.append(replace(plan, name=name, gap=gap, predicted=_predicted(m)))
        metrics.append(m)
    return PlanSet(
        plans=tuple(plans),
        metrics=tuple(metrics),
        qoe=qoe,
        objective=objective,
        bound=bound,
        bounds=bounds,
        method=method,
        solve_s=time.perf_counter() - start,
        notes=tuple(notes),
    )


def _compliant(
    problem: Problem, space: PlanSpace, d: Dense, tables: Tables, candidates: list[Stages], qoe: QoE
) -> list[tuple[Plan, Metrics]]:
    """Refine the best candidates; keep the ones the tables say are compliant and not dominated
    (``measure_path`` equals ``evaluate``), then score those with ``evaluate`` itself."""
    from .measure import measure_path

    refined = [
        refine(d, c, qoe, tables.contention, o)
        for c in _shortlist(d, tables, candidates, qoe)
        for o in OBJECTIVES
    ]
    unique = list({tuple(c): c for c in candidates + refined}.values())
    measured = [(c, measure_path(d, c, qoe, tables.contention)) for c in unique]
    ok = [(c, m) for c, m in measured if meets(m, qoe)]
    keys = [(m.latency_s, m.bottleneck_s, m.energy_j) for _, m in ok]
    front = [
        c
        for i, (c, _) in enumerate(ok)
        if not any(
            all(x <= y for x, y in zip(keys[k], keys[i])) and keys[k] != keys[i]
            for k in range(len(ok))
        )
    ]
    scored = _score(problem, space, front)
    return [(p, m) for p, m in scored if m.memory_ok and _meets(m, qoe)]


def _wants_milp(
    exact: bool | None,
    tables: Tables,
    compliant: list[tuple[Plan, Metrics]],
    bounds: dict[str, float],
    qoe: QoE,
) -> bool:
    """The MILP runs when asked, or (``exact=None``) on small models where the DP search left a
    gap above ``CLOSE_GAP`` or found no compliant plan."""
    if exact is not None:
        return exact
    columns = tables.options.group.size + len(tables.moves) * max(tables.n_blocks - 1, 0)
    if tables.n_blocks > EXACT_BLOCKS or columns > EXACT_COLUMNS:
        return False
    if not compliant:
        return True
    best = min(objective_value(m, qoe.objective) for _, m in compliant)
    return _gap(best, bounds.get(qoe.objective, 0.0)) > CLOSE_GAP


def _gap(value: float, bound: float) -> float:
    if bound <= 0 or not math.isfinite(bound):
        return 0.0 if value <= 0 else math.inf
    return max(value / bound - 1.0, 0.0)


def _predicted(m: Metrics) -> dict[str, float]:
    return {"latency_s": m.latency_s, "throughput_rps": m.throughput_rps, "energy_j": m.energy_j}


def _meets(m: Metrics, qoe: QoE, rel_tol: float = 1e-9) -> bool:
    if qoe.latency_s is not None and m.latency_s > qoe.latency_s * (1 + rel_tol):
        return False
    if qoe.throughput_rps is not None and m.throughput_rps < qoe.throughput_rps * (1 - rel_tol):
        return False
    return not (qoe.energy_j is not None and m.energy_j > qoe.energy_j * (1 + rel_tol))


def _decode(tables: Tables, form_index: np.ndarray, x: np.ndarray, n_z: int) -> Stages:
    opts = tables.options
    chosen = form_index[np.nonzero(x[:n_z] > 0.5)[0]]
    return sorted(
        (int(opts.start[i]), int(opts.stop[i]), int(opts.group[i])) for i in chosen
    )


def _milp_candidates(
    tables: Tables, qoe: QoE, time_limit_s: float
) -> tuple[list[Stages], dict[str, float], bool, list[str]]:
    """One MILP per objective, then epsilon-constraint points between the objective's optimum
    and the best of each other dimension. Notes say where a MILP stopped at its time limit."""
    candidates: list[Stages] = []
    bounds: dict[str, float] = {}
    best: dict[str, float] = {}
    notes: list[str] = []
    objective = qoe.objective
    order = [objective] + [o for o in OBJECTIVES if o != objective]
    for o in order:
        form = build_formulation(tables, qoe, o)
        result = solve_highs(form, time_limit_s=time_limit_s)
        if result.status == "infeasible":
            return [], {}, True, []
        if result.x is None:
            lp = solve_highs(form, integral=False, time_limit_s=time_limit_s)
            bounds[o] = lp.bound
            notes.append(
                f"the {o} MILP found no integral plan in its {time_limit_s:g} s time limit; "
                f"its bound is the LP relaxation's"
            )
            continue
        if result.status == "feasible":
            notes.append(
                f"the {o} MILP stopped at its {time_limit_s:g} s time limit "
                f"{100 * _gap(result.objective, result.bound):.2f}% from its bound"
            )
        bounds[o] = result.bound
        best[o] = result.objective
        candidates.append(_decode(tables, form.option_index, result.x, form.n_z))
    # Trade-offs: the objective's optimum under tighter latency or energy limits.
    if candidates and objective != "throughput":
        other = "energy" if objective == "latency" else "latency"
        low = best.get(other)
        first = candidates[0]
        high = _path_value(tables, first, qoe, other)
        if low is not None and high > low * 1.001:
            for frac in (0.33, 0.67):
                level = low + frac * (high - low)
                kwargs = {"extra_energy_j" if other == "energy" else "extra_latency_s": level}
                form = build_formulation(tables, qoe, objective, **kwargs)
                result = solve_highs(form, time_limit_s=time_limit_s / 4)
                if result.x is not None:
                    candidates.append(_decode(tables, form.option_index, result.x, form.n_z))
    return candidates, bounds, False, notes


def _path_value(tables: Tables, stages: Stages, qoe: QoE, objective: str) -> float:
    from .measure import measure_path

    return measure_path(dense(tables), stages, qoe, tables.contention).value(objective)


def _dp_candidates(d: Dense, tables: Tables, qoe: QoE) -> tuple[list[Stages], dict[str, float], str]:
    search = DpSearch(d, qoe, tables.contention)
    bounds = {"latency": search.latency(), "throughput": search.bottleneck()}
    multipliers = (0.0,) if qoe.latency_s is None else (0.0, 10.0)
    bounds["energy"] = search.energy(multipliers)
    search.sweep((0.03, 0.3))
    return search.candidates, bounds, "dp"


def _shortlist(d: Dense, tables: Tables, candidates: list[Stages], qoe: QoE, keep: int = 6) -> list[Stages]:
    """The best few candidates per objective (refining all of them would cost too much)."""
    from .measure import measure_path

    unique = list({tuple(c): c for c in candidates}.values())
    metrics = [measure_path(d, c, qoe, tables.contention) for c in unique]
    picked: dict[tuple[tuple[int, int, int], ...], Stages] = {}
    for o in OBJECTIVES:
        order = sorted(
            range(len(unique)),
            key=lambda i: (not meets(metrics[i], qoe), metrics[i].value(o)),
        )
        for i in order[:keep]:
            picked[tuple(unique[i])] = unique[i]
    return list(picked.values())


def _score(problem: Problem, space: PlanSpace, candidates: list[Stages]) -> list[tuple[Plan, Metrics]]:
    unique = {tuple(c): c for c in candidates}
    scored = []
    for stages in unique.values():
        plan = make_plan("candidate", problem, space, [(a, b, space.groups[g]) for a, b, g in stages])
        scored.append((plan, evaluate(plan, problem)))
    return scored


def _pareto(
    compliant: list[tuple[Plan, Metrics]], objective: str, max_plans: int
) -> list[tuple[Plan, Metrics]]:
    """Non-dominated plans over (latency, 1/throughput, energy); best objective first, then
    spread: the rest picked greedily farthest (in log space) from those already kept."""

    def key(m: Metrics) -> tuple[float, float, float]:
        return (m.latency_s, objective_value(m, "throughput"), m.energy_j)

    ranked = sorted(compliant, key=lambda pm: (objective_value(pm[1], objective), key(pm[1])))
    front: list[tuple[Plan, Metrics]] = []
    for plan, m in ranked:
        k = key(m)
        if any(all(a <= b * (1 + 1e-9) for a, b in zip(key(fm), k)) for _, fm in front):
            continue
        front.append((plan, m))
    chosen = front[:1]
    rest = front[1:]
    while rest and len(chosen) < max_plans:
        def distance(pm: tuple[Plan, Metrics]) -> float:
            k = np.log(np.maximum(np.array(key(pm[1])), 1e-12))
            return min(
                float(np.abs(k - np.log(np.maximum(np.array(key(c[1])), 1e-12))).sum())
                for c in chosen
            )

        far = max(rest, key=distance)
        chosen.append(far)
        rest.remove(far)
    return chosen


def _infeasible(
    problem: Problem,
    space: PlanSpace,
    tables: Tables,
    d: Dense,
    memory: bool = False,
) -> InfeasibleQoEError:
    """Say what each QoE dimension can reach at best and which constraint binds."""
    qoe = problem.qoe
    if memory:
        sizes = {dev.name: dev.memory_bytes for dev in problem.cluster.devices}
        weights = sum(b.param_bytes for b in problem.blocks)
        return InfeasibleQoEError(
            f"no stage fits in memory: the model holds {weights / 2**20:.1f} MiB of weights and the "
            f"devices have {', '.join(f'{k}={v / 2**20:.0f} MiB' for k, v in sizes.items())}; "
            "the memory constraint binds: add devices or lower the batch"
        )
    free = QoE(objective=qoe.objective, batch=qoe.batch, request_rate_rps=qoe.request_rate_rps)
    search = DpSearch(d, free, tables.contention)
    search.latency()
    search.bottleneck()
    search.energy()
    scored = [m for _, m in _score(problem, space, search.candidates) if m.memory_ok]
    best_latency = min(m.latency_s for m in scored)
    best_throughput = max(m.throughput_rps for m in scored)
    best_energy = min(m.energy_j for m in scored)
    binding = []
    if qoe.latency_ms is not None and best_latency > qoe.latency_s * (1 + 1e-9):  # type: ignore[operator]
        binding.append(f"latency <= {qoe.latency_ms:g} ms (best achievable {1e3 * best_latency:.3f} ms)")
    if qoe.throughput_rps is not None and best_throughput < qoe.throughput_rps * (1 - 1e-9):
        binding.append(
            f"throughput >= {qoe.throughput_rps:g} rps (best achievable {best_throughput:.3f} rps)"
        )
    if qoe.energy_j is not None and best_energy > qoe.energy_j * (1 + 1e-9):
        binding.append(f"energy <= {qoe.energy_j:g} J (best achievable {best_energy:.4g} J)")
    if not binding:
        binding.append(
            "the combination: each target is reachable alone but no plan meets all of them "
            f"({qoe}); relax one of them"
        )
    return InfeasibleQoEError(
        f"no plan meets {qoe} on cluster {problem.cluster.name!r}. Best achievable alone: latency "
        f"{1e3 * best_latency:.3f} ms, throughput {best_throughput:.3f} rps, energy "
        f"{best_energy:.4g} J per request. Binding: {'; '.join(binding)}. Relax the binding "
        "target, add devices, or lower the batch."
    )
