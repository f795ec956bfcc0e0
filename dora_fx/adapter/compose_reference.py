"""The composition program (``compose_program``) stated in cvxpy as an exact MILP: the
reference the tests hold the fast HiGHS LP and its switch-offs against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .compose import Composer
from .compose_program import _costs, _excluded
from .figures import PlanFigures

__all__ = ["compose_cvxpy"]


def compose_cvxpy(
    composer: Composer,
    figures: Sequence[PlanFigures],
    offered_rps: float,
    objective: str | None = None,
) -> dict[str, float]:
    """The same program in cvxpy (reference formulation; slower): rates per plan."""
    import cvxpy as cp

    objective = objective or composer.qoe.objective
    excluded = _excluded(figures, composer.qoe.latency_s)
    eligible = [f for f in figures if f.name not in excluded]
    rates = {f.name: 0.0 for f in figures}
    if not eligible or offered_rps <= 0:
        return rates
    resources = sorted({r for f in eligible for r in f.busy_s})
    devices = [r for r in resources if r.startswith("device:")]
    x = cp.Variable(len(eligible), nonneg=True)
    y = cp.Variable(len(devices), boolean=True)
    s = cp.Variable(nonneg=True)
    cost = _costs(eligible, objective)
    idle = np.array([composer._idle(r) if objective == "energy" else 0.0 for r in devices])
    big = 1e3 * (max(abs(c) for c in cost) + max(composer.idle_power_w.values(), default=0.0) + 1)
    rho = composer.utilization_cap
    constraints = [cp.sum(x) + s == offered_rps]
    limits = composer.rate_limits(eligible)
    bounded = np.flatnonzero(np.isfinite(limits))
    if bounded.size:
        constraints.append(x[bounded] <= limits[bounded])
    for r in resources:
        row = np.array([f.busy_s.get(r, 0.0) for f in eligible])
        limit = rho * y[devices.index(r)] if r in devices else rho
        constraints.append(row @ x <= limit)
    problem = cp.Problem(cp.Minimize(cost @ x + idle @ y + big * s), constraints)
    problem.solve(solver=cp.HIGHS)
    for f, rate in zip(eligible, np.asarray(x.value).ravel(), strict=True):
        rates[f.name] = float(rate) if rate > 1e-9 else 0.0
    return rates
