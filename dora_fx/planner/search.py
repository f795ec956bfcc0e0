"""Candidate plans and lower bounds from dynamic programs (for problems too large for the exact
MILP in the time budget), and local refinement of any candidate.

Bounds (each a true lower bound over the plans that meet the QoE, by the argument in
``dp``'s docstring):

* latency: the DP minimum of the latency with QoE-violating options removed;
* throughput: the min-max DP over device and port terms (the shared-medium term and the first
  device's combined up port only raise the true bottleneck);
* energy: ``E = sum_stages Eb + radio + P_idle(u) T``. Under a load ``T >= 1 / rate``; in a
  closed loop ``T = L`` and for a grid of ``alpha`` the DP of ``Eb + alpha L`` bounds every
  plan whose devices idle at ``P_idle(u) >= alpha``. A latency limit adds ``mu (L - L_max)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..qoe import QoE
from .dp import Dense, Stages, run_dp
from .measure import PathMetrics, measure_path

__all__ = ["DpSearch", "refine"]


class DpSearch:
    """Bounds and candidate paths of one problem, from dense tables."""

    def __init__(self, d: Dense, qoe: QoE, contention: np.ndarray) -> None:
        self.d, self.qoe, self.contention = d, qoe, contention
        self.candidates: list[Stages] = []
        option_ok = np.isfinite(d.compute_s)
        move_ok = np.isfinite(d.move_s)
        first_ok = np.ones(d.scatter_s.size, dtype=bool)
        last_ok = np.ones(d.gather_s.size, dtype=bool)
        if qoe.latency_s is not None:
            option_ok &= d.compute_s <= qoe.latency_s
            move_ok &= d.move_s <= qoe.latency_s
            first_ok &= d.scatter_s <= qoe.latency_s
            last_ok &= d.gather_s <= qoe.latency_s
        if qoe.throughput_rps is not None:
            cap = 1.0 / qoe.throughput_rps
            option_ok &= d.compute_s <= cap
            move_ok &= (d.move_port_s <= cap) & (d.move_first_up_s <= cap)
            first_ok &= (d.scatter_port_s <= cap) & (d.scatter_up_s <= cap)
            last_ok &= d.gather_port_s <= cap
        self.option_ok, self.move_ok, self.first_ok = option_ok, move_ok, first_ok
        self.last_ok = last_ok

    def _run(
        self,
        option: np.ndarray,
        move: np.ndarray,
        first: np.ndarray,
        last: np.ndarray,
        combine: str = "sum",
    ) -> np.ndarray:
        result = run_dp(
            self.d,
            np.where(self.option_ok, option, np.inf),
            np.where(self.move_ok, move, np.inf),
            np.where(self.first_ok, first, np.inf),
            combine,
            np.where(self.last_ok, last, np.inf),
        )
        for u in np.nonzero(np.isfinite(result.value))[0]:
            self.candidates.append(result.paths(int(u)))
        return result.value

    def latency(self, weight_energy: float = 0.0) -> float:
        """Min latency (+ ``weight_energy`` x busy and radio energy); returns the DP minimum."""
        d = self.d
        values = self._run(
            d.compute_s + weight_energy * d.busy_energy_j,
            d.move_s + weight_energy * d.move_radio_j,
            d.scatter_s + weight_energy * d.scatter_radio_j,
            d.gather_s + weight_energy * d.gather_radio_j,
        )
        return float(values.min())

    def bottleneck(self) -> float:
        """Min-max of the device and port terms; then the fastest plans under that bottleneck."""
        d = self.d
        values = self._run(
            d.compute_s,
            np.maximum(d.move_port_s, d.move_first_up_s),
            np.maximum(d.scatter_port_s, d.scatter_up_s),
            d.gather_port_s,
            combine="max",
        )
        tau = float(values.min())
        if math.isfinite(tau):
            keep = (self.option_ok.copy(), self.move_ok.copy(), self.first_ok.copy(),
                    self.last_ok.copy())  # fmt: skip
            slack = tau * (1 + 1e-9)
            self.option_ok &= d.compute_s <= slack
            self.move_ok &= np.maximum(d.move_port_s, d.move_first_up_s) <= slack
            self.first_ok &= np.maximum(d.scatter_port_s, d.scatter_up_s) <= slack
            self.last_ok &= d.gather_port_s <= slack
            self.latency()
            self.option_ok, self.move_ok, self.first_ok, self.last_ok = keep
        return tau

    def energy(self, latency_multipliers: Iterable[float] = (0.0,)) -> float:
        """Lower bound on energy (see the module docstring), adding candidates on the way."""
        d, qoe = self.d, self.qoe
        rate = qoe.request_rate_rps or qoe.throughput_rps
        best = -math.inf
        for mu in latency_multipliers:
            cap = qoe.latency_s if qoe.latency_s is not None else 0.0
            if mu > 0 and qoe.latency_s is None:
                continue
            if rate is not None:
                period = 1.0 / rate
                values = self._run(
                    _mix(d.busy_energy_j + d.idle_w[:, None, None] * period, mu, d.compute_s),
                    _mix(d.move_radio_j, mu, d.move_s),
                    _mix(d.scatter_radio_j, mu, d.scatter_s),
                    _mix(d.gather_radio_j, mu, d.gather_s),
                )
                best = max(best, float(values.min()) - mu * cap)
                continue
            alphas = np.unique(d.usage_idle_w[d.usage_idle_w > 0])
            grid = 5 if mu == 0 else 3
            if alphas.size > grid:
                alphas = np.unique(np.quantile(alphas, np.linspace(0, 1, grid), method="lower"))
            bound_u = np.full(d.usage_count, -np.inf)
            zero = d.usage_idle_w <= 0
            for alpha in np.r_[0.0, alphas]:
                weight = alpha + mu
                values = self._run(
                    _mix(d.busy_energy_j, weight, d.compute_s),
                    _mix(d.move_radio_j, weight, d.move_s),
                    _mix(d.scatter_radio_j, weight, d.scatter_s),
                    _mix(d.gather_radio_j, weight, d.gather_s),
                )
                holds = (d.usage_idle_w >= alpha) | zero
                bound_u = np.where(holds, np.maximum(bound_u, values), bound_u)
            best = max(best, float(bound_u.min()) - mu * cap)
        return best

    def sweep(self, weights: Iterable[float]) -> None:
        """Trade-off candidates: min latency + w x energy for each weight."""
        for w in weights:
            self.latency(weight_energy=w)


def _mix(base: np.ndarray, weight: float, times: np.ndarray) -> np.ndarray:
    """``base + weight * times`` keeping ``inf`` (a forbidden option) even when weight is 0."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(times), base + weight * times, np.inf)


def refine(
    d: Dense,
    stages: Stages,
    qoe: QoE,
    contention: np.ndarray,
    objective: str,
    max_rounds: int = 20,
) -> Stages:
    """First-improvement local search: move one cut by 1 or 2 blocks, or merge two neighbouring
    stages onto either group, while the QoE holds and the objective improves."""
    current = list(stages)
    score = _score(d, current, qoe, contention, objective)
    for _ in range(max_rounds):
        improved = False
        for neighbour in _neighbours(current):
            if not all(math.isfinite(d.compute_s[g, a, b]) for a, b, g in neighbour):
                continue
            if any(not math.isfinite(d.move_s[g, g2, b]) for (_, b, g), (_, _, g2) in zip(neighbour, neighbour[1:])):
                continue
            s = _score(d, neighbour, qoe, contention, objective)
            if s < score - 1e-12 * abs(score):
                current, score, improved = neighbour, s, True
                break
        if not improved:
            break
    return current


def _score(d: Dense, stages: Stages, qoe: QoE, contention: np.ndarray, objective: str) -> float:
    m = measure_path(d, stages, qoe, contention)
    return m.value(objective) + (0.0 if meets(m, qoe) else 1e9)


def meets(m: PathMetrics, qoe: QoE, rel_tol: float = 1e-9) -> bool:
    if qoe.latency_s is not None and m.latency_s > qoe.latency_s * (1 + rel_tol):
        return False
    if qoe.throughput_rps is not None and m.throughput_rps < qoe.throughput_rps * (1 - rel_tol):
        return False
    return not (qoe.energy_j is not None and m.energy_j > qoe.energy_j * (1 + rel_tol))


def _neighbours(stages: Stages) -> Iterable[Stages]:
    for k in range(len(stages) - 1):
        (a, b, g), (_, c, g2) = stages[k], stages[k + 1]
        for step in (-2, -1, 1, 2):
            cut = b + step
            if a < cut < c:
                yield stages[:k] + [(a, cut, g), (cut, c, g2)] + stages[k + 2 :]
        for g_keep in (g, g2):
            yield stages[:k] + [(a, c, g_keep)] + stages[k + 2 :]
