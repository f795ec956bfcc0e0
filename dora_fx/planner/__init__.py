"""The QoE-aware, heterogeneity-aware partitioner: ``solve(problem) -> PlanSet``.

The formulation is ours (the Dora paper gives none); docs/partitioner.md has the math.
"""

from ..errors import InfeasibleQoEError
from .plan_set import PlanSet
from .solve import solve
from .space import PlanSpace, enumerate_plans, plan_space

__all__ = ["InfeasibleQoEError", "PlanSet", "PlanSpace", "enumerate_plans", "plan_space", "solve"]
