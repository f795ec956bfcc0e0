"""The planners Dora is compared with, each a function ``Problem -> Plan`` on the same device
cost model (roofline stage times from ``planner.tables``, which match ``evaluate``).

Each reproduces the *policy* of its system, not its code:

* ``equal_layer``: what torch.distributed.pipelining users write by hand: one stage per
  device, in cluster order, ``ceil(blocks / devices)`` blocks each.
* ``parameter_balanced``: DeepSpeed ``PipelineModule``'s default ``partition_method=
  'parameters'``: stages of balanced weight bytes, one per device in cluster order; blind to
  device speed.
* ``pipeedge``: PipeEdge (DSD'22): minimize the slowest stage, ``max(compute, communication)``,
  over layer ranges and which devices serve them in which order; communication as bytes over
  the slower end's nominal bandwidth (no contention); memory checked.
* ``edgeshard``: EdgeShard (IoT-J 2025): the same search minimizing the sum of stage compute
  and transfer times (latency), same network estimate.
* ``asteroid``: Asteroid (MobiCom'24): hybrid pipeline + data-parallel groups with shares by
  speed, maximizing throughput (min-max stage) under memory, network without contention.
* ``best_single_device``: the fastest device that holds the whole model.
* ``neurosurgeon``: Neurosurgeon (ASPLOS'17): one split between the device the request starts
  on and the fastest device, at the cut of least latency (least mobile energy when the
  objective is energy).

None of them sees the QoE: that is what they are compared for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..analysis.problem import Problem
from ..analysis.work import _route
from ..cost_models.network import Network
from ..errors import PlanError
from ..ir.plan import Plan, Stage
from .dp import Dense, dense, run_dp
from .space import PlanSpace, make_plan, plan_space
from .tables import Tables, build_tables

__all__ = [
    "BASELINES",
    "asteroid",
    "best_single_device",
    "edgeshard",
    "equal_layer",
    "neurosurgeon",
    "parameter_balanced",
    "pipeedge",
]


def _single_device_stages(problem: Problem, bounds: list[int], name: str) -> Plan:
    devices = problem.cluster.device_names
    stages = tuple(
        Stage(k, start, stop, (devices[k],))
        for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:]))
    )
    return Plan(name, stages, batch=problem.batch)


def equal_layer(problem: Problem) -> Plan:
    n_blocks = len(problem.blocks)
    k = min(len(problem.cluster.devices), n_blocks)
    per = math.ceil(n_blocks / k)
    bounds = sorted({min(i * per, n_blocks) for i in range(k)} | {n_blocks})
    return _single_device_stages(problem, bounds, "equal-layer")


def parameter_balanced(problem: Problem) -> Plan:
    """Min-max partition of weight bytes into one contiguous range per device (1-D DP)."""
    weights = np.array([b.param_bytes for b in problem.blocks]) + 1e-9
    n, k = weights.size, min(len(problem.cluster.devices), weights.size)
    prefix = np.concatenate([[0.0], np.cumsum(weights)])
    # best[s][j]: min over splits of blocks [0, j) into s stages of the largest stage.
    best = np.full((k + 1, n + 1), np.inf)
    arg = np.zeros((k + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for s in range(1, k + 1):
        for j in range(s, n + 1):
            starts = np.arange(s - 1, j)
            cost = np.maximum(best[s - 1, starts], prefix[j] - prefix[starts])
            arg[s, j] = starts[int(np.argmin(cost))]
            best[s, j] = float(cost.min())
    bounds, j = [n], n
    for s in range(k, 0, -1):
        j = int(arg[s, j])
        bounds.append(j)
    return _single_device_stages(problem, bounds[::-1], "parameter-balanced")


def _naive_dense(problem: Problem, max_group_size: int) -> tuple[PlanSpace, Tables, Dense]:
    """Tables with transfers costed as the baselines' papers do: each flow alone at the slower
    end's nominal rate, no airtime sharing, no contention."""
    space = plan_space(problem, max_group_size)
    tables = build_tables(problem, space)
    d = dense(tables)
    network = problem.cluster.network
    for (gi, gj) in tables.moves:
        senders = space.devices_of(space.groups[gi])
        receivers = space.devices_of(space.groups[gj], space.groups[gi].counts)
        flows = _route(
            senders,
            space.shares(senders),
            receivers,
            space.shares(receivers),
            1.0,
        )
        d.move_s[gi, gj] = _naive_step_s(network, flows, tables.cut_bytes)
    for gi, group in enumerate(space.groups):
        devices = space.devices_of(group)
        flows = _route((devices[0],), (1.0,), devices, space.shares(devices), 1.0)
        d.scatter_s[gi] = _naive_step_s(network, flows, np.array([tables.input_bytes]))[0]
    return space, tables, d


def _naive_step_s(network: Network, flows: tuple, nbytes: np.ndarray) -> np.ndarray:
    times = np.zeros_like(nbytes)
    for t in flows:
        if t.src == t.dst:
            continue
        rate = min(network.link(t.src).up_bps, network.link(t.dst).down)
        times = np.maximum(times, network.path_latency_s(t.src, t.dst) + 8.0 * t.nbytes * nbytes / rate)
    return times


def _dp_plan(problem: Problem, name: str, max_group_size: int, combine: str) -> Plan:
    space, _, d = _naive_dense(problem, max_group_size)
    result = run_dp(d, d.compute_s, d.move_s, d.scatter_s, combine)
    u = int(np.argmin(result.value))
    if not math.isfinite(result.value[u]):
        raise PlanError(f"{name}: no plan fits in memory on cluster {problem.cluster.name!r}")
    stages = result.paths(u)
    return make_plan(name, problem, space, [(a, b, space.groups[g]) for a, b, g in stages])


def pipeedge(problem: Problem) -> Plan:
    return _dp_plan(problem, "pipeedge", 1, "max")


def edgeshard(problem: Problem) -> Plan:
    return _dp_plan(problem, "edgeshard", 1, "sum")


def asteroid(problem: Problem) -> Plan:
    return _dp_plan(problem, "asteroid", len(problem.cluster.devices), "max")


def best_single_device(problem: Problem) -> Plan:
    """The device with the least whole-model time among those whose memory holds it."""
    space, _, d = _naive_dense(problem, 1)
    n = len(problem.blocks)
    times = d.compute_s[:, 0, n]
    if not np.isfinite(times).any():
        raise PlanError(f"no single device of {problem.cluster.name!r} holds the whole model")
    group = space.groups[int(np.argmin(times))]
    return make_plan("best-single-device", problem, space, [(0, n, group)])


def neurosurgeon(problem: Problem) -> Plan:
    """Split between the source device (the cluster's first) and the fastest other device."""
    names = problem.cluster.device_names
    mobile = names[0]
    if len(names) == 1:
        return Plan("neurosurgeon", (Stage(0, 0, len(problem.blocks), (mobile,)),), problem.batch)
    space, tables, d = _naive_dense(problem, 1)
    server = max(names[1:], key=lambda n: space.speed[n])
    cls = {m: c.index for c in space.classes for m in c.members}
    g_of = {g.counts: i for i, g in enumerate(space.groups)}

    def group(name: str) -> int:
        counts = [0] * len(space.classes)
        counts[cls[name]] = 1
        return g_of[tuple(counts)]

    gm, gs = group(mobile), group(server)
    # With one device per class the server of the same class as the mobile is its next member.
    n = len(problem.blocks)
    device = problem.cluster.device(mobile)
    best, best_cut = math.inf, 0
    for cut in range(n + 1):
        mobile_s = d.compute_s[gm, 0, cut] if cut > 0 else 0.0
        server_s = d.compute_s[gs, cut, n] if cut < n else 0.0
        nbytes = tables.input_bytes if cut == 0 else tables.cut_bytes[cut]
        send_s = 0.0 if cut == n else float(_naive_step_s(
            problem.cluster.network,
            _route((mobile,), (1.0,), (server,), (1.0,), 1.0),
            np.array([nbytes]),
        )[0])
        if problem.qoe.objective == "energy":
            radio = nbytes * problem.cluster.network.link(mobile).tx_j_per_byte if cut < n else 0.0
            cost = device.busy_power_w * mobile_s + device.idle_power_w * (send_s + server_s) + radio
        else:
            cost = mobile_s + send_s + server_s
        if math.isfinite(cost) and cost < best:
            best, best_cut = cost, cut
    if best_cut == 0:
        stages: tuple[Stage, ...] = (Stage(0, 0, n, (server,)),)
    elif best_cut == n:
        stages = (Stage(0, 0, n, (mobile,)),)
    else:
        stages = (Stage(0, 0, best_cut, (mobile,)), Stage(1, best_cut, n, (server,)))
    return Plan("neurosurgeon", stages, batch=problem.batch)


BASELINES: dict[str, Callable[[Problem], Plan]] = {
    "equal-layer": equal_layer,
    "parameter-balanced": parameter_balanced,
    "pipeedge": pipeedge,
    "edgeshard": edgeshard,
    "asteroid": asteroid,
    "best-single-device": best_single_device,
    "neurosurgeon": neurosurgeon,
}
