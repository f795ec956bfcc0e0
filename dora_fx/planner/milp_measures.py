"""The rows of the partitioning MILP's bottleneck ``tau`` and energy ``E``, written for
``build_formulation`` (``docs/partitioner.md`` has the full derivation). Both measures are
exact for one microbatch, i.e. equal to ``evaluate``, except where a port carries two of the
plan's transfers that the rows bound separately (a sink that also receives a middle stage's
input): there ``tau`` is a lower bound, as the certificate needs:

* bottleneck ``tau`` (throughput ``1 / tau``) above every device, port and medium:
  ``tau >= sum_{o: a_o = s} z_o C_o`` for each start ``s``; ``N_c tau >= sum_o z_o B_oc``;
  per cut ``tau >=`` the busiest port of its transition, and ``tau >=`` the first device's up
  port (its scatter plus its share of the cut), and ``tau >=`` the last stage's busiest port
  sending the outputs to the sink; per shared medium ``m`` with airtime ``A_m`` (every
  transfer's, the scatter's and the gather's included):
  ``tau >= A_m`` and, when 2+ flows share it (``y_m = 1``), ``tau >= A_m / eta_m``;
* energy ``E = sum_o z_o Eb_o + radio + sum_d P_idle_d T u_d`` with period
  ``T = max(1 / rate, tau)`` under a load, else ``T = L``; the products ``T u_d`` are
  linearised exactly (McCormick with a binary ``u``), per device class.

``_longest_latency_s`` bounds every plan's latency; over the lowest contention factor it
bounds ``tau``, which sizes the energy rows' big-M.
"""

from __future__ import annotations

import math

import numpy as np

from ..qoe import QoE
from .milp_variables import Transitions, _Rows
from .tables import Tables

__all__: list[str] = []  # the formulation's own machinery: ``build_formulation`` uses it


def _longest_latency_s(tables: Tables, idx: np.ndarray, trans: Transitions, edge_s: np.ndarray) -> float:
    """An upper bound on any plan's latency: the longest path with each stage at its slowest
    group and each cut at its slowest transfer (``edge_s``: each option's scatter / gather)."""
    n = tables.n_blocks
    opts = tables.options
    worst = np.full((n + 1, n + 1), -np.inf)
    cost = opts.compute_s[idx] + edge_s[idx]
    np.maximum.at(worst, (opts.start[idx], opts.stop[idx]), cost)
    cut_worst = np.zeros(n + 1)
    if trans.cut.size:
        np.maximum.at(cut_worst, trans.cut, trans.step_s)
    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    for b in range(1, n + 1):
        best[b] = np.max(best[:b] + cut_worst[:b] + worst[:b, b])
    return float(best[n]) if math.isfinite(best[n]) else 0.0


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
    first, last = a == 0, b == n_blocks
    scatter, gather = tables.scatter, tables.gather
    x_in, x_out = tables.input_bytes, tables.output_bytes
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
    # The last stage's devices' up ports carry the outputs to the sink (and nothing else).
    ga_port = np.array([s.port_s_per_byte for s in gather]) * x_out
    rows.add(np.r_[tau, z[last]], np.r_[1.0, -ga_port[g[last]]], 0.0, np.inf)
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
        ga_air = np.array([s.air_s_per_byte[m] for s in gather]) * x_out
        ga_flows = np.array([s.air_flows[m] for s in gather]) * (x_out > 0)
        air_cols = np.r_[w, z[first], z[last]]
        air_vals = np.r_[trans.air_s[:, m], sc_air[g[first]], ga_air[g[last]]]
        rows.add(np.r_[tau, air_cols], np.r_[1.0, -air_vals], 0.0, np.inf)
        if m not in y_air:
            continue
        eta = float(tables.contention[m])
        flows = np.r_[trans.air_flows[:, m], sc_flows[g[first]], ga_flows[g[last]]]
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
    ga_radio = np.array([s.radio_j_per_byte for s in tables.gather]) * tables.output_bytes
    last = opts.stop[idx] == tables.n_blocks
    busy_j = (
        opts.busy_energy_j[idx] + np.where(first, sc_radio[g], 0.0) + np.where(last, ga_radio[g], 0.0)
    )
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
