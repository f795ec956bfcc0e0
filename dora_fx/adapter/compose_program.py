"""The composition program: the rates per plan that serve the load at the least cost within
capacity and the SLO, solved by HiGHS (``_Program``); ``compose_reference`` states it in cvxpy.

Given the plans' figures under the conditions now (``plan_figures``: latency, seconds of every
device and network resource per request, dynamic energy per request), the offered load
``lambda`` and the QoE, choose ``x_p >= 0`` (requests per second sent to plan ``p``):

    minimize    sum_p c_p x_p  +  sum_d P_idle,d y_d  +  W s
    subject to  sum_p x_p + s = lambda                          (serve the load; s: unserved)
                sum_p B_{d,p} x_p <= rho * y_d   for each device d   (capacity, device on)
                sum_p B_{r,p} x_p <= rho         for each network resource r (airtime, port)
                x_p <= rho_p / S_p                              (the plan's headroom)
                x_p = 0  for a plan that misses the latency SLO now, or lost a device
                y_d in {0, 1}

``B_{r,p}``: seconds resource ``r`` is busy per request of plan ``p``; ``rho``: the utilization
cap of any resource; ``S_p``: plan ``p``'s bottleneck seconds per request (its slowest
resource) and ``rho_p`` the utilization at which its queueing delay still fits in the SLO's
slack ``T - L_p`` (``headroom``). The queueing model follows the arrivals: *periodic* requests
(camera frames, sensor ticks; what the simulator replays) wait only when a resource is over
capacity, so ``rho_p = rho = PERIODIC_CAP`` (a margin for the monitor's measurement noise);
*poisson* requests wait ``rho S / (2 (1 - rho))`` on average (M/D/1), so ``rho_p`` solves
``rho S_p / (2 (1 - rho)) = T - L_p``, and ``rho = POISSON_CAP``; ``c_p``: the objective's cost per request (energy: the
busy-minus-idle power times busy time plus radio energy, since the idle power is paid through
``y_d`` once a device is on; throughput: a small latency tie-break; latency: the latency);
``W`` is larger than any plan's cost, so serving the load comes first. With ``y_d`` binary
this is a small mixed-integer LP (a device idles whether one plan or three use it). Plans
that share no device run side by side, which is how a mixture serves a load no single plan
can.

``compose_cvxpy`` states that program in cvxpy (the reference formulation, exact MILP, used by
the tests). ``Composer.compose`` decides in about a millisecond instead: the LP relaxation
straight to HiGHS (``highspy``), then a few switch-offs (``_Program.improve``); measured here,
cvxpy's canonicalization alone costs ~50 ms and the MILP's branch-and-bound set-up ~10 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import highspy
import numpy as np

from ..errors import PlanError
from ..planner.milp_backends import quiet_highs
from .figures import PlanFigures

__all__: list[str] = []  # the adapter's own machinery: ``compose`` uses it


class _Program:
    """The composition program for HiGHS. The device on/off switches ``y_d`` are relaxed to
    ``[0, 1]`` (an LP: under a millisecond, where the MILP costs HiGHS ~10 ms of branch and
    bound set-up); the relaxation charges idle power in proportion to use, so ``improve``
    then tries switching off the least used devices (re-solving without the plans on them)
    and keeps a switch-off that lowers the true power (idle paid in full by every device on)
    without serving less."""

    def __init__(
        self,
        busy: np.ndarray,
        resources: list[str],
        devices: list[str],
        cost: np.ndarray,
        idle: np.ndarray,
        big: float,
        cap: float,
    ) -> None:
        self.busy, self.resources, self.devices = busy, resources, devices
        self.cost, self.idle, self.big, self.cap = cost, idle, big, cap
        self.row_of = {r: i for i, r in enumerate(resources)}
        self.rate_limit = np.full(len(cost), np.inf)  # x_p <= rho_p / S_p

    def solve(self, offered: float, allowed: np.ndarray) -> np.ndarray:
        n, n_dev = len(self.cost), len(self.devices)
        inf = highspy.kHighsInf
        h = quiet_highs()
        ncol = n + n_dev + 1  # x, y, s
        limit = np.where(np.isfinite(self.rate_limit), self.rate_limit, inf)
        upper = np.concatenate([np.where(allowed, limit, 0.0), np.ones(n_dev), [inf]])
        h.addVars(ncol, np.zeros(ncol), upper)
        h.changeColsCost(
            ncol,
            np.arange(ncol, dtype=np.int32),
            np.concatenate([self.cost, self.idle, [self.big]]),
        )
        load_idx = np.concatenate([np.arange(n), [n + n_dev]]).astype(np.int32)
        h.addRow(offered, offered, n + 1, load_idx, np.ones(n + 1))
        for i, r in enumerate(self.resources):
            idx, val = list(range(n)), list(self.busy[i])
            if r.startswith("device:"):
                idx.append(n + self.devices.index(r))
                val.append(-self.cap)
                upper_row = 0.0
            else:
                upper_row = self.cap
            h.addRow(-inf, upper_row, len(idx), np.array(idx, dtype=np.int32), np.array(val))
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            raise PlanError(
                f"composition LP: HiGHS says {h.modelStatusToString(h.getModelStatus())}"
            )
        return np.maximum(np.asarray(h.getSolution().col_value[:n]), 0.0)

    def true_cost(self, x: np.ndarray, offered: float) -> tuple[float, float]:
        """(unserved req/s, power with full idle for every device on)."""
        unserved = max(offered - float(x.sum()), 0.0)
        power = float(self.cost @ x)
        for j, r in enumerate(self.devices):
            if float(self.busy[self.row_of[r]] @ x) > 1e-9:
                power += self.idle[j]
        return unserved, power

    def improve(
        self, x: np.ndarray, offered: float, allowed: np.ndarray | None = None, tries: int = 3
    ) -> np.ndarray:
        best, (unserved, power) = x, self.true_cost(x, offered)
        allowed = np.ones(len(self.cost), dtype=bool) if allowed is None else allowed.copy()
        util = {r: float(self.busy[self.row_of[r]] @ x) for r in self.devices}
        for r in sorted((r for r in util if util[r] > 1e-9), key=lambda r: util[r])[:tries]:
            trial_allowed = allowed & (self.busy[self.row_of[r]] <= 0)
            if not trial_allowed.any():
                continue
            trial = self.solve(offered, trial_allowed)
            t_unserved, t_power = self.true_cost(trial, offered)
            if t_unserved <= unserved + 1e-9 and t_power < power - 1e-9:
                best, unserved, power, allowed = trial, t_unserved, t_power, trial_allowed
        return best


def _excluded(figures: Sequence[PlanFigures], slo: float | None) -> dict[str, str]:
    out = {}
    for f in figures:
        if not f.alive:
            out[f.name] = f"lost device(s) {', '.join(f.missing)}"
        elif slo is not None and f.latency_s > slo * (1 + 1e-9):
            out[f.name] = f"latency {1e3 * f.latency_s:.2f} ms > SLO {1e3 * slo:.2f} ms now"
    return out


def _costs(figures: Sequence[PlanFigures], objective: str) -> np.ndarray:
    if objective == "energy":
        return np.array([f.dynamic_j for f in figures])
    # throughput: serving the load is the objective (through W); prefer faster plans.
    scale = 1e-3 if objective == "throughput" else 1.0
    return np.array([scale * f.latency_s for f in figures])


