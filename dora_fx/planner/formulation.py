"""The partitioning problem as a mixed-integer linear program (ours: the Dora paper gives no
formulation), built as sparse matrices; ``milp_backends`` solves it with HiGHS or writes it
in cvxpy.

Variables (``docs/partitioner.md`` has the full derivation):

* ``z_o`` in {0, 1}: option ``o = (g, a, b)`` (group type ``g`` runs blocks ``[a, b)``) is a
  stage. The chosen options form a path through the cut positions::

      sum_{o: a_o = 0} z_o = 1,     sum_{o: b_o = j} z_o = sum_{o: a_o = j} z_o   (0 < j < B)

* ``w_t >= 0``: transition ``t = (g, g', j)``, the stage with group ``g`` ending at cut ``j``
  hands over to the one with ``g'``; it links the two (integral whenever ``z`` is)::

      sum_{g'} w_{g g' j} = sum_{o: g_o = g, b_o = j} z_o,   sum_g w_{g g' j} = sum_{o: g_o = g', a_o = j} z_o

* device classes are shared: ``sum_o n_c(g_o) z_o <= N_c``.

Measures (all exact for one microbatch, i.e. equal to ``evaluate``):

* latency ``L = sum_o z_o (C_o + [a_o = 0] S_g) + sum_t w_t X_t``;
* bottleneck ``tau`` (throughput ``1 / tau``) above every device, port and medium:
  ``tau >= sum_{o: a_o = s} z_o C_o`` for each start ``s``; ``N_c tau >= sum_o z_o B_oc``;
  per cut ``tau >=`` the busiest port of its transition, and ``tau >=`` the first device's up
  port (its scatter plus its share of the cut); per shared medium ``m`` with airtime ``A_m``:
  ``tau >= A_m`` and, when 2+ flows share it (``y_m = 1``), ``tau >= A_m / eta_m``;
* energy ``E = sum_o z_o Eb_o + radio + sum_d P_idle_d T u_d`` with period
  ``T = max(1 / rate, tau)`` under a load, else ``T = L``; the products ``T u_d`` are
  linearised exactly (McCormick with a binary ``u``), per device class.

QoE: ``L <= L_max``, ``tau <= 1 / X_min``, ``E <= E_max``; memory and per-option QoE limits
remove options before the model is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..qoe import QoE
from .tables import Tables

__all__ = ["Formulation", "build_formulation", "OBJECTIVES"]

OBJECTIVES = ("latency", "throughput", "energy")


@dataclass
class _Rows:
    """COO triplets and bounds of constraint rows."""

    rows: list[np.ndarray] = field(default_factory=list)
    cols: list[np.ndarray] = field(default_factory=list)
    vals: list[np.ndarray] = field(default_factory=list)
    lower: list[np.ndarray] = field(default_factory=list)
    upper: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def add(self, cols: np.ndarray, vals: np.ndarray, lower: float, upper: float) -> None:
        """One row ``lower <= sum vals * x[cols] <= upper``."""
        cols = np.asarray(cols, dtype=np.int64)
        self.block(np.zeros(cols.size, dtype=np.int64), cols, vals, np.array([lower]), np.array([upper]))

    def block(
        self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, lower: np.ndarray, upper: np.ndarray
    ) -> None:
        """Rows ``0..len(lower)-1`` (offset to the next free rows); entries may repeat."""
        vals = np.broadcast_to(np.asarray(vals, dtype=float), np.shape(cols))
        keep = vals != 0
        self.rows.append(np.asarray(rows, dtype=np.int64)[keep] + self.count)
        self.cols.append(np.asarray(cols, dtype=np.int64)[keep])
        self.vals.append(vals[keep])
        self.lower.append(np.asarray(lower, dtype=float))
        self.upper.append(np.asarray(upper, dtype=float))
        self.count += len(lower)

    def matrix(self, n_cols: int) -> sp.csc_matrix:
        if not self.count:
            return sp.csc_matrix((0, n_cols))
        return sp.coo_matrix(
            (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
            shape=(self.count, n_cols),
        ).tocsc()

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.count:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self.lower), np.concatenate(self.upper)


@dataclass(frozen=True)
class Transitions:
    """Transition variables ``(g, g', j)`` as flat arrays with their cost terms."""

    group: np.ndarray
    next_group: np.ndarray
    cut: np.ndarray
    step_s: np.ndarray
    port_s: np.ndarray
    first_up_s: np.ndarray
    air_s: np.ndarray  # [transition, medium]
    air_flows: np.ndarray  # [transition, medium]
    radio_j: np.ndarray


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


def _transitions(tables: Tables, starts: np.ndarray, ends: np.ndarray) -> Transitions:
    """Every ``(g, g', j)`` with an option of ``g`` ending at ``j`` and one of ``g'`` starting there."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in Transitions.__dataclass_fields__}
    cut_bytes = tables.cut_bytes
    for (gi, gj), terms in tables.moves.items():
        cuts = np.nonzero(ends[gi] & starts[gj])[0]
        cuts = cuts[(cuts > 0) & (cuts < tables.n_blocks)]
        if cuts.size == 0:
            continue
        nbytes = cut_bytes[cuts]
        moving = (nbytes > 0).astype(float)
        parts["group"].append(np.full(cuts.size, gi))
        parts["next_group"].append(np.full(cuts.size, gj))
        parts["cut"].append(cuts)
        parts["step_s"].append(terms.step_s(nbytes))
        parts["port_s"].append(terms.port_s_per_byte * nbytes)
        parts["first_up_s"].append(terms.first_up_s_per_byte * nbytes)
        parts["air_s"].append(nbytes[:, None] * terms.air_s_per_byte[None, :])
        parts["air_flows"].append(moving[:, None] * terms.air_flows[None, :])
        parts["radio_j"].append(terms.radio_j_per_byte * nbytes)
    n_media = len(tables.media)
    if not parts["cut"]:
        empty = np.zeros(0)
        return Transitions(
            empty.astype(int), empty.astype(int), empty.astype(int), empty, empty, empty,
            np.zeros((0, n_media)), np.zeros((0, n_media)), empty,
        )
    return Transitions(
        **{
            k: np.concatenate(v) if k not in ("air_s", "air_flows") else np.vstack(v)
            for k, v in parts.items()
        }
    )


def _keep_options(tables: Tables, qoe: QoE, scatter_s: np.ndarray) -> np.ndarray:
    """Options that can be part of a QoE-compliant plan on their own."""
    opts = tables.options
    keep = np.ones(opts.group.size, dtype=bool)
    first = opts.start == 0
    if qoe.latency_s is not None:
        keep &= opts.compute_s + np.where(first, scatter_s[opts.group], 0.0) <= qoe.latency_s
    if qoe.throughput_rps is not None:
        keep &= opts.compute_s <= 1.0 / qoe.throughput_rps
    return np.nonzero(keep)[0]


def _longest_latency_s(tables: Tables, idx: np.ndarray, trans: Transitions, scatter: np.ndarray) -> float:
    """An upper bound on any plan's latency: the longest path with each stage at its slowest
    group and each cut at its slowest transfer."""
    n = tables.n_blocks
    opts = tables.options
    worst = np.full((n + 1, n + 1), -np.inf)
    cost = opts.compute_s[idx] + np.where(opts.start[idx] == 0, scatter[opts.group[idx]], 0.0)
    np.maximum.at(worst, (opts.start[idx], opts.stop[idx]), cost)
    cut_worst = np.zeros(n + 1)
    if trans.cut.size:
        np.maximum.at(cut_worst, trans.cut, trans.step_s)
    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    for b in range(1, n + 1):
        best[b] = np.max(best[:b] + cut_worst[:b] + worst[:b, b])
    return float(best[n]) if math.isfinite(best[n]) else 0.0


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
    idx = _keep_options(tables, qoe, scatter_s)
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
    stage_s = compute + np.where(first, scatter_s[g], 0.0)
    rows.add(np.r_[lat, z, w], np.r_[1.0, -stage_s, -trans.step_s], 0.0, 0.0)
    latency_cap = math.inf if qoe.latency_s is None else qoe.latency_s
    if extra_latency_s is not None:
        latency_cap = min(latency_cap, extra_latency_s)
    col_upper[lat] = latency_cap
    col_lower[lat] = latency_floor_s

    longest_s = _longest_latency_s(tables, idx, trans, scatter_s)
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


def _tau_rows(
    rows: _Rows,
    tables: Tables,
    tau: int,
    z: np.ndarray,
    w: np.ndarray,
    g: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    compute: np.ndarray,
    trans: Transitions,
    idx: np.ndarray,
    y_air: dict[int, int],
) -> None:
    """``tau`` above every resource's busy time per request (see the module docstring)."""
    n_blocks = tables.n_blocks
    first = a == 0
    scatter = tables.scatter
    x_in = tables.input_bytes
    # Devices: the stage starting at s is one group; its slowest device is busy C_o.
    tau_col = np.full(n_blocks, tau)
    rows.block(
        np.r_[np.arange(n_blocks), a],
        np.r_[tau_col, z],
        np.r_[np.ones(n_blocks), -compute],
        np.zeros(n_blocks),
        np.full(n_blocks, np.inf),
    )
    # Class aggregate: N_c devices, each busy at most tau.
    class_busy = tables.options.class_busy_s[idx]
    for c, cls in enumerate(tables.space.classes):
        rows.add(np.r_[tau, z], np.r_[float(cls.size), -class_busy[:, c]], 0.0, np.inf)
    # Ports: per cut, the busiest port of its transfer, and the first device's up port which
    # also carries stage 0's scatter.
    sc_port = np.array([s.port_s_per_byte for s in scatter]) * x_in
    sc_up = np.array([s.first_up_s_per_byte for s in scatter]) * x_in
    rows.add(np.r_[tau, z[first]], np.r_[1.0, -sc_port[g[first]]], 0.0, np.inf)
    cuts = np.arange(1, n_blocks + 1)
    rows.block(
        np.r_[cuts - 1, trans.cut - 1],
        np.r_[np.full(n_blocks, tau), w],
        np.r_[np.ones(n_blocks), -trans.port_s],
        np.zeros(n_blocks),
        np.full(n_blocks, np.inf),
    )
    rows.block(
        np.r_[cuts - 1, trans.cut - 1, b[first] - 1],
        np.r_[np.full(n_blocks, tau), w, z[first]],
        np.r_[np.ones(n_blocks), -trans.first_up_s, -sc_up[g[first]]],
        np.zeros(n_blocks),
        np.full(n_blocks, np.inf),
    )
    # Shared media: airtime of every transfer of the plan; 2+ flows leave eta of it usable.
    for m in range(len(tables.media)):
        sc_air = np.array([s.air_s_per_byte[m] for s in scatter]) * x_in
        sc_flows = np.array([s.air_flows[m] for s in scatter]) * (x_in > 0)
        air_cols = np.r_[w, z[first]]
        air_vals = np.r_[trans.air_s[:, m], sc_air[g[first]]]
        rows.add(np.r_[tau, air_cols], np.r_[1.0, -air_vals], 0.0, np.inf)
        if m not in y_air:
            continue
        eta = float(tables.contention[m])
        flows = np.r_[trans.air_flows[:, m], sc_flows[g[first]]]
        single = air_vals[flows == 1]
        big_m = (1.0 / eta - 1.0) * (float(single.max()) if single.size else 0.0)
        y = y_air[m]
        # tau >= A/eta - M (1 - y)
        rows.add(np.r_[tau, air_cols, y], np.r_[1.0, -air_vals / eta, -big_m], -big_m, np.inf)
        # flows <= 1 + F y
        f_max = float(flows.sum()) + 1.0
        rows.add(np.r_[air_cols, y], np.r_[flows, -f_max], -np.inf, 1.0)


def _energy_rows(
    rows: _Rows,
    tables: Tables,
    qoe: QoE,
    columns: dict[str, int],
    z: np.ndarray,
    w: np.ndarray,
    g: np.ndarray,
    compute: np.ndarray,
    trans: Transitions,
    first: np.ndarray,
    counts: np.ndarray,
    class_slots: list[tuple[int, int, int]],
    tau_upper: float,
    latency_floor_s: float,
    latency_cap: float,
    idx: np.ndarray,
) -> float:
    """Energy per request and its period; returns an upper bound on the period."""
    opts = tables.options
    energy, period, lat = columns["energy"], columns["period"], columns["latency"]
    rate = qoe.request_rate_rps or qoe.throughput_rps
    if rate is None:
        rows.add(np.r_[period, lat], np.r_[1.0, -1.0], 0.0, 0.0)  # T = L
        period_upper = min(latency_cap, tau_upper) if math.isfinite(latency_cap) else tau_upper
        period_floor = np.maximum(compute, latency_floor_s)
    else:
        tau = columns["tau"]
        rows.add(np.r_[period, tau], np.r_[1.0, -1.0], 0.0, np.inf)  # T >= tau
        period_floor_s = 1.0 / rate
        rows.add(np.r_[period], np.r_[1.0], period_floor_s, np.inf)  # T >= 1 / rate
        cap = 1.0 / qoe.throughput_rps if qoe.throughput_rps is not None else tau_upper
        period_upper = max(period_floor_s, min(cap, tau_upper))
        period_floor = np.maximum(compute, period_floor_s)
    x_in = tables.input_bytes
    sc_radio = np.array([s.radio_j_per_byte for s in tables.scatter]) * x_in
    busy_j = opts.busy_energy_j[idx] + np.where(first, sc_radio[g], 0.0)
    v_cols = np.array([v for _, _, v in class_slots], dtype=np.int64)
    idle_w = tables.idle_power_w[[c for c, _, _ in class_slots]]
    # E = busy + radio + sum_c P_idle_c sum_k v_ck
    rows.add(
        np.r_[energy, z, w, v_cols],
        np.r_[1.0, -busy_j, -trans.radio_j, -idle_w],
        0.0,
        0.0,
    )
    big_m = period_upper if math.isfinite(period_upper) else 1e6
    for _c, y, v in class_slots:
        rows.add(np.r_[v, period, y], np.r_[1.0, -1.0, -big_m], -big_m, np.inf)  # v >= T - M(1-y)
    for c in range(len(tables.space.classes)):
        ys = [y for cc, y, _ in class_slots if cc == c]
        rows.add(np.r_[ys, z], np.r_[np.ones(len(ys)), -counts[g, c]], 0.0, 0.0)
        for y0, y1 in zip(ys[:-1], ys[1:]):
            rows.add(np.r_[y0, y1], np.r_[1.0, -1.0], 0.0, np.inf)
    # Valid cut: each chosen stage idles for at least its period floor on every device.
    stage_idle_w = counts[g] @ tables.idle_power_w
    rows.add(np.r_[v_cols, z], np.r_[idle_w, -stage_idle_w * period_floor], 0.0, np.inf)
    return big_m
