"""Dynamic programs over the plan space: exact for additive costs, with the device classes a
plan has used kept in the state, so every path they return respects the device counts.

State ``(j, u, g)``: a stage of group type ``g`` ends at cut ``j`` and the stages so far use
``u`` devices of each class (a mixed-radix index). One step appends a transfer over cut ``j``
and a stage ``(g', j, b)``::

    V[b, u + g', g'] = min_{g, j} V[j, u, g] (+) X[g, g', j] (+) C[g', j, b]

with ``(+)`` either ``+`` (latency, energy: sums over the pipeline) or ``max`` (bottleneck).
Costs are dense arrays with ``inf`` where an option or transfer is not allowed (memory, QoE).
For ``n`` cuts, ``G`` group types and ``U`` usage vectors this is ``O(n^2 U G^2)`` numpy work.

Dropping any non-negative term from a cost, or adding ``mu (L - L_max)`` for a ``mu >= 0``,
makes the DP's optimum a lower bound on the constrained optimum (weak duality): that is how
``bounds`` certifies plans on problems too large for the exact MILP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .tables import Tables

__all__ = ["Dense", "DpResult", "dense", "run_dp"]

Stages = list[tuple[int, int, int]]  # (block_start, block_stop, group index)


@dataclass(frozen=True)
class Dense:
    """The tables as dense arrays indexed ``[g, a, b]`` (options) and ``[g, g', j]`` (moves)."""

    compute_s: np.ndarray  # [G, B+1, B+1], inf when the option does not exist
    busy_energy_j: np.ndarray  # [G, B+1, B+1]
    move_s: np.ndarray  # [G, G, B+1], inf when the two groups cannot follow each other
    move_port_s: np.ndarray  # [G, G, B+1]
    move_first_up_s: np.ndarray  # [G, G, B+1]
    move_air_s: np.ndarray  # [M, G, G, B+1]
    move_air_flows: np.ndarray  # [M, G, G, B+1]
    move_radio_j: np.ndarray  # [G, G, B+1]
    scatter_s: np.ndarray  # [G]
    scatter_port_s: np.ndarray  # [G]
    scatter_up_s: np.ndarray  # [G]
    scatter_air_s: np.ndarray  # [M, G]
    scatter_air_flows: np.ndarray  # [M, G]
    scatter_radio_j: np.ndarray  # [G]
    gather_s: np.ndarray  # [G]: the last stage's outputs to the sink
    gather_port_s: np.ndarray  # [G]
    gather_air_s: np.ndarray  # [M, G]
    gather_air_flows: np.ndarray  # [M, G]
    gather_radio_j: np.ndarray  # [G]
    idle_w: np.ndarray  # [G]: idle power of the group's devices
    usage_stride: np.ndarray  # [classes]
    usage_count: int
    group_offset: np.ndarray  # [G]: usage index of the group's counts
    fits: np.ndarray  # [U, G]: u + g within every class's size
    usage_idle_w: np.ndarray  # [U]: idle power of the devices a usage vector holds


def dense(tables: Tables) -> Dense:
    space = tables.space
    n, n_groups, n_media = tables.n_blocks, len(space.groups), len(tables.media)
    shape = (n_groups, n_groups, n + 1)
    move = {k: np.full(shape, np.inf if k == "s" else 0.0) for k in ("s", "port", "up", "radio")}
    air = np.zeros((n_media, *shape))
    air_flows = np.zeros((n_media, *shape))
    nbytes = tables.cut_bytes
    moving = (nbytes > 0).astype(float)
    for (gi, gj), t in tables.moves.items():
        move["s"][gi, gj] = t.step_s(nbytes)
        move["port"][gi, gj] = t.port_s_per_byte * nbytes
        move["up"][gi, gj] = t.first_up_s_per_byte * nbytes
        move["radio"][gi, gj] = t.radio_j_per_byte * nbytes
        air[:, gi, gj] = t.air_s_per_byte[:, None] * nbytes[None, :]
        air_flows[:, gi, gj] = t.air_flows[:, None] * moving[None, :]
    x_in = np.array([tables.input_bytes])
    sizes = np.array([c.size for c in space.classes])
    stride = np.concatenate([[1], np.cumprod(sizes + 1)[:-1]]).astype(int)
    usage_count = int(np.prod(sizes + 1))
    counts = np.array([g.counts for g in space.groups])
    usage = (np.arange(usage_count)[:, None] // stride[None, :]) % (sizes + 1)[None, :]
    fits = np.all(usage[:, None, :] + counts[None, :, :] <= sizes[None, None, :], axis=2)
    scatter, gather = tables.scatter, tables.gather
    x_out = np.array([tables.output_bytes])
    return Dense(
        compute_s=tables.options.compute_full,
        busy_energy_j=tables.options.energy_full,
        move_s=move["s"],
        move_port_s=move["port"],
        move_first_up_s=move["up"],
        move_air_s=air,
        move_air_flows=air_flows,
        move_radio_j=move["radio"],
        scatter_s=np.array([s.step_s(x_in)[0] for s in scatter]),
        scatter_port_s=np.array([s.port_s_per_byte for s in scatter]) * x_in[0],
        scatter_up_s=np.array([s.first_up_s_per_byte for s in scatter]) * x_in[0],
        scatter_air_s=np.array([s.air_s_per_byte for s in scatter]).reshape(n_groups, n_media).T
        * x_in[0],
        scatter_air_flows=np.array([s.air_flows for s in scatter]).reshape(n_groups, n_media).T
        * float(x_in[0] > 0),
        scatter_radio_j=np.array([s.radio_j_per_byte for s in scatter]) * x_in[0],
        gather_s=np.array([s.step_s(x_out)[0] for s in gather]),
        gather_port_s=np.array([s.port_s_per_byte for s in gather]) * x_out[0],
        gather_air_s=np.array([s.air_s_per_byte for s in gather]).reshape(n_groups, n_media).T
        * x_out[0],
        gather_air_flows=np.array([s.air_flows for s in gather]).reshape(n_groups, n_media).T
        * float(x_out[0] > 0),
        gather_radio_j=np.array([s.radio_j_per_byte for s in gather]) * x_out[0],
        idle_w=counts @ tables.idle_power_w,
        usage_stride=stride,
        usage_count=usage_count,
        group_offset=counts @ stride,
        fits=fits,
        usage_idle_w=usage @ tables.idle_power_w,
    )


@dataclass(frozen=True)
class DpResult:
    value: np.ndarray  # [U]: best cost of a whole plan ending with usage u (inf: none)
    paths: Callable[[int], Stages]  # stages of the best plan with final usage u


def run_dp(
    d: Dense,
    option_cost: np.ndarray,
    move_cost: np.ndarray,
    first_cost: np.ndarray,
    combine: str = "sum",
    last_cost: np.ndarray | None = None,
) -> DpResult:
    """Best plan per final usage vector under ``(+) = combine`` (see the module docstring);
    ``first_cost[g]`` is added for the first stage's group, ``last_cost[g]`` for the last's."""
    op: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.add if combine == "sum" else np.maximum
    n_groups, n_cuts = option_cost.shape[0], option_cost.shape[1]
    n = n_cuts - 1
    n_usage = d.usage_count
    value = np.full((n + 1, n_usage, n_groups), np.inf)
    prev_cut = np.full((n + 1, n_usage, n_groups), -1, dtype=np.int64)
    prev_group = np.full((n + 1, n_usage, n_groups), -1, dtype=np.int64)
    offset = d.group_offset
    for g in range(n_groups):
        value[1:, offset[g], g] = op(first_cost[g], option_cost[g, 0, 1:])
    for j in range(1, n):
        here = value[j]  # [U, G]
        if not np.isfinite(here).any():
            continue
        joined = op(here[:, :, None], move_cost[None, :, :, j])  # [U, G, G']
        best_prev = np.argmin(joined, axis=1)  # [U, G']
        best = np.min(joined, axis=1)
        # every (usage, next group) pair at once: the entries they update are distinct, so
        # this is the per-group loop's result exactly
        ok = d.fits & np.isfinite(best)  # [U, G']
        src, g2s = np.nonzero(ok)
        if src.size == 0:
            continue
        dst = src + offset[g2s]
        cand = op(best[src, g2s][None, :], option_cost[g2s, j, j + 1 :].T)  # [b, pairs]
        current = value[j + 1 :, dst, g2s]
        better = cand < current
        if not better.any():
            continue
        value[j + 1 :, dst, g2s] = np.where(better, cand, current)
        prev_cut[j + 1 :, dst, g2s] = np.where(better, j, prev_cut[j + 1 :, dst, g2s])
        prev_group[j + 1 :, dst, g2s] = np.where(
            better, best_prev[src, g2s][None, :], prev_group[j + 1 :, dst, g2s]
        )
    final = value[n] if last_cost is None else op(value[n], last_cost[None, :])  # [U, G]
    last_group = np.argmin(final, axis=1)
    final_value = final[np.arange(n_usage), last_group]

    def path(u: int) -> Stages:
        stages: Stages = []
        b, g = n, int(last_group[u])
        while b > 0:
            j = int(prev_cut[b, u, g])
            if j < 0:
                stages.append((0, b, g))
                break
            stages.append((j, b, g))
            u, g, b = u - int(offset[g]), int(prev_group[b, u, g]), j
        return stages[::-1]

    return DpResult(final_value, path)
