"""The runtime adapter: compose a plan set under changing conditions and lose no request.

* ``traces``: scenario traces (bandwidth, device leave/join, load), text/JSON round trip;
* ``plans``: the adapter's plan set (the planner's, plus single-device plans and copies on
  identical devices);
* ``figures``: each plan's figures under the conditions now, and its headroom;
* ``compose_program``: the composition program, for HiGHS; ``compose_reference`` the same in
  cvxpy (``compose_cvxpy``);
* ``compose``: ``Composer``, the rates each plan serves (capacity, SLO, objective), and its
  ``Composition.describe()``;
* ``monitor``: moving averages, heartbeats, drift;
* ``core``: ``Adapter`` (decide, re-plan in the background, explain);
* ``dispatcher``: ``MultiPlanDispatcher`` (weighted round robin, exactly once by request id,
  re-send on device loss); ``executors``: the plans run by the distributed runtime;
* ``replay``: the trace replay on the simulator (static vs re-plan vs adapter); ``spans``:
  a span of it simulated, and a strategy's totals.
"""

from .compose import Composer, Composition
from .compose_reference import compose_cvxpy
from .core import Adapter
from .dispatcher import DispatchResult, MultiPlanDispatcher, PlanFailure, WeightedRoundRobin
from .executors import LauncherExecutor, SessionExecutor
from .figures import PlanFigures, plan_figures
from .monitor import Drift, Ewma, Monitor
from .plans import (
    adapter_plans,
    anticipated_conditions,
    plan_set,
    planner_plans,
    relabelings,
    single_device_plans,
)
from .replay import replay
from .spans import StrategyResult
from .traces import Conditions, Event, Trace, apply, builtin_traces

__all__ = [
    "Adapter",
    "Composer",
    "Composition",
    "Conditions",
    "DispatchResult",
    "Drift",
    "Event",
    "Ewma",
    "LauncherExecutor",
    "SessionExecutor",
    "Monitor",
    "MultiPlanDispatcher",
    "PlanFailure",
    "PlanFigures",
    "StrategyResult",
    "Trace",
    "WeightedRoundRobin",
    "adapter_plans",
    "planner_plans",
    "plan_set",
    "anticipated_conditions",
    "apply",
    "builtin_traces",
    "compose_cvxpy",
    "plan_figures",
    "relabelings",
    "replay",
    "single_device_plans",
]
