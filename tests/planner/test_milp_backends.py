"""The cvxpy statement of the partitioning MILP is the same program HiGHS solves directly."""

from __future__ import annotations

import cvxpy as cp
import pytest

from dora_fx.planner import plan_space
from dora_fx.planner.formulation import build_formulation
from dora_fx.planner.milp_backends import solve_highs, to_cvxpy
from dora_fx.planner.synthetic import random_problem
from dora_fx.planner.tables import build_tables


@pytest.mark.parametrize("seed", [3, 17, 41])
@pytest.mark.parametrize("objective", ["latency", "energy"])
@pytest.mark.parametrize("integral", [True, False])
def test_cvxpy_program_has_the_highs_optimum(seed: int, objective: str, integral: bool) -> None:
    problem = random_problem(seed, 5, 3)
    tables = build_tables(problem, plan_space(problem))
    form = build_formulation(tables, problem.qoe, objective)
    direct = solve_highs(form, integral=integral)
    program, x = to_cvxpy(form, integral=integral)
    program.solve(solver=cp.HIGHS)
    if direct.status == "infeasible":
        assert program.status == cp.INFEASIBLE
        return
    assert direct.status == "optimal" and program.status == cp.OPTIMAL
    assert program.value == pytest.approx(direct.objective, rel=1e-4, abs=1e-9)
    assert x.value is not None and x.value.shape == (form.n_cols,)


def test_solve_follows_a_default_threads_highs_run_in_the_same_process() -> None:
    """HiGHS keeps one task scheduler per process; a solve asking for another thread count
    than an earlier run's (the adapter's LP, a user's own model) used to come back 'unknown'."""
    import highspy
    import numpy as np

    earlier = highspy.Highs()
    earlier.setOptionValue("output_flag", False)
    earlier.addVars(2, np.zeros(2), np.ones(2))
    earlier.run()
    problem = random_problem(3, 5, 3)
    form = build_formulation(build_tables(problem, plan_space(problem)), problem.qoe, "latency")
    assert solve_highs(form).status == "optimal"


def test_highs_solves_print_nothing() -> None:
    """highspy 1.16 prints HiGHS's banner (once per process) when a ``highspy.Highs`` is built;
    the planner's MILP and the adapter's composition LP must not put it in the user's output."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import random
        from dora_fx import QoE, scenarios
        from dora_fx.adapter import Composer
        from dora_fx.ir.plan import Plan, Stage
        from dora_fx.planner import plan_space
        from dora_fx.planner.formulation import build_formulation
        from dora_fx.planner.milp_backends import solve_highs
        from dora_fx.planner.synthetic import random_blocks, random_problem
        from dora_fx.planner.tables import build_tables
        from dora_fx.analysis.problem import Problem

        problem = random_problem(3, 5, 3)
        form = build_formulation(build_tables(problem, plan_space(problem)), problem.qoe, "latency")
        assert solve_highs(form).status == "optimal"
        blocks = random_blocks(random.Random(0), 12, batch=4)
        qoe = QoE(latency_ms=1000.0, objective="energy", request_rate_rps=1.0)
        problem = Problem(tuple(blocks), scenarios.edge_cluster(4), qoe, 4, 1e5)
        plans = [Plan("solo", (Stage(0, 0, 12, ("jetson0",)),), batch=4)]
        composer = Composer.for_problem(plans, problem)
        composer.compose(composer.figures(problem), 3.0)
        print("done")
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "done", out.stdout
