"""Solver back-ends of the partitioning MILP that ``formulation`` builds: solved by HiGHS
(``solve_highs``), written in cvxpy (``to_cvxpy``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cvxpy as cp
import highspy
import numpy as np

from ..errors import PlanError
from .formulation import Formulation

__all__ = ["MilpResult", "quiet_highs", "solve_highs", "to_cvxpy"]


@dataclass(frozen=True)
class MilpResult:
    """One HiGHS solve of a formulation: status, objective at ``x``, dual bound, seconds."""

    status: str  # "optimal", "feasible" (time limit with an incumbent), "infeasible", "unknown"
    objective: float
    bound: float  # a valid lower bound on the objective over the integer program
    x: np.ndarray | None
    seconds: float


def quiet_highs() -> highspy.Highs:
    """A HiGHS instance that prints nothing. ``highspy.Highs()`` (1.16) prints HiGHS's banner to
    stdout while it is built, before ``output_flag`` can be turned off; its base class
    (``highspy.highs._Highs``, the bare binding) does not, and has every method used here."""
    cls = getattr(highspy.highs, "_Highs", highspy.Highs)
    h = cls()
    h.setOptionValue("output_flag", False)
    return h


def solve_highs(
    form: Formulation,
    *,
    integral: bool = True,
    time_limit_s: float = 10.0,
    mip_rel_gap: float = 1e-4,
) -> MilpResult:
    """Solve ``form`` (or its LP relaxation) with HiGHS. ``bound`` is HiGHS's dual bound: the
    LP optimum, or the branch-and-bound bound when the MIP stops early."""
    start = time.perf_counter()
    h = quiet_highs()
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
    # No "threads" option: HiGHS keeps one task scheduler per process, and a run whose thread
    # count differs from the scheduler's fails (HiGHS >= 1.16), e.g. after the adapter's LP or a
    # user's own default-threads solve.
    lp = highspy.HighsLp()
    lp.num_col_ = form.n_cols
    lp.num_row_ = int(form.row_lower.size)
    lp.col_cost_ = form.cost
    lp.col_lower_ = form.col_lower
    lp.col_upper_ = form.col_upper
    lp.row_lower_ = form.row_lower
    lp.row_upper_ = form.row_upper
    matrix = form.matrix
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = matrix.indptr
    lp.a_matrix_.index_ = matrix.indices
    lp.a_matrix_.value_ = matrix.data
    lp.a_matrix_.num_col_ = form.n_cols
    lp.a_matrix_.num_row_ = lp.num_row_
    if integral and form.integer.any():
        lp.integrality_ = [
            highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
            for i in form.integer
        ]
    h.passModel(lp)
    if h.run() == highspy.HighsStatus.kError:
        raise PlanError(
            "HiGHS returned an error on the partitioning MILP "
            f"(model status: {h.modelStatusToString(h.getModelStatus())})"
        )
    status = h.getModelStatus()
    info = h.getInfo()
    seconds = time.perf_counter() - start
    ms = highspy.HighsModelStatus
    if status == ms.kInfeasible:
        return MilpResult("infeasible", math.inf, math.inf, None, seconds)
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.array(h.getSolution().col_value) if has_solution else None
    objective = info.objective_function_value if has_solution else math.inf
    if integral and form.integer.any():
        bound = info.mip_dual_bound
        label = "optimal" if status == ms.kOptimal else "feasible" if has_solution else "unknown"
    else:
        bound = objective if status == ms.kOptimal else -math.inf
        label = "optimal" if status == ms.kOptimal else "unknown"
    if not math.isfinite(bound):
        bound = -math.inf  # no bound known (infeasible returned above)
    return MilpResult(label, objective, float(bound), x, seconds)


def to_cvxpy(form: Formulation, *, integral: bool = True) -> tuple[cp.Problem, cp.Variable]:
    """The same program as a cvxpy Problem (``x`` is the column vector)."""
    integer = np.nonzero(form.integer)[0] if integral else np.empty(0, dtype=int)
    # cvxpy takes integer indices as one index array per dimension
    x = cp.Variable(form.n_cols, integer=[integer]) if integer.size else cp.Variable(form.n_cols)
    constraints = []
    lower, upper = form.row_lower, form.row_upper
    eq = lower == upper
    if eq.any():
        constraints.append(form.matrix[eq] @ x == lower[eq])
    up = ~eq & np.isfinite(upper)
    if up.any():
        constraints.append(form.matrix[up] @ x <= upper[up])
    lo = ~eq & np.isfinite(lower)
    if lo.any():
        constraints.append(form.matrix[lo] @ x >= lower[lo])
    finite_lo = np.isfinite(form.col_lower)
    finite_up = np.isfinite(form.col_upper)
    constraints.append(x[np.nonzero(finite_lo)[0]] >= form.col_lower[finite_lo])
    if finite_up.any():
        constraints.append(x[np.nonzero(finite_up)[0]] <= form.col_upper[finite_up])
    return cp.Problem(cp.Minimize(form.cost @ x), constraints), x
