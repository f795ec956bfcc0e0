"""Predicted figures of a plan, as lines for ``CompiledModel.explain()``."""

from __future__ import annotations

from ..analysis.evaluate import evaluate
from ..analysis.problem import Problem
from ..ir.plan import Plan
from .config import SimConfig
from .simulator import simulate

__all__ = ["predicted_lines"]


def predicted_lines(plan: Plan, problem: Problem, config: SimConfig | None = None) -> list[str]:
    """Analytic (``evaluate``) and simulated figures of ``plan``, side by side.

    The default run is the problem's QoE operating point: open loop at ``request_rate_rps``
    when the QoE has one, else a closed loop of one request at a time; 200 requests.
    """
    if config is None:
        config = SimConfig(
            requests=200, request_rate_rps=problem.qoe.request_rate_rps, record_timeline=False
        )
    metrics = evaluate(
        plan,
        problem,
        microbatches=config.microbatch_count,
        request_rate_rps=config.request_rate_rps,
        source=config.source,
        sink=config.sink,
    )
    result = simulate(plan, problem, config)
    load = (
        "closed loop" if config.request_rate_rps is None else f"{config.request_rate_rps:g} req/s"
    )
    lines = [
        f"predicted ({config.requests} simulated requests, {load}, {config.microbatch_count} microbatch(es)):",
        f"  latency   p50 {result.latency_p50_s * 1e3:.2f} ms, p95 {result.latency_p95_s * 1e3:.2f} ms "
        f"(analytic, idle cluster: {metrics.latency_s * 1e3:.2f} ms)",
        f"  throughput {result.throughput_rps:.4g} req/s (capacity {metrics.throughput_rps:.4g} req/s, "
        f"bottleneck {metrics.bottleneck})",
        f"  energy    {result.energy_j:.4g} J/request (analytic {metrics.energy_j:.4g} J)",
    ]
    util = result.utilization
    for device in result.busy_s:
        limit = problem.cluster.device(device).memory_bytes
        lines.append(
            f"  {device:<14} util {util[device]:6.1%}  peak memory {result.peak_memory_bytes[device] / 2**20:8.1f} MiB"
            f" of {limit / 2**30:.1f} GiB"
        )
    return lines
