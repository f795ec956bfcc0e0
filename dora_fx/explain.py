"""``CompiledModel.explain()``: what was decided, in a table a person reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .planner.balanced import BALANCED_FLOPS
from .sim import SimConfig
from .sim.explain import predicted_lines
from .sim.scheduled import simulate_schedule

if TYPE_CHECKING:
    from .adapter import Adapter
    from .analysis.problem import Problem
    from .compiler.state import CompileState
    from .ir.plan import Plan

__all__ = ["adapter_for", "explain_state", "format_table"]


def adapter_for(plans: Sequence[Plan], problem: Problem, anticipate: bool = False) -> Adapter:
    """The runtime adapter over a plan set, widened with single-device plans and copies;
    ``anticipate``: also with the planner's plans for the changes ``adapter.plan_set``
    prepares for (a few more solves)."""
    from .adapter import Adapter, adapter_plans, plan_set

    widened = adapter_plans(plans, problem)
    if anticipate:
        known = {p.name for p in widened}
        widened += [p for p in plan_set(problem) if p.name not in known]
    return Adapter(problem, adapter_plans(widened, problem, max_plans=32, solo=False))


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join([line, rule, *body])


def explain_state(state: CompileState, notes: list[str], batch: int | None = None) -> str:
    assert state.plan is not None and state.chain is not None and state.captured is not None
    assert state.cluster is not None
    batch = state.qoe.batch if batch is None else batch
    blocks, input_bytes = state.chain.at(batch)
    plan = state.plan
    label = plan.name + (
        " (FLOP-balanced split for a fixed stage count; not network-, memory- or QoE-aware)"
        if plan.name == BALANCED_FLOPS
        else ""
    )
    lines = [
        f"dora_fx plan {label}",
        f"model captured by {state.captured.method}; {len(state.chain.nodes)} compute nodes in "
        f"{len(blocks)} blocks; figures at batch={batch}",
        f"cluster {state.cluster.name}: {', '.join(state.cluster.device_names)}",
        f"{state.qoe}",
        "",
    ]
    rows = []
    for stage, module in zip(plan.stages, state.stages):
        span = blocks[stage.block_start : stage.block_stop]
        cut = blocks[stage.block_stop - 1].out_bytes if stage.index < len(plan.stages) - 1 else 0.0
        weights = module.module.state_dict().values()
        rows.append(
            [
                str(stage.index),
                ",".join(stage.devices),
                f"{stage.block_start}:{stage.block_stop}",
                str(len(module.node_names)),
                f"{sum(t.numel() for t in weights) / 1e6:.2f}M",
                f"{sum(b.flops for b in span) / 1e9:.3f}",
                _mb(cut),
            ]
        )
    header = ["stage", "devices", "blocks", "nodes", "params", "GFLOP", "MB to next"]
    lines.append(format_table(header, rows))
    lines.append(f"input: {_mb(input_bytes)} MB per batch")
    lines.append(_ends_line(state, plan, blocks[-1].out_bytes))
    if state.missing_formulas:
        lines.append(
            "ops with no FLOP formula (counted as 0 FLOPs, bytes still counted): "
            + ", ".join(state.missing_formulas)
        )
    if state.problem is not None and batch == state.problem.batch:
        config = SimConfig(
            requests=200, request_rate_rps=state.qoe.request_rate_rps, record_timeline=False
        )
        if state.schedule is not None:  # predict what will run: the schedule, simulated
            lines += ["", *_scheduled_lines(state, config)]
        else:
            lines += ["", *predicted_lines(plan, state.problem, config)]
    if state.training is not None and state.problem is not None and batch == state.problem.batch:
        lines += ["", *training_lines(state)]
    if state.plan_set is not None:
        lines += ["", state.plan_set.describe()]
        if state.qoe.request_rate_rps is not None and state.problem is not None:
            lines += ["", "runtime adapter (the mixture of plans serving the offered load):"]
            lines.append(adapter_for(state.plan_set.plans, state.problem).explain())
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def training_lines(state: CompileState) -> list[str]:
    """The training iteration the plan is predicted to run: the schedule policy and microbatch
    count, iteration time (closed form and simulated), energy per iteration, each stage's
    forward / backward / all-reduce / optimizer step, and each device's memory by part."""
    from .analysis.training import training_spec
    from .sim.training import simulate_training

    assert state.training is not None and state.plan is not None and state.problem is not None
    t, problem = state.training, state.problem
    sim = simulate_training(state.plan, problem, microbatches=t.microbatches, schedule=t.schedule)
    lines = [
        f"training iteration ({t.schedule}, {t.microbatches} microbatches, "
        f"{training_spec(problem).optimizer}, batch {t.batch}): {1e3 * t.iteration_s:.1f} ms "
        f"(simulated {1e3 * sim.iteration_s:.1f} ms), {t.batch / sim.iteration_s:.1f} samples/s, "
        f"{t.energy_j:.3g} J per iteration; bottleneck {t.bottleneck}"
    ]
    optimizer_s = t.optimizer_s or (0.0,) * len(t.allreduce_s)
    rows = [
        [str(k), ",".join(stage.devices), f"{1e3 * f:.2f}", f"{1e3 * b:.2f}", f"{1e3 * a:.2f}",
         f"{1e3 * o:.2f}"]
        for k, (stage, f, b, a, o) in enumerate(
            zip(state.plan.stages, t.stage_forward_s, t.stage_backward_s, t.allreduce_s, optimizer_s)
        )
    ]  # fmt: skip
    header = ["stage", "devices", "fwd ms/mb", "bwd ms/mb", "all-reduce ms", "optimizer ms"]
    lines.append(format_table(header, rows))
    lines.append("  (bwd of the last stage includes the loss, priced as a softmax cross-entropy)")
    rows = []
    for device, parts in t.memory.items():
        limit = problem.cluster.device(device).memory_bytes
        rows.append([
            device, _mib(parts.weights), _mib(parts.grads), _mib(parts.optimizer),
            f"{_mib(parts.activations)} ({parts.in_flight} in flight)",
            f"{_mib(parts.total)} of {_mib(limit)}",
        ])  # fmt: skip
    header = ["device", "weights MiB", "grads MiB", "optimizer MiB", "activations MiB", "total MiB"]
    lines += ["planned training memory per device:", format_table(header, rows)]
    return lines


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f}"


def _ends_line(state: CompileState, plan: Plan, output_bytes: float) -> str:
    """Where requests enter and where results go (the problem's source and sink)."""
    source = sink = state.cluster.source if state.cluster is not None else None
    if state.problem is not None:
        source, sink = state.problem.source, state.problem.sink
    first, last = plan.stages[0].devices, plan.stages[-1].devices
    enter = (
        f"requests enter at {source} (sent to stage 0 on {','.join(first)})"
        if source is not None
        else f"requests enter at stage 0 ({first[0]}, no source device named)"
    )
    if sink is None:
        return f"{enter}; results stay on stage {len(plan.stages) - 1} ({','.join(last)})"
    there = "already there" if set(last) == {sink} else f"{_mb(output_bytes)} MB per batch sent"
    return f"{enter}; results return to {sink} ({there})"


def _scheduled_lines(state: CompileState, config: SimConfig) -> list[str]:
    """The predicted block for a plan with its schedule: the schedule simulated under the QoE's
    load (``sim.scheduled``), its idle-cluster figures (the plan's reported ones) and the
    analytic ones."""
    from .analysis.evaluate import evaluate

    assert state.plan is not None and state.problem is not None and state.schedule is not None
    choice, schedule = state.schedule_choice, state.schedule
    result = simulate_schedule(schedule, state.plan, state.problem, config)
    analytic = evaluate(state.plan, state.problem, microbatches=schedule.microbatches)
    load = "closed loop" if config.request_rate_rps is None else f"{config.request_rate_rps:g} req/s"
    idle = [] if choice is None or choice.metrics is None else [
        f"  the plan's figures under its schedule: latency {choice.metrics.latency_s * 1e3:.2f} ms "
        f"(one request, idle cluster), throughput {choice.metrics.throughput_rps:.4g} req/s "
        f"(pipeline full), energy {choice.metrics.energy_j:.4g} J/request"
    ]  # fmt: skip
    what = "predicted for inference, the forward alone" if state.for_training else "predicted"
    lines = [
        f"{what} ({config.requests} simulated requests, {load}, {schedule.header()}):",
        f"  latency   p50 {result.latency_p50_s * 1e3:.2f} ms, p95 {result.latency_p95_s * 1e3:.2f} ms "
        f"(analytic, idle cluster: {analytic.latency_s * 1e3:.2f} ms)",
        f"  throughput {result.throughput_rps:.4g} req/s (analytic capacity "
        f"{analytic.throughput_rps:.4g} req/s, bottleneck {analytic.bottleneck})",
        f"  energy    {result.energy_j:.4g} J/request (analytic {analytic.energy_j:.4g} J)",
        *idle,
    ]
    util = result.utilization
    for device in result.busy_s:
        limit = state.problem.cluster.device(device).memory_bytes
        lines.append(
            f"  {device:<14} util {util[device]:6.1%}  peak memory "
            f"{result.peak_memory_bytes[device] / 2**20:8.1f} MiB of {limit / 2**30:.1f} GiB"
        )
    return lines


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.3f}"
