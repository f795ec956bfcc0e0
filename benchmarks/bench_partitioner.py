"""Partitioner benchmark (issue 4's acceptance command).

1. optimality: random small problems (<= 12 blocks, <= 4 devices, random QoE) against
   exhaustive enumeration of the plan space under ``evaluate``;
2. speed: ``solve`` on GPT-2 small blocks x 8 devices and on 64 random blocks x 8 devices;
3. scenarios x models x QoE settings: Dora against every baseline in the simulator.

Prints tables; the last line is one JSON object with the acceptance figures.
``--problems N`` and ``--models a,b`` shrink the run.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import dora_fx
from dora_fx import scenarios
from dora_fx.analysis.evaluate import evaluate
from dora_fx.analysis.problem import Block, Problem
from dora_fx.errors import InfeasibleQoEError
from dora_fx.planner import baselines, enumerate_plans, solve
from dora_fx.planner.plan_set import objective_value
from dora_fx.planner.synthetic import random_problem
from dora_fx.qoe import QoE
from dora_fx.sim.config import SimConfig
from dora_fx.sim.simulator import simulate

CACHE = Path(tempfile.gettempdir()) / "dora_fx_bench_cache"
MODELS = ("gpt2", "bert", "vit", "mobilenetv2", "resnet")
SCENARIOS = {
    "smart_home": scenarios.smart_home,
    "traffic_analytics": scenarios.traffic_analytics,
    "edge_cluster": lambda: scenarios.edge_cluster(4),
}


def meets(m, qoe: QoE) -> bool:  # type: ignore[no-untyped-def]
    tol = 1e-9
    if qoe.latency_s is not None and m.latency_s > qoe.latency_s * (1 + tol):
        return False
    if qoe.throughput_rps is not None and m.throughput_rps < qoe.throughput_rps * (1 - tol):
        return False
    return not (qoe.energy_j is not None and m.energy_j > qoe.energy_j * (1 + tol))


# -- 1. optimality ----------------------------------------------------------------------------


def optimality(n_problems: int) -> dict[str, object]:
    gaps, qoe_violations, bound_violations, infeasible, certified = [], 0, 0, 0, []
    for seed in range(n_problems):
        rng = random.Random(seed)
        problem = random_problem(seed, rng.randint(2, 12), rng.randint(1, 4))
        objective = problem.qoe.objective
        best = math.inf
        for plan in enumerate_plans(problem):
            m = evaluate(plan, problem)
            if m.memory_ok and meets(m, problem.qoe):
                best = min(best, objective_value(m, objective))
        try:
            plan_set = solve(problem)
        except InfeasibleQoEError:
            if math.isfinite(best):
                qoe_violations += 1  # a compliant plan existed and the solver found none
            else:
                infeasible += 1
            continue
        m = evaluate(plan_set.best, problem)
        if not (m.memory_ok and meets(m, problem.qoe)):
            qoe_violations += int(math.isfinite(best))
            continue
        if not math.isfinite(best):
            continue
        value = objective_value(m, objective)
        gaps.append(value / best - 1.0 if best > 0 else 0.0)
        certified.append(plan_set.best.gap or 0.0)
        if plan_set.bound > best * (1 + 1e-9):
            bound_violations += 1
    print(
        f"optimality: {n_problems} random problems, {len(gaps)} feasible, {infeasible} with no "
        f"compliant plan (solver raised InfeasibleQoEError on all of them)"
    )
    print(
        f"  gap to exhaustive optimum: median {100 * statistics.median(gaps):.4f}%, max "
        f"{100 * max(gaps):.4f}%; certified gap median {100 * statistics.median(certified):.3f}%, "
        f"max {100 * max(certified):.3f}%; QoE/memory violations {qoe_violations}; bound above "
        f"optimum {bound_violations}"
    )
    return {
        "median_gap": statistics.median(gaps),
        "max_gap": max(gaps),
        "qoe_violations": qoe_violations,
        "bound_violations": bound_violations,
        "median_certified_gap": statistics.median(certified),
    }


# -- model problems ---------------------------------------------------------------------------


def _graph_code_hash() -> str:
    """Blocks depend on the capture/cost/coarsen code: a change there invalidates the cache."""
    import hashlib

    import dora_fx

    root = Path(dora_fx.__file__).parent
    digest = hashlib.sha256()
    for part in ("compiler/capture.py", "models.py", "compiler/passes/annotate_costs.py",
                 "cost_models/op_costs.py", "compiler/passes/coarsen.py"):
        digest.update((root / part).read_bytes())
    return digest.hexdigest()[:12]


def model_blocks(name: str, batch: int) -> tuple[list[Block], float]:
    path = CACHE / _graph_code_hash() / f"{name}_b{batch}.json"
    if not path.exists():
        from dora_fx.compiler.pipeline import front_end
        from dora_fx.models import build

        path.parent.mkdir(parents=True, exist_ok=True)
        model, inputs = build(name, size="full", batch=2)
        state = front_end(model, inputs)
        assert state.chain is not None
        for b in (1, 8):
            blocks, input_bytes = state.chain.at(b)
            doc = {"input_bytes": input_bytes, "blocks": [vars(x) for x in blocks]}
            (path.parent / f"{name}_b{b}.json").write_text(json.dumps(doc))
    doc = json.loads(path.read_text())
    return [Block(**b) for b in doc["blocks"]], doc["input_bytes"]


def timed_solve(problem: Problem, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        solve(problem)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed() -> dict[str, float]:
    blocks, input_bytes = model_blocks("gpt2", 1)
    gpt2 = Problem(tuple(blocks), scenarios.edge_cluster(8), QoE(objective="latency"), 1, input_bytes)
    gpt2_s = max(
        timed_solve(Problem(gpt2.blocks, gpt2.cluster, QoE(objective=o), 1, input_bytes))
        for o in ("latency", "throughput", "energy")
    )
    rand_s = max(
        timed_solve(random_problem(seed, 64, 8, batch=1, qoe=QoE(objective=o)))
        for seed, o in enumerate(("latency", "throughput", "energy"))
    )
    print(
        f"speed (median of 3, worst objective): GPT-2 small ({len(blocks)} blocks) x 8 devices "
        f"{gpt2_s:.3f} s; 64 random blocks x 8 heterogeneous devices {rand_s:.3f} s"
    )
    return {"gpt2_8dev_solve_s": gpt2_s, "blocks64_8dev_solve_s": rand_s}


# -- 3. scenarios ------------------------------------------------------------------------------


def qoe_settings(problem: Problem) -> dict[str, tuple[QoE, SimConfig]]:
    """Targets scaled to what the best single device does on this model and cluster."""
    single = evaluate(baselines.best_single_device(problem), problem)
    lat_ms = 1e3 * single.latency_s
    return {
        "interactive": (
            QoE(latency_ms=1.5 * lat_ms, objective="latency", batch=1),
            SimConfig(requests=30, concurrency=1, record_timeline=False),
        ),
        "streaming": (
            QoE(throughput_rps=1.2 * single.throughput_rps, objective="throughput", batch=1),
            SimConfig(requests=60, concurrency=8, record_timeline=False),
        ),
        "battery": (
            QoE(
                latency_ms=3.0 * lat_ms,
                objective="energy",
                batch=1,
                request_rate_rps=0.25 / single.latency_s,
            ),
            SimConfig(requests=30, request_rate_rps=0.25 / single.latency_s, record_timeline=False),
        ),
    }


def sim_meets(result, m, qoe: QoE) -> bool:  # type: ignore[no-untyped-def]
    if not m.memory_ok:
        return False
    if qoe.latency_s is not None and result.latency_p50_s > qoe.latency_s * (1 + 1e-6):
        return False
    if qoe.throughput_rps is not None and result.throughput_rps < qoe.throughput_rps * (1 - 1e-6):
        return False
    return not (qoe.energy_j is not None and result.energy_j > qoe.energy_j * (1 + 1e-6))


def sim_value(result, objective: str) -> float:  # type: ignore[no-untyped-def]
    return {
        "latency": result.latency_p50_s,
        "throughput": 1.0 / result.throughput_rps,
        "energy": result.energy_j,
    }[objective]


def scenarios_table(models: tuple[str, ...]) -> dict[str, object]:
    header = (
        f"{'scenario':<18} {'model':<12} {'qoe':<12} {'planner':<19} {'lat ms':>9} {'thr rps':>9} "
        f"{'J/req':>9} {'met':>4} {'gap':>7}"
    )
    print(header)
    print("-" * len(header))
    speedups, savings, losses, rows = [], [], 0, 0
    for scenario, make_cluster in SCENARIOS.items():
        cluster = make_cluster()
        for model in models:
            blocks, input_bytes = model_blocks(model, 1)
            base = Problem(tuple(blocks), cluster, QoE(), 1, input_bytes)
            for setting, (qoe, config) in qoe_settings(base).items():
                problem = Problem(tuple(blocks), cluster, qoe, 1, input_bytes)
                entries = []
                try:
                    plan_set = solve(problem)
                    entries.append(("dora", plan_set.best, plan_set.best.gap or 0.0))
                except InfeasibleQoEError:
                    plan_set = None
                for name, planner in baselines.BASELINES.items():
                    try:
                        entries.append((name, planner(problem), None))
                    except dora_fx.PlanError:
                        continue
                results = {}
                for name, plan, gap in entries:
                    m = evaluate(plan, problem)
                    r = simulate(plan, problem, config)
                    ok = sim_meets(r, m, qoe)
                    results[name] = (r, ok, gap)
                    rows += 1
                    gap_text = "-" if gap is None else f"{100 * gap:.2f}%"
                    print(
                        f"{scenario:<18} {model:<12} {setting:<12} {name:<19} "
                        f"{1e3 * r.latency_p50_s:>9.2f} {r.throughput_rps:>9.3f} {r.energy_j:>9.3f} "
                        f"{'yes' if ok else 'no':>4} {gap_text:>7}"
                    )
                if "dora" not in results or not results["dora"][1]:
                    continue
                dora_r, _, dora_gap = results["dora"]
                objective = qoe.objective
                met = [(n, r) for n, (r, ok, _) in results.items() if n != "dora" and ok]
                for _, r in met:
                    if sim_value(dora_r, objective) > sim_value(r, objective) * (1 + (dora_gap or 0) + 1e-6):
                        losses += 1
                if not met:
                    continue
                best_name, best_r = min(met, key=lambda nr: sim_value(nr[1], objective))
                if objective == "latency":
                    speedups.append(best_r.latency_p50_s / dora_r.latency_p50_s)
                elif objective == "throughput":
                    speedups.append(dora_r.throughput_rps / best_r.throughput_rps)
                else:
                    savings.append(1.0 - dora_r.energy_j / best_r.energy_j)
    def span(values: list[float]) -> list[float] | None:
        return [min(values), max(values)] if values else None

    print(
        f"scenarios: {rows} simulated runs; Dora speedup vs best QoE-meeting baseline "
        f"{span(speedups)}; energy saving {span(savings)}; losses beyond certified gap {losses}"
    )
    return {"speedup_range": span(speedups), "energy_saving_range": span(savings), "losses_beyond_gap": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    summary: dict[str, object] = {}
    summary.update(optimality(args.problems))
    summary.update(speed())
    summary.update(scenarios_table(tuple(args.models.split(","))))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
