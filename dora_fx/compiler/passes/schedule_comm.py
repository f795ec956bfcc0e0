"""Pass 6, schedule_comm: order each stage for overlap and choose the communication schedule.

1. *Reorder* every stage graph within its data dependencies (list scheduling). Each send
   gets a criticality rank: values for the next stage before values for later ones, then by
   tag (the value's place in the model's order, so the one the receiver needs first). A node's
   priority is the best rank of the sends whose cone (transitive inputs) holds it; nodes that
   feed no send come last. So what another stage waits for is produced first, and the stage's
   own outputs fill the time while it travels. Then each send sits right after its producer,
   each receive and weight read right before its first user.
2. *Lower* the stage graphs to a ``Schedule`` (``dora_fx.ir.schedule``): the ``overlap`` policy
   (receives posted a microbatch early, waited late; sends async, chunked above
   ``CHUNK_BYTES``) with ``critical-first`` contention, for the microbatch count whose
   simulated figures (``sim.scheduled.schedule_metrics``: latency, throughput, energy) best
   serve the QoE's objective, QoE-compliant counts first (``choose_schedule``). So the
   schedule the runtimes execute is the one the prediction simulated, and the chosen plan's
   reported figures are that schedule's (``PlanSet.with_schedule``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx

from ...analysis.evaluate import Metrics
from ...analysis.problem import Problem
from ...ir.comm_ops import RECV, SEND
from ...ir.lowering import Step, lower
from ...ir.plan import Plan
from ...ir.schedule import CHUNK_BYTES, Schedule
from ...ir.stage_graph import stage_steps
from ...sim.result import SimResult
from ...sim.scheduled import schedule_metrics

__all__ = [
    "CHUNK_BYTES",
    "MICROBATCH_CHOICES",
    "ScheduleChoice",
    "choose_schedule",
    "naive_schedule",
    "reorder_stage",
    "schedule_comm",
]

MICROBATCH_CHOICES = (1, 2, 4, 8)


def reorder_stage(gm: torch.fx.GraphModule) -> None:
    """Reorder ``gm``'s graph in place (see the module doc); the result lints."""
    graph = gm.graph
    nodes = list(graph.nodes)
    output = nodes[-1]
    position = {n: i for i, n in enumerate(nodes)}
    work = [n for n in nodes if n.op not in ("placeholder", "get_attr", "output")
            and n.target is not RECV and n.target is not SEND]
    sends = sorted((n for n in nodes if n.target is SEND),
                   key=lambda n: (n.kwargs["peer"], n.kwargs["tag"], position[n]))
    rank = {n: len(sends) for n in work}
    for r, send in reversed(list(enumerate(sends))):
        for node in _cone(send):
            if node in rank:
                rank[node] = min(rank[node], r)
    order = _list_schedule(work, rank, position)
    placed: list[torch.fx.Node] = []
    done: set[torch.fx.Node] = set()

    def place(node: torch.fx.Node) -> None:
        for arg in node.all_input_nodes:  # receives and weight reads just in time
            if arg not in done and (arg.op == "get_attr" or arg.target is RECV):
                done.add(arg)
                placed.append(arg)
        done.add(node)
        placed.append(node)

    sends_of: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for send in sorted(sends, key=position.__getitem__):
        sends_of.setdefault(send.args[0], []).append(send)  # type: ignore[arg-type]
    for node in [n for n in nodes if n.op == "placeholder"] + order:
        if node.op != "placeholder":
            place(node)
        for send in sends_of.pop(node, []):
            place(send)
    for leftovers in sends_of.values():  # sends of received values or weights, if any
        for send in leftovers:
            place(send)
    for node in nodes:  # unused receives / weights keep their place at the end
        if node not in done and node.op not in ("placeholder", "output"):
            placed.append(node)
    for node in placed:
        output.prepend(node)
    graph.lint()
    gm.recompile()


def _cone(send: torch.fx.Node) -> set[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    stack = list(send.all_input_nodes)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen


def _list_schedule(
    work: list[torch.fx.Node], rank: dict[torch.fx.Node, int], position: dict[torch.fx.Node, int]
) -> list[torch.fx.Node]:
    """Topological order of ``work`` taking, among ready nodes, the best (rank, position)."""
    members = set(work)
    waiting = {n: sum(1 for a in set(n.all_input_nodes) if a in members) for n in work}
    ready = [(rank[n], position[n], n) for n in work if waiting[n] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, node = heapq.heappop(ready)
        order.append(node)
        for user in node.users:
            if user in members:
                waiting[user] -= 1
                if waiting[user] == 0:
                    heapq.heappush(ready, (rank[user], position[user], user))
    assert len(order) == len(work), "stage graph has a cycle"
    return order


@dataclass(frozen=True)
class ScheduleChoice:
    schedule: Schedule
    predicted: SimResult | None  # the simulation of exactly this schedule (None: no problem)
    tried: dict[int, float]  # microbatches -> simulated latency (s) of one request
    metrics: Metrics | None = None  # the plan's figures under this schedule (simulated)


def plan_steps(graphs: Sequence[torch.fx.Graph], plan: Plan) -> list[list[Step]]:
    """Steps of every stage; data-parallel stages run whole (one segment)."""
    return [stage_steps(g, split=len(plan.stages[k].devices) == 1) for k, g in enumerate(graphs)]


def naive_schedule(steps: Sequence[Sequence[Step]]) -> Schedule:
    """Compute the whole stage, then send, blocking; one microbatch, fair contention."""
    return lower(steps, 1, "naive", "fair")


def choose_schedule(
    steps: Sequence[Sequence[Step]],
    plan: Plan,
    problem: Problem | None,
    batch: int,
    microbatches: int | None = None,
    choices: Sequence[int] = MICROBATCH_CHOICES,
) -> ScheduleChoice:
    """The overlap schedule with the microbatch count whose simulated figures best serve the
    QoE's objective (latency of one request, throughput, or energy per request), counts that
    meet the QoE's bounds first, ties to fewer microbatches; or exactly ``microbatches``."""
    from ...planner.plan_set import objective_value

    counts = (
        [microbatches]
        if microbatches is not None
        else [m for m in choices if m <= batch and _splits_evenly(plan, batch, m)]
    )
    counts = counts or [1]
    best: tuple[tuple[bool, float], ScheduleChoice] | None = None
    tried: dict[int, float] = {}
    for m in counts:
        schedule = lower(steps, m, "overlap", "critical-first", CHUNK_BYTES)
        if problem is None:
            return ScheduleChoice(schedule, None, {})
        metrics, idle = schedule_metrics(schedule, plan, problem)
        tried[m] = metrics.latency_s
        key = (not _meets(metrics, problem), objective_value(metrics, problem.qoe.objective))
        if best is None or key[0] < best[0][0] or (
            key[0] == best[0][0] and key[1] < best[0][1] * (1 - 1e-9)
        ):
            best = (key, ScheduleChoice(schedule, idle, tried, metrics))
    assert best is not None
    return best[1]


def _splits_evenly(plan: Plan, batch: int, m: int) -> bool:
    """Whether ``m`` microbatches keep every data-parallel group's shares: each device's rows
    of the batch divide into ``m`` equal parts (else the runtime's split of a microbatch,
    at least a row per device, is not the planned one)."""
    for stage in plan.stages:
        if len(stage.devices) > 1 and m > 1:
            rows = [share * batch for share in stage.shares]
            if batch % m or any(abs(r - round(r)) > 1e-6 or round(r) % m for r in rows):
                return False
    return True


def _meets(metrics: Metrics, problem: Problem) -> bool:
    qoe = problem.qoe
    return (
        (qoe.latency_s is None or metrics.latency_s <= qoe.latency_s)
        and (qoe.throughput_rps is None or metrics.throughput_rps >= qoe.throughput_rps)
        and (qoe.energy_j is None or metrics.energy_j <= qoe.energy_j)
    )


def schedule_comm(
    gms: Sequence[torch.fx.GraphModule],
    plan: Plan,
    problem: Problem | None,
    batch: int,
    dynamic_batch: bool,
    microbatches: int | None = None,
) -> ScheduleChoice:
    """Reorder every stage graph, then choose and lower the schedule."""
    for gm in gms:
        reorder_stage(gm)
    steps = plan_steps([gm.graph for gm in gms], plan)
    if not dynamic_batch:  # a static batch cannot be cut into microbatches
        microbatches = 1
    return choose_schedule(steps, plan, problem, batch, microbatches)
