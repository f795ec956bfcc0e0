"""What a plan costs, analytically: the planning problem (``problem``: blocks, cluster, QoE),
the work each stage does (``work``) and the closed-form figures the planner optimizes
(``evaluate``). The simulator (``dora_fx.sim``) checks them."""

from .evaluate import Metrics, evaluate
from .problem import Block, Problem

__all__ = ["Block", "Metrics", "Problem", "evaluate"]
