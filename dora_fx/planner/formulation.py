"""The partitioning problem as a mixed-integer linear program (ours: the Dora paper gives no
formulation), built as sparse matrices; ``milp_backends`` solves it with HiGHS or writes it
in cvxpy. ``docs/partitioner.md`` has the full derivation.

``build_formulation`` lays out the columns: the options ``z_o`` and transitions ``w_t`` of
``milp_variables``, then the scalars ``L``, ``tau``, ``E``, ``T`` a program needs. It writes:

* the path through the cut positions that the chosen options form::

      sum_{o: a_o = 0} z_o = 1,     sum_{o: b_o = j} z_o = sum_{o: a_o = j} z_o   (0 < j < B)

* the links of each transition to the two stages it joins (``w`` is integral whenever ``z``
  is)::

      sum_{g'} w_{g g' j} = sum_{o: g_o = g, b_o = j} z_o,   sum_g w_{g g' j} = sum_{o: g_o = g', a_o = j} z_o

* shared device classes: ``sum_o n_c(g_o) z_o <= N_c``;
* latency ``L = sum_o z_o (C_o + [a_o = 0] S_g + [b_o = B] G_g) + sum_t w_t X_t`` with ``S``
  the input scatter from the source and ``G`` the output gather to the sink (exact for one
  microbatch, i.e. equal to ``evaluate``); the bottleneck ``tau`` and the energy ``E`` are
  written by ``milp_measures``.

QoE: ``L <= L_max``, ``tau <= 1 / X_min``, ``E <= E_max`` as column bounds; memory and
per-option QoE limits remove options before the model is built (``milp_variables``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..qoe import QoE
from .milp_measures import _energy_rows, _longest_latency_s, _tau_rows
from .milp_variables import Transitions, _keep_options, _Rows, _transitions
from .tables import Tables

__all__ = ["Formulation", "build_formulation", "OBJECTIVES"]

OBJECTIVES = ("latency", "throughput", "energy")


@dataclass
class Formulation:
    """``min c x`` subject to ``row_lower <= A x <= row_upper``, bounds, integrality."""

    tables: Tables
    option_index: np.ndarray  # positions of the kept options in tables.options
    transitions: Transitions
    cost: np.ndarray
    matrix: sp.csc_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray  # bool per column
    columns: dict[str, int]  # named scalar columns: latency, tau, energy, period
    objective: str
    n_z: int = 0
    n_w: int = 0

    @property
    def n_cols(self) -> int:
        return int(self.cost.size)


def build_formulation(
    tables: Tables,
    qoe: QoE,
    objective: str,
    *,
    latency_floor_s: float = 0.0,
    extra_latency_s: float | None = None,
    extra_energy_j: float | None = None,
) -> Formulation:
    """The MILP of ``tables`` under ``qoe``, minimizing ``objective`` (latency, throughput
    (as the bottleneck ``tau``) or energy). ``extra_*`` tighten the QoE (epsilon-constraint
    points of the Pareto set); ``latency_floor_s`` is a known lower bound on every plan's
    latency (it strengthens the relaxation of the idle energy, never cuts a plan off)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    opts, space = tables.options, tables.space
    n_blocks, n_media = tables.n_blocks, len(tables.media)
    scatter_s = np.array([s.step_s(np.array([tables.input_bytes]))[0] for s in tables.scatter])
    gather_s = np.array([s.step_s(np.array([tables.output_bytes]))[0] for s in tables.gather])
    # per option: the input scatter of a first stage, the output gather of a last one
    edge_s = np.where(opts.start == 0, scatter_s[opts.group], 0.0) + np.where(
        opts.stop == n_blocks, gather_s[opts.group], 0.0
    )
    idx = _keep_options(tables, qoe, edge_s)
    g, a, b = opts.group[idx], opts.start[idx], opts.stop[idx]
    compute = opts.compute_s[idx]
    first = a == 0
    n_groups = len(space.groups)
    starts = np.zeros((n_groups, n_blocks + 1), dtype=bool)
    ends = np.zeros((n_groups, n_blocks + 1), dtype=bool)
    starts[g, a] = True
    ends[g, b] = True
    trans = _transitions(tables, starts, ends)
    if qoe.latency_s is not None:
        ok = trans.step_s <= qoe.latency_s
        trans = Transitions(*(getattr(trans, f)[ok] for f in Transitions.__dataclass_fields__))
    if qoe.throughput_rps is not None:
        ok = trans.port_s <= 1.0 / qoe.throughput_rps
        trans = Transitions(*(getattr(trans, f)[ok] for f in Transitions.__dataclass_fields__))
    n_z, n_w = idx.size, trans.cut.size
    z = np.arange(n_z)
    w = n_z + np.arange(n_w)

    needs_tau = objective != "latency" or qoe.throughput_rps is not None
    rate = qoe.request_rate_rps or qoe.throughput_rps
    needs_energy = objective == "energy" or qoe.energy_j is not None
    needs_tau |= needs_energy and rate is not None
    contended = [m for m in range(n_media) if tables.contention[m] < 1.0] if needs_tau else []

    names = ["latency", "tau", "energy", "period"]
    columns: dict[str, int] = {}
    n_cols = n_z + n_w
    for name in names:
        if name == "tau" and not needs_tau or name in ("energy", "period") and not needs_energy:
            continue
        columns[name] = n_cols
        n_cols += 1
    y_air = {m: n_cols + i for i, m in enumerate(contended)}
    n_cols += len(contended)
    class_slots: list[tuple[int, int, int]] = []  # (class, y column, v column)
    if needs_energy:
        for c, cls in enumerate(space.classes):
            for _ in range(cls.size):
                class_slots.append((c, n_cols, n_cols + 1))
                n_cols += 2

    col_lower = np.zeros(n_cols)
    col_upper = np.full(n_cols, np.inf)
    col_upper[:n_z] = 1.0
    integer = np.zeros(n_cols, dtype=bool)
    integer[:n_z] = True
    rows = _Rows()

    # Path through the cut positions: row j balances stages ending and starting at j.
    rows.add(z[first], np.ones(int(first.sum())), 1.0, 1.0)
    inner_end, inner_start = (b < n_blocks), (a > 0)
    rows.block(
        np.r_[b[inner_end], a[inner_start]],
        np.r_[z[inner_end], z[inner_start]],
        np.r_[np.ones(int(inner_end.sum())), -np.ones(int(inner_start.sum()))],
        np.zeros(n_blocks),
        np.zeros(n_blocks),
    )  # row 0 is empty
    # Transitions link the stage that ends at a cut with the one that starts there:
    # row (g, j) for the ending side, row (g', j) + G(B+1) for the starting side.
    width = n_blocks + 1
    n_link = 2 * n_groups * width
    rows.block(
        np.r_[
            trans.group * width + trans.cut,
            g[inner_end] * width + b[inner_end],
            n_groups * width + trans.next_group * width + trans.cut,
            n_groups * width + g[inner_start] * width + a[inner_start],
        ],
        np.r_[w, z[inner_end], w, z[inner_start]],
        np.r_[
            np.ones(n_w), -np.ones(int(inner_end.sum())), np.ones(n_w), -np.ones(int(inner_start.sum()))
        ],
        np.zeros(n_link),
        np.zeros(n_link),
    )
    # Devices of a class serve one stage each.
    counts = np.array([grp.counts for grp in space.groups])
    for c, cls in enumerate(space.classes):
        rows.add(z, counts[g, c], -np.inf, float(cls.size))

    # Latency: L - sum(...) = 0.
    lat = columns["latency"]
    stage_s = compute + edge_s[idx]
    rows.add(np.r_[lat, z, w], np.r_[1.0, -stage_s, -trans.step_s], 0.0, 0.0)
    latency_cap = math.inf if qoe.latency_s is None else qoe.latency_s
    if extra_latency_s is not None:
        latency_cap = min(latency_cap, extra_latency_s)
    col_upper[lat] = latency_cap
    col_lower[lat] = latency_floor_s

    longest_s = _longest_latency_s(tables, idx, trans, edge_s)
    eta_min = float(tables.contention.min()) if n_media else 1.0
    if needs_tau:
        _tau_rows(rows, tables, columns["tau"], z, w, g, a, b, compute, trans, idx, y_air)
        col_upper[columns["tau"]] = (
            math.inf if qoe.throughput_rps is None else 1.0 / qoe.throughput_rps
        )
        for _m, col in y_air.items():
            col_upper[col] = 1.0
            integer[col] = True
    if needs_energy:
        period_upper = _energy_rows(
            rows, tables, qoe, columns, z, w, g, compute, trans, first, counts, class_slots,
            longest_s / eta_min, latency_floor_s, latency_cap, idx,
        )
        for _, y_col, _v in class_slots:
            col_upper[y_col] = 1.0
            integer[y_col] = True
        col_upper[columns["period"]] = period_upper
        energy_cap = math.inf if qoe.energy_j is None else qoe.energy_j
        if extra_energy_j is not None:
            energy_cap = min(energy_cap, extra_energy_j)
        col_upper[columns["energy"]] = energy_cap

    cost = np.zeros(n_cols)
    cost[columns["tau" if objective == "throughput" else objective]] = 1.0
    return Formulation(
        tables=tables,
        option_index=idx,
        transitions=trans,
        cost=cost,
        matrix=rows.matrix(n_cols),
        row_lower=rows.bounds()[0],
        row_upper=rows.bounds()[1],
        col_lower=col_lower,
        col_upper=col_upper,
        integer=integer,
        columns=columns,
        objective=objective,
        n_z=n_z,
        n_w=n_w,
    )
