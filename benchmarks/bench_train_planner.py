"""Training planner benchmark: plan time for GPT-2 small x 8 devices, gap against exhaustive
enumeration on random small training problems, Dora against the training baselines (same cost
model and simulator) on gpt2 and mobilenetv2 over smart_home and edge_cluster.
Last line: one JSON object."""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dora_fx import scenarios  # noqa: E402
from dora_fx.analysis.problem import Block, Problem, TrainingSpec  # noqa: E402
from dora_fx.planner import solve  # noqa: E402
from dora_fx.planner.train_baselines import compare_training  # noqa: E402
from dora_fx.qoe import QoE  # noqa: E402
from tests.planner.train_cases import exhaustive_training_best, random_training_problem  # noqa: E402

BATCH = 32


def model_problem(name: str, cluster) -> Problem:  # type: ignore[no-untyped-def]
    from dora_fx.compiler.pipeline import front_end
    from dora_fx.models import build

    cache = Path("/tmp") / f"dora_fx_train_{name}_b{BATCH}.json"
    if not cache.exists():
        model, inputs = build(name, size="full", batch=2)
        state = front_end(model, inputs)
        assert state.chain is not None
        blocks, input_bytes = state.chain.at(BATCH)
        cache.write_text(json.dumps({"input_bytes": input_bytes, "blocks": [vars(b) for b in blocks]}))
    doc = json.loads(cache.read_text())
    blocks = tuple(Block(**b) for b in doc["blocks"])
    qoe = QoE(objective="throughput", batch=BATCH)
    return Problem(blocks, cluster, qoe, BATCH, doc["input_bytes"], training=TrainingSpec("adamw"))


def main() -> None:
    gpt2 = model_problem("gpt2", scenarios.edge_cluster(8))
    solve(gpt2)  # warm: imports, first-call caches
    times, cpu = [], []
    for _ in range(3):
        start, start_cpu = time.perf_counter(), time.process_time()
        plan_set = solve(gpt2)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    plan_s, plan_cpu_s = statistics.median(times), statistics.median(cpu)
    best, gpt2_gap = plan_set.training[0], plan_set.best.gap
    print(
        f"plan_s GPT-2 small ({len(gpt2.blocks)} blocks) x 8 Jetsons, batch {BATCH}, adamw: "
        f"{plan_s:.3f} s wall, {plan_cpu_s:.3f} s CPU (median of 3); chosen {best.schedule} x "
        f"{best.microbatches}, {len(plan_set.best.stages)} stages, iteration "
        f"{1e3 * best.iteration_s:.0f} ms, certified gap {plan_set.best.gap:.1%}"
    )

    gaps = []
    for seed in range(30):
        problem = random_training_problem(seed, 2 + seed % 5, 1 + seed % 3, batch=(1, 2, 4, 8)[seed % 4])
        best = exhaustive_training_best(problem)
        if not math.isfinite(best):
            continue
        plan_set = solve(problem)
        energy = problem.qoe.objective == "energy"
        value = min(m.energy_j if energy else m.iteration_s for m in plan_set.training)
        gaps.append(value / best - 1)
    print(f"gap vs exhaustive over {len(gaps)} random training problems: median {statistics.median(gaps):.4%}, max {max(gaps):.4%}")

    ratios = []
    print(f"{'model':12} {'cluster':14} {'planner':20} {'sched':6} {'m':>3} {'closed ms':>10} {'sim ms':>10}")
    for name in ("gpt2", "mobilenetv2"):
        for cluster in (scenarios.smart_home(), scenarios.edge_cluster(4)):
            rows = compare_training(model_problem(name, cluster))
            dora = rows[0].simulated_s
            for row in rows:
                print(
                    f"{name:12} {cluster.name:14} {row.name:20} {row.schedule:6} {row.microbatches:>3} "
                    f"{1e3 * row.iteration_s:>10.1f} {1e3 * row.simulated_s:>10.1f}"
                )
                if row.name != "dora" and math.isfinite(row.simulated_s):
                    ratios.append(row.simulated_s / dora)
    print(json.dumps({
        "plan_s": plan_s,
        "plan_cpu_s": plan_cpu_s,
        "certified_gap_gpt2": gpt2_gap,
        "median_gap": statistics.median(gaps),
        "max_gap": max(gaps),
        "problems": len(gaps),
        "baseline_ratio_min": min(ratios),
        "baseline_ratio_median": statistics.median(ratios),
    }))


if __name__ == "__main__":
    main()
