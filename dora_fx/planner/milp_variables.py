"""The variables of the partitioning MILP that ``formulation`` builds, and the store its rows
are written into.

* ``z_o`` in {0, 1}: option ``o = (g, a, b)`` (group type ``g`` runs blocks ``[a, b)``) is a
  stage. The tables hold only options that fit in memory; ``_keep_options`` keeps those that
  meet the per-option QoE limits on their own (a stage alone within ``L_max``, its compute
  within ``1 / X_min``).
* ``w_t >= 0``: transition ``t = (g, g', j)``, the stage with group ``g`` ending at cut ``j``
  hands over to the one with ``g'``. ``_transitions`` makes one wherever an option of ``g``
  ends at ``j`` and one of ``g'`` starts there, with the cost terms of its transfer: step time
  ``X_t``, busiest port, first device's up port, airtime and flow count per shared medium,
  radio joules.

``_Rows`` collects constraint rows as COO triplets with their bounds: ``formulation`` writes
the path, link, device and latency rows into it, ``milp_measures`` the bottleneck and energy
rows, and it gives the sparse matrix the solvers take.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..qoe import QoE
from .tables import Tables

__all__ = ["Transitions"]


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


def _keep_options(tables: Tables, qoe: QoE, edge_s: np.ndarray) -> np.ndarray:
    """Options that can be part of a QoE-compliant plan on their own; ``edge_s`` per option:
    the input scatter of a first stage plus the output gather of a last one."""
    opts = tables.options
    keep = np.ones(opts.group.size, dtype=bool)
    if qoe.latency_s is not None:
        keep &= opts.compute_s + edge_s <= qoe.latency_s
    if qoe.throughput_rps is not None:
        keep &= opts.compute_s <= 1.0 / qoe.throughput_rps
    return np.nonzero(keep)[0]
